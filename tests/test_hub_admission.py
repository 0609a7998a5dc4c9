"""The hub's front door, from the attacker's side, with our real authenticator, spawner and
warden inside a real JupyterHub (developer mode: the notebooks are local processes, so this runs
without Docker; the container itself is tested in tests/e2e)."""
from __future__ import annotations

import json

import pytest

from enclave.registry import audit, grants, people, projects
from enclave.registry.credentials import check_password, hash_password, set_password, verify_password
from enclave.registry.db import session_scope
from enclave.errors import UserError, Forbidden
from tests.helpers import OPERATOR, approved_project
from tests.hub_stack import Browser, running_stack, spawn

pytestmark = pytest.mark.slow

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-12", "rita": "rita-password-1"}


def test_password_hashing():
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("x", "garbage")


def test_only_operators_set_passwords(engine):
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "sam", "Sam", "sam@example.org", roles=["scholar"])
    with session_scope(engine) as s, pytest.raises(Forbidden):
        set_password(s, "sam", "sam", "a-long-enough-password")
    with session_scope(engine) as s, pytest.raises(UserError, match="too short"):
        set_password(s, OPERATOR, "sam", "short")
    with session_scope(engine) as s:
        generated = set_password(s, OPERATOR, "sam")
    with session_scope(engine) as s:
        assert check_password(s, "sam", generated) and not check_password(s, "sam", generated + "x")
        assert not check_password(s, "nobody", generated)
        last = audit.tail(s, 1)[0]
        assert last.action == "person.password_set" and generated not in str(last.details)


@pytest.fixture
def registry_with_people(engine):
    approved_project(engine, "p1", "alice")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "p1", session_hours=8)
        people.add_person(s, OPERATOR, "bob", "Bob", "bob@example.org", roles=["scholar"])  # in no project
        people.add_person(s, OPERATOR, "rita", "Rita", "rita@example.org", roles=["reviewer"])
        for name, password in PASSWORDS.items():
            set_password(s, OPERATOR, name, password)
    return engine


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_login_spawn_and_revocation(tmp_path, db_url, registry_with_people):
    engine = registry_with_people
    with running_stack(tmp_path, db_url, mode="unisolated", warden_interval=2) as stack:
        # Developer mode says so on every hub page.
        b = Browser(stack)
        assert "DEVELOPER MODE" in b.client.get("/hub/login").text
        # Wrong password, unknown person: no session.
        assert b.login("alice", "wrong-password!").status_code != 302 and not b.logged_in()
        assert b.login("mallory", "whatever-password").status_code != 302 and not b.logged_in()
        # A reviewer may log in (for the review UI) but is not a scholar: cannot spawn.
        r = Browser(stack)
        assert r.login("rita", PASSWORDS["rita"]).status_code == 302 and r.logged_in()
        assert spawn(stack, "rita", timeout=60).get("failed")
        # Bob is a scholar in no project: logs in, cannot spawn, and is told why.
        bob = Browser(stack)
        assert bob.login("bob", PASSWORDS["bob"]).status_code == 302
        event = spawn(stack, "bob", timeout=60)
        assert event.get("failed") and "not a member of any project" in event.get("message", "")
        # Alice is approved: logs in and spawns.
        a = Browser(stack)
        assert a.login("alice", PASSWORDS["alice"]).status_code == 302 and a.logged_in()
        assert "DEVELOPER MODE" in a.client.get("/hub/home").text
        # She chooses her project and nothing else (not the image, not the limits).
        event = spawn(stack, "alice", timeout=60, options={"project": "p1", "image": "attacker/image"})
        assert event.get("failed") and "Only the project can be chosen" in event.get("message", ""), event
        event = spawn(stack, "alice", timeout=120, options={"project": "p1"})
        assert event.get("ready"), event
        server = stack.user_model("alice")["servers"][""]
        assert server["user_options"]["project"] == "p1"
        # Revocation: the warden stops her server within a minute, and says why in the audit log.
        with session_scope(engine) as s:
            projects.transition(s, OPERATOR, "p1", "revoke", reason="breach")
        took = stack.wait_stopped("alice", timeout=60)
        assert took < 60
        with session_scope(engine) as s:
            stops = [e for e in audit.tail(s, 10) if e.action == "session.stopped"]
            assert stops and stops[-1].subject == "person:alice" and "revoked" in json.loads(stops[-1].details)["reason"]
        # And she cannot start again.
        assert spawn(stack, "alice", timeout=60).get("failed")


def test_login_decisions(registry_with_people):
    from enclave.hub.admission import login_decision

    with session_scope(registry_with_people) as s:
        assert login_decision(s, "alice").allowed and not login_decision(s, "alice").admin
        assert login_decision(s, OPERATOR).admin
        refused = login_decision(s, "rita", frozenset({"scholar"}))
        assert not refused.allowed and "none of the roles" in refused.reason
        assert not login_decision(s, "mallory").allowed


def test_warden_verdicts(registry_with_people):
    import datetime as dt

    from enclave.hub.warden import RunningServer, verdict
    from enclave.registry.clock import utcnow

    now = utcnow()
    fresh = RunningServer("alice", "", "p1", now - dt.timedelta(hours=1))
    stale = RunningServer("alice", "", "p1", now - dt.timedelta(hours=8, seconds=1))
    with session_scope(registry_with_people) as s:
        assert verdict(s, fresh, now) is None
        assert verdict(s, stale, now).startswith("session_lifetime")  # the grant allows 8 h
        assert verdict(s, RunningServer("bob", "", None, now), now).startswith("no_project")
        projects.transition(s, OPERATOR, "p1", "suspend", reason="report overdue")
    with session_scope(registry_with_people) as s:
        assert verdict(s, fresh, now).startswith("suspended")
        assert verdict(s, fresh, now + dt.timedelta(days=400)).startswith("expired")
