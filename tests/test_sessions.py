"""Notebook sessions on the record, browser egress charged against the grant's daily view budget,
and work volumes per scholar and project held after a revocation: the registry's side, the hub's
admission and the warden's verdicts (the packets themselves: tests/test_egress_counters.py; the
whole thing in a container: tests/e2e)."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from enclave.errors import AccessDenied, BadInput, Conflict, Forbidden
from enclave.hub.admission import session_plan
from enclave.hub.warden import RunningServer, verdict
from enclave.registry import audit, datasets, grants, projects, sessions, volumes
from enclave.registry.clock import utcnow
from enclave.registry.db import session_scope
from enclave.registry.models import EgressDay, NotebookSession, WorkVolume
from tests.helpers import OPERATOR, approved_project
from tests.test_cli import InProcessCli

TEMPLATE = "enclave-work-{username}-{project}"


@pytest.fixture
def world(engine, tmp_path):
    approved_project(engine, "p1", "alice")
    approved_project(engine, "p2", "bob")
    data = tmp_path / "census.csv"
    data.write_text("name,dob\nAda,1815-12-10\n")
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, "p2", "alice")
        grants.set_grant(s, OPERATOR, "p1", view_bytes_per_day=3 * 1024**2)
        grants.set_grant(s, OPERATOR, "p2")
        datasets.register(s, OPERATOR, "census", str(data), ["name", "dob"], "restricted")
        datasets.allow(s, OPERATOR, "census", "p1")
    return engine


def _actions(s, since: int = 0) -> list[str]:
    return [e.action for e in audit.iter_events(s, since + 1)]


def test_the_demo_grant_has_a_view_budget_and_a_work_limit(world):
    with session_scope(world) as s:
        record = grants.grant_json(grants.get_grant(s, "p2"))
    assert record["view_bytes_per_day"] == 128 * 1024**2 and record["view_per_day"] == "128M"
    assert record["work_bytes"] == 2 * 1024**3
    with session_scope(world) as s, pytest.raises(BadInput, match="work_bytes must be at least"):
        grants.set_grant(s, OPERATOR, "p2", work_bytes=1024)


def test_a_session_is_recorded_with_what_it_was_started_with_and_closed_once(world):
    with session_scope(world) as s:
        plan = session_plan(s, "alice", "p1", TEMPLATE)
        assert plan.work_volume == "enclave-work-alice-p1" and plan.view_bytes_per_day == 3 * 1024**2
        record = sessions.open_session(s, username="alice", project="p1", mode="docker", container_id="c" * 64,
                                       container_ip="10.0.0.5", token_sha256="ab" * 32, image="sha256:img",
                                       work_volume=plan.work_volume, spec=plan.spec())
        sid = record.id
    with session_scope(world) as s:
        started = [e for e in audit.iter_events(s) if e.action == "session.started"][-1]
        details = json.loads(started.details)
        assert details["image"] == "sha256:img" and details["address"] == "10.0.0.5"
        assert details["mounts"][0]["dataset"] == "census" and details["limits"]["mem_bytes"] == plan.mem_bytes
        sessions.set_stop_reason(s, sid, "view_budget: spent")
        sessions.close_session(s, sid, "ignored: the reason set first wins")
        sessions.close_session(s, sid, "twice")  # idempotent
    with session_scope(world) as s:
        stops = [json.loads(e.details) for e in audit.iter_events(s) if e.action == "session.stopped"]
        assert len(stops) == 1 and stops[0]["reason"] == "view_budget: spent"
        assert sessions.bound_session(s, token_sha256="ab" * 32) is None  # a closed session binds nothing


def test_a_restarted_hub_supersedes_the_stale_record_of_the_same_server(world):
    with session_scope(world) as s:
        first = sessions.open_session(s, username="alice", project="p1", mode="docker").id
        second = sessions.open_session(s, username="alice", project="p1", mode="docker").id
    with session_scope(world) as s:
        assert s.get(NotebookSession, first).stopped_at is not None
        assert [r.id for r in sessions.live_sessions(s)] == [second]


def test_egress_readings_are_charged_once_even_across_a_counter_reset(world):
    now = utcnow()
    with session_scope(world) as s:
        record = sessions.open_session(s, username="alice", project="p1", mode="docker", container_ip="10.0.0.5")
        assert sessions.record_egress(s, record, 1000, now=now) == 1000
        assert sessions.record_egress(s, record, 1000, now=now) == 0  # the same reading again: nothing
        assert sessions.record_egress(s, record, 1500, now=now) == 500
        # The rule was re-created (a firewall reinstall): the counter starts again from zero.
        assert sessions.record_egress(s, record, 200, now=now) == 200
        assert record.egress_bytes == 1700
        assert sessions.egress_spent(s, record.project_id, now) == 1700
        assert sessions.egress_spent(s, record.project_id, now + dt.timedelta(days=1)) == 0  # a new day
        # An audit event each time the total grows by a MiB, not one per reading.
        sessions.record_egress(s, record, 200 + 3 * 1024**2, now=now)
        egress_events = [json.loads(e.details) for e in audit.iter_events(s) if e.action == "session.egress"]
        assert len(egress_events) == 1 and egress_events[0]["total_bytes"] == record.egress_bytes


def test_a_spent_view_budget_refuses_new_sessions_and_stops_running_ones(world):
    now = utcnow()
    server = RunningServer("alice", "", "p1", now)
    with session_scope(world) as s:
        record = sessions.open_session(s, username="alice", project="p1", mode="docker", container_ip="10.0.0.5")
        assert verdict(s, server, now) is None
        sessions.record_egress(s, record, 3 * 1024**2 + 1, now=now)
    with session_scope(world) as s:
        assert verdict(s, server, now).startswith("view_budget: project 'p1' has spent today's browser egress budget")
        with pytest.raises(AccessDenied, match="spent today's browser egress budget") as refused:
            session_plan(s, "alice", "p1", TEMPLATE)
        assert refused.value.reason == "view_budget"
        session_plan(s, "alice", "p2", TEMPLATE)  # another project's budget is its own


def test_work_volumes_are_per_project_and_held_after_a_revocation(world):
    with session_scope(world) as s:
        assert session_plan(s, "alice", "p1", TEMPLATE).work_volume == "enclave-work-alice-p1"
        assert session_plan(s, "alice", "p2", TEMPLATE).work_volume == "enclave-work-alice-p2"
        with pytest.raises(BadInput, match="must contain both"):
            session_plan(s, "alice", "p1", "enclave-work-{username}")  # one volume for all projects: refused
    with session_scope(world) as s:
        projects.transition(s, OPERATOR, "p1", "revoke", reason="breach")
    with session_scope(world) as s:
        held = s.get(WorkVolume, "enclave-work-alice-p1")
        assert held.state == "held" and held.state_reason == "project revoked: breach"
        assert s.get(WorkVolume, "enclave-work-alice-p2").state == "open"  # another project: untouched
        assert _actions(s).count("volume.held") == 1


def test_a_held_volume_stays_out_of_reach_until_an_operator_releases_it(world):
    with session_scope(world) as s:
        session_plan(s, "alice", "p1", TEMPLATE)
        datasets.disallow(s, OPERATOR, "census", "p1")
    with session_scope(world) as s:
        # The project runs on, but not with the volume that may hold copies of the withdrawn data.
        with pytest.raises(AccessDenied, match="work volume for project 'p1' is held") as refused:
            session_plan(s, "alice", "p1", TEMPLATE)
        assert refused.value.reason == "volume_held"
        with pytest.raises(Forbidden):
            volumes.release(s, "alice", "enclave-work-alice-p1", "I checked it myself")
        with pytest.raises(BadInput, match="needs a reason"):
            volumes.release(s, OPERATOR, "enclave-work-alice-p1", "")
        volumes.release(s, OPERATOR, "enclave-work-alice-p1", "no copies of census found")
    with session_scope(world) as s:
        session_plan(s, "alice", "p1", TEMPLATE)
        actions = _actions(s)
        assert actions.count("volume.held") == 1 and actions.count("volume.released") == 1
        with pytest.raises(Conflict, match="not held"):
            volumes.release(s, OPERATOR, "enclave-work-alice-p1", "again")


def test_withdrawing_a_dataset_holds_the_volumes_and_stops_the_sessions_that_mount_it(world):
    now = utcnow()
    with session_scope(world) as s:
        plan = session_plan(s, "alice", "p1", TEMPLATE)
        sessions.open_session(s, username="alice", project="p1", mode="docker", work_volume=plan.work_volume,
                              spec=plan.spec())
    with session_scope(world) as s:
        datasets.disallow(s, OPERATOR, "census", "p1")
    with session_scope(world) as s:
        why = verdict(s, RunningServer("alice", "", "p1", now), now)
        assert why.startswith("dataset_withdrawn: the project may no longer use census"), why
        assert s.get(WorkVolume, plan.work_volume).state == "held"


def test_destroyed_volumes_start_empty_and_a_full_one_stops_the_session(world):
    now = utcnow()
    with session_scope(world) as s:
        plan = session_plan(s, "alice", "p1", TEMPLATE)
        sessions.open_session(s, username="alice", project="p1", mode="docker", work_volume=plan.work_volume)
        server = RunningServer("alice", "", "p1", now)
        assert verdict(s, server, now, {plan.work_volume: 1024}) is None
        why = verdict(s, server, now, {plan.work_volume: 3 * 1024**3})
        assert why.startswith("work_volume_full: the work volume holds 3G, over the grant's 2G"), why
        volumes.destroy(s, OPERATOR, plan.work_volume, "the scholar asked")
    with session_scope(world) as s:
        assert session_plan(s, "alice", "p1", TEMPLATE).work_volume == plan.work_volume
        assert s.get(WorkVolume, plan.work_volume).state == "open"
        assert "volume.recreated" in _actions(s)


def test_requests_are_bound_to_their_session_by_token_or_by_address(world):
    with session_scope(world) as s:
        docker = sessions.open_session(s, username="alice", project="p1", mode="docker", container_ip="10.0.0.7",
                                       token_sha256="cd" * 32).id
        sessions.open_session(s, username="bob", project="p2", mode="unisolated", server_name="dev",
                              container_ip="127.0.0.1")
    with session_scope(world) as s:
        assert sessions.bound_session(s, token_sha256="cd" * 32).id == docker
        assert sessions.bound_session(s, address="10.0.0.7").id == docker
        assert sessions.bound_session(s, address="127.0.0.1") is None  # developer mode binds by token only
        assert sessions.bound_session(s, token_sha256="ef" * 32, address="10.0.0.8") is None


def test_session_and_volume_commands(world, db_url, tmp_path, monkeypatch):
    cli = InProcessCli({"ENCLAVE_HOME": str(tmp_path / "home"), "ENCLAVE_DB_URL": db_url,
                        "ENCLAVE_OPERATOR": OPERATOR}, monkeypatch)
    with session_scope(world) as s:
        plan = session_plan(s, "alice", "p1", TEMPLATE)
        record = sessions.open_session(s, username="alice", project="p1", mode="docker", container_ip="10.0.0.5",
                                       work_volume=plan.work_volume, spec=plan.spec(), image="sha256:img")
        sessions.record_egress(s, record, 1536 * 1024)
        sid = record.id
    listing = cli("session", "list").stdout
    assert sid[:12] in listing and "alice" in listing and "1.5M" in listing and "live" in listing
    shown = cli("session", "show", sid[:12]).stdout
    assert "egress: 1.5M (1572864 bytes sent towards browsers)" in shown and "project egress today: 1.5M of 3M" in shown
    assert "mount: dataset census" in shown
    assert cli.json("session", "show", sid)["egress_bytes"] == 1572864
    assert cli.json("session", "list", "--live", "--project", "p2") == []
    cli.fails("session", "show", "nope", match="no notebook session 'nope'")
    with session_scope(world) as s:
        sessions.close_session(s, sid, "test over")
        projects.transition(s, OPERATOR, "p1", "revoke", reason="breach")
    assert cli.json("volume", "list")[0]["state"] == "held"
    cli.fails("volume", "release", plan.work_volume, match="needs a reason")
    cli.fails("volume", "release", "no-such-volume", "--reason", "x", match="no work volume 'no-such-volume'")
    cli("volume", "destroy", plan.work_volume, "--reason", "project revoked for good")
    assert cli.json("volume", "list", "--project", "p1")[0]["state"] == "destroyed"


def test_a_session_acts_for_its_own_project_and_person_only(world):
    from enclave.web.session_binding import session_project, token_digest

    with session_scope(world) as s:
        sessions.open_session(s, username="alice", project="p2", mode="docker", container_ip="10.0.0.9",
                              token_sha256=token_digest("server-token"))
    with session_scope(world) as s:
        # From her p2 session: p2, whether she names it or not, with its token or from its address.
        assert session_project(s, "alice", None, token="server-token", address=None) == "p2"
        assert session_project(s, "alice", "p2", token="personal-token", address="10.0.0.9") == "p2"
        # Naming p1 (where she is a member too) is refused, with either token.
        for token, address in (("server-token", None), ("personal-token", "10.0.0.9")):
            with pytest.raises(AccessDenied, match="works for project 'p2', not 'p1': one project per session") as refused:
                session_project(s, "alice", "p1", token=token, address=address)
            assert refused.value.reason == "wrong_project"
        # Someone else's token used from her container acts for nobody there.
        with pytest.raises(AccessDenied, match="comes from alice's notebook session"):
            session_project(s, "bob", "p2", token="bob-token", address="10.0.0.9")
        # Outside any session (a laptop script), the header decides, and the registry after it.
        assert session_project(s, "alice", "p1", token="personal-token", address="127.0.0.1") == "p1"


@pytest.mark.docker
def test_the_warden_measures_a_work_volume_on_the_host(docker_client):
    import os
    import uuid
    from pathlib import Path

    from enclave.hub.warden import volume_size

    name = f"enclave-test-size-{uuid.uuid4().hex[:8]}"
    volume = docker_client.volumes.create(name)
    try:
        assert volume_size(docker_client, name) == 0
        folder = Path(volume.attrs["Mountpoint"]) / "deep" / "er"
        folder.mkdir(parents=True)
        (folder / "copy.csv").write_bytes(os.urandom(3 * 1024**2))
        assert 3 * 1024**2 <= volume_size(docker_client, name) < 3 * 1024**2 + 64 * 1024
        assert volume_size(docker_client, "enclave-test-no-such-volume") is None
    finally:
        volume.remove(force=True)


def test_the_warden_closes_the_records_of_servers_the_hub_no_longer_runs(world):
    """A hub that died with a server, or lost its container: the session's record must not stay
    open for ever (the hub's REST API is the warden's view of what runs; recorded, not served)."""
    import httpx

    from enclave.hub.warden import Warden

    old = utcnow() - dt.timedelta(minutes=5)
    with session_scope(world) as s:
        gone = sessions.open_session(s, username="alice", project="p1", mode="docker")
        gone.started_at = old
        fresh = sessions.open_session(s, username="bob", project="p2", mode="docker").id  # just started
        gone_id = gone.id

    def hub_api(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        return httpx.Response(200, json={"items": [], "_pagination": {"next": None}})

    warden = Warden(httpx.Client(base_url="http://hub.invalid/hub/api", transport=httpx.MockTransport(hub_api)), world)
    warden.close_vanished([])
    with session_scope(world) as s:
        closed = s.get(NotebookSession, gone_id)
        assert closed.stopped_at is not None and "no longer running" in closed.stop_reason
        assert s.get(NotebookSession, fresh).stopped_at is None  # the hub may not list it yet
