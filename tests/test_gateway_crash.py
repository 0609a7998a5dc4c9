"""A crash never locks a grant, tried as an operator would: a real gateway process is killed with
SIGKILL while long generations are in flight and a second one is started at once on the same
registry (SQLite and PostgreSQL). The killed calls' reservations must return to the grant within
the dead-instance timeout plus a few heartbeats, charged their worst case exactly once, and the
project must be able to call again. Before gateway instances and the periodic sweep, the
reservations stayed held until a restart at least 15 minutes on.

And two gateways sweeping the same dead instance at once settle each reservation exactly once."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from enclave.gateway import quota
from enclave.registry import access, audit, grants, keys
from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent, GatewayInstance, Reservation, UsageTotal

from tests.gateway_fixtures import long_model_dir  # noqa: F401  (fixture)
from tests.helpers import OPERATOR, approved_project, free_port, wait_until_serving

HEARTBEAT_S = 1
DEAD_AFTER_S = 4
SRC = Path(__file__).resolve().parents[1] / "src"


class GatewayProcess:
    def __init__(self, db_url: str, model_dir, home: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               "ENCLAVE_DB_URL": db_url, "ENCLAVE_HOME": str(home), "ENCLAVE_CACHE_DIR": str(home / "cache"),
               "ENCLAVE_CPU_KERNELS": "0", "HF_HUB_OFFLINE": "1",
               "ENCLAVE_GATEWAY_HEARTBEAT_S": str(HEARTBEAT_S), "ENCLAVE_GATEWAY_DEAD_AFTER_S": str(DEAD_AFTER_S),
               "ENCLAVE_GATEWAY_MAX_BATCH": "8"}
        env.pop("JUPYTERHUB_API_URL", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "enclave.cli", "serve", "gateway", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--model", str(model_dir), "--device", "cpu"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> None:
        wait_until_serving(f"{self.url}/healthz", self.proc, self.log, "the gateway", timeout=180)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _account(engine) -> UsageTotal:
    with session_scope(engine) as s:
        return s.get(UsageTotal, access.resolve(s, "sam", "crashy").project.id)


def _open_reservations(engine) -> list[Reservation]:
    with session_scope(engine) as s:
        return list(s.exec(select(Reservation).where(Reservation.state == "open")).all())


def test_sigkill_mid_generation_does_not_lock_the_grant(engine, long_model_dir, tmp_path):  # noqa: F811
    approved_project(engine, "crashy", "sam")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "crashy", tokens_total=8000, tokens_per_day=8000, max_tokens_per_request=1000,
                         requests_per_minute=1000)
        _, key = keys.issue(s, OPERATOR, "sam", "crashy")
    db_url = engine.url.render_as_string(hide_password=False)
    headers = {"Authorization": f"token {key}"}

    first = GatewayProcess(db_url, long_model_dir, tmp_path, "first")
    second = None
    try:
        first.wait()
        answers: list[object] = []

        def generate(i: int) -> None:
            try:
                answers.append(httpx.post(f"{first.url}/v1/generate", headers=headers, timeout=120,
                                          json={"prompt": f"Call number {i} of the", "max_new_tokens": 900, "seed": i}))
            except httpx.HTTPError as exc:  # the server dies under it
                answers.append(exc)

        calls = [threading.Thread(target=generate, args=(i,), daemon=True) for i in range(6)]
        for t in calls:
            t.start()
        deadline = time.time() + 60
        while len(_open_reservations(engine)) < 6:
            assert time.time() < deadline, "the generations were not admitted"
            time.sleep(0.05)
        time.sleep(0.3)  # running in the engine now

        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        killed_at = time.monotonic()
        held = _open_reservations(engine)
        assert held, "every generation finished before the kill: nothing to show"
        worst_case = sum(r.tokens_reserved for r in held)
        before = _account(engine)
        assert before.tokens_reserved == worst_case  # the grant is locked by the dead calls

        second = GatewayProcess(db_url, long_model_dir, tmp_path, "second")  # restarted at once
        second.wait()
        ready_after = time.monotonic() - killed_at
        limit = max(ready_after, DEAD_AFTER_S) + 3 * HEARTBEAT_S + 3
        while _account(engine).tokens_reserved:
            assert time.monotonic() - killed_at < limit, (
                f"reservations still held {limit:.0f} s after the kill: {_account(engine).tokens_reserved} tokens")
            time.sleep(0.2)

        after = _account(engine)
        assert after.tokens_reserved == 0
        assert after.tokens_used == before.tokens_used + worst_case  # the worst case, once
        with session_scope(engine) as s:
            for r in held:
                row = s.get(Reservation, r.id)
                assert (row.state, row.tokens_charged) == ("expired", r.tokens_reserved)
            swept = s.exec(select(AuditEvent).where(AuditEvent.action == "model.charge_abandoned")).all()
            assert sorted(e.subject for e in swept) == sorted(f"reservation:{r.id}" for r in held)
            assert audit.verify_database(s).ok
            instances = {i.id for i in s.exec(select(GatewayInstance)).all()}
        dead_instance = {r.instance_id for r in held}
        assert len(instances) == 2 and len(dead_instance) == 1 and dead_instance <= instances

        # The project can call again, through the new gateway, with what is left of its grant.
        answer = httpx.post(f"{second.url}/v1/generate", headers=headers, timeout=60,
                            json={"prompt": "Back again", "max_new_tokens": 5, "seed": 1})
        assert answer.status_code == 200, answer.text
        assert _account(engine).tokens_used > after.tokens_used
        for t in calls:
            t.join(30)
        # Calls in flight on the killed gateway failed with it (none answered anything else).
        assert all(not isinstance(a, httpx.Response) or a.status_code == 200 for a in answers)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_two_gateways_sweeping_one_dead_instance_charge_once(engine):
    for slug in ("alpha", "beta"):
        approved_project(engine, slug, "sam")
        with session_scope(engine) as s:
            grants.set_grant(s, OPERATOR, slug, tokens_total=10_000, tokens_per_day=10_000, requests_per_minute=1000)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=2)
    with session_scope(engine) as s:
        dead = quota.register_instance(s, host="crashed", pid=1, now=long_ago)
        alive = quota.register_instance(s, host="alive", pid=2)
    tickets = []
    for i in range(20):
        slug, instance = ("alpha", "beta")[i % 2], (dead if i < 16 else alive)
        with session_scope(engine) as s:
            tickets.append(quota.reserve(s, access.resolve(s, "sam", slug), "generate", 10 + i, instance_id=instance))
    doomed = tickets[:16]

    start = threading.Barrier(4)
    swept: list[int] = []
    failures: list[BaseException] = []

    def sweep() -> None:
        start.wait()
        try:
            with session_scope(engine) as s:
                swept.append(quota.sweep_dead(s, dt.timedelta(seconds=30)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert sum(swept) == len(doomed)

    with session_scope(engine) as s:
        for slug in ("alpha", "beta"):
            project = access.resolve(s, "sam", slug).project
            mine = [t for t in tickets if t.project_id == project.id]
            account = s.get(UsageTotal, project.id)
            assert account.tokens_used == sum(t.tokens_reserved for t in mine if t in doomed)
            assert account.tokens_reserved == sum(t.tokens_reserved for t in mine if t not in doomed)
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "model.charge_abandoned")).all()
        assert sorted(e.subject for e in events) == sorted(f"reservation:{t.id}" for t in doomed)
        assert all(s.get(Reservation, t.id).state == "open" for t in tickets[16:])  # the live one's calls run on
        assert audit.verify_database(s).ok

    # A late settle of a swept call changes nothing; the live instance's calls settle normally.
    record = quota.CallRecord(status="ok", prompt="p", outputs=["o"], prompt_tokens=1, completion_tokens=1, latency_ms=1)
    with session_scope(engine) as s:
        assert quota.settle(s, doomed[0], 2, record, actor="sam", project_slug="alpha") is False
        assert quota.settle(s, tickets[16], 2, record, actor="sam", project_slug="alpha") is True
        assert quota.sweep_dead(s, dt.timedelta(seconds=30)) == 0


def test_heartbeat_keeps_an_instance_alive(engine):
    approved_project(engine, "steady", "sam")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "steady", tokens_total=1000)
        instance = quota.register_instance(s, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
        quota.reserve(s, access.resolve(s, "sam", "steady"), "generate", 50, instance_id=instance)
    with session_scope(engine) as s:
        quota.heartbeat(s, instance)
        assert quota.sweep_dead(s, dt.timedelta(seconds=30)) == 0
        # Nor does the old start-up sweep take calls that belong to a live instance.
        assert quota.sweep_stale(s, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)) == 0
    assert _open_count(engine) == 1


def _open_count(engine) -> int:
    return len(_open_reservations(engine))
