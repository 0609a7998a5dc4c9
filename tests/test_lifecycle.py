"""The project state machine, on its own and through the registry on both databases."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from enclave.registry import access, audit, lifecycle, people, projects, views
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from enclave.errors import UserError, Forbidden, AccessDenied, InvalidTransition
from enclave.registry.models import ProjectStatus as S

from tests.helpers import OPERATOR, add_scholar, approved_project

ALL_ACTIONS = sorted(lifecycle.TRANSITIONS)
EXPECTED = {
    (S.proposed, "approve"): S.approved,
    (S.proposed, "reject"): S.rejected,
    (S.approved, "suspend"): S.suspended,
    (S.suspended, "reinstate"): S.approved,
    (S.approved, "revoke"): S.revoked,
    (S.suspended, "revoke"): S.revoked,
    (S.approved, "close"): S.closed,
    (S.suspended, "close"): S.closed,
    (S.approved, "expire"): S.expired,
    (S.suspended, "expire"): S.expired,
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_transition_table_is_exactly_the_designed_one(state, action):
    if (state, action) in EXPECTED:
        assert lifecycle.check_transition("p", state, action).target is EXPECTED[(state, action)]
    else:
        with pytest.raises(InvalidTransition, match=f"cannot {action} project 'p': it is {state.value}"):
            lifecycle.check_transition("p", state, action)


def test_terminal_states_have_no_way_out():
    for state in lifecycle.TERMINAL:
        assert not any(state in t.sources for t in lifecycle.TRANSITIONS.values())


def test_effective_status_expires_by_time():
    now = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    assert lifecycle.effective_status(S.approved, now, now) is S.expired
    assert lifecycle.effective_status(S.suspended, now - dt.timedelta(seconds=1), now) is S.expired
    assert lifecycle.effective_status(S.approved, now + dt.timedelta(seconds=1), now) is S.approved
    assert lifecycle.effective_status(S.revoked, now - dt.timedelta(days=1), now) is S.revoked


def _until(days: int) -> dt.datetime:
    return end_of_day((utcnow() + dt.timedelta(days=days)).date())


def test_full_lifecycle_is_recorded(engine):
    add_scholar(engine, "alice")
    with session_scope(engine) as s:
        projects.create_project(s, OPERATOR, "study", "A study", "alice", "Why not.")
    for action, kwargs, expected in [
        ("approve", {"until": _until(30)}, "approved"),
        ("suspend", {"reason": "audit pending"}, "suspended"),
        ("reinstate", {}, "approved"),
        ("suspend", {}, "suspended"),
        ("revoke", {"reason": "breach of terms"}, "revoked"),
    ]:
        with session_scope(engine) as s:
            assert projects.transition(s, OPERATOR, "study", action, **kwargs).status == expected
    with session_scope(engine) as s:
        record = views.project_json(s, projects.get_project(s, "study"))
        events = [audit.event_record(e) for e in audit.iter_events(s)]
    assert record["status"] == "revoked" and record["status_reason"] == "breach of terms"
    assert record["approved_by"] == OPERATOR and record["members"] == ["alice"]
    moves = [(e["action"], json.loads(e["details"]).get("to")) for e in events if e["action"].startswith("project.")]
    assert moves == [("project.create", None), ("project.approve", "approved"), ("project.suspend", "suspended"),
                     ("project.reinstate", "approved"), ("project.suspend", "suspended"), ("project.revoke", "revoked")]
    with session_scope(engine) as s, pytest.raises(InvalidTransition, match="revoked is final"):
        projects.transition(s, OPERATOR, "study", "reinstate")


def test_rejection_needs_a_reason_and_is_final(engine):
    add_scholar(engine, "bob")
    with session_scope(engine) as s:
        projects.create_project(s, OPERATOR, "p1", "P1", "bob", "Purpose.")
    with session_scope(engine) as s, pytest.raises(UserError, match="needs a reason"):
        projects.transition(s, OPERATOR, "p1", "reject")
    with session_scope(engine) as s:
        projects.transition(s, OPERATOR, "p1", "reject", reason="out of scope")
    with session_scope(engine) as s, pytest.raises(InvalidTransition):
        projects.transition(s, OPERATOR, "p1", "approve", until=_until(3))


def test_only_operators_move_projects(engine):
    add_scholar(engine, "carol")
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "rita", "Rita", "rita@example.org", roles=["reviewer"])
        projects.create_project(s, OPERATOR, "p2", "P2", "carol", "Purpose.")
    for actor in ("carol", "rita", "nobody", None):
        with session_scope(engine) as s, pytest.raises(Forbidden):
            projects.transition(s, actor, "p2", "approve", until=_until(3))
    # Nobody, operators included, can claim the system's own expiry move.
    with session_scope(engine) as s, pytest.raises(UserError, match="expire by time"):
        projects.transition(s, OPERATOR, "p2", "expire")


def test_approval_needs_a_future_end_date(engine):
    add_scholar(engine, "dan")
    with session_scope(engine) as s:
        projects.create_project(s, OPERATOR, "p3", "P3", "dan", "Purpose.")
    with session_scope(engine) as s, pytest.raises(UserError, match="not in the future"):
        projects.transition(s, OPERATOR, "p3", "approve", until=end_of_day(utcnow().date() - dt.timedelta(days=2)))
    with session_scope(engine) as s, pytest.raises(UserError, match="needs an end date"):
        projects.transition(s, OPERATOR, "p3", "approve")
    with session_scope(engine) as s:
        assert projects.get_project(s, "p3").status == "proposed"


def test_expiry_is_enforced_by_time_without_any_command(engine):
    approved_project(engine, "short", "erin", days=2)
    with session_scope(engine) as s:
        from enclave.registry import grants

        grants.set_grant(s, OPERATOR, "short")
    with session_scope(engine) as s:
        assert access.resolve(s, "erin").project.slug == "short"
        later = projects.get_project(s, "short").expires_at + dt.timedelta(seconds=1)
        with pytest.raises(AccessDenied) as refused:
            access.resolve(s, "erin", "short", now=later)
        assert refused.value.reason == "expired"
        assert views.project_json(s, projects.get_project(s, "short"), now=later)["status"] == "expired"
    # Any later move records the expiry first (as the system), then refuses; a sweep that runs
    # afterwards finds nothing left to do.
    with session_scope(engine) as s, pytest.raises(InvalidTransition, match="expired is final"):
        projects.transition(s, OPERATOR, "short", "suspend", now=later)
    with session_scope(engine) as s:
        assert projects.get_project(s, "short").status == "expired"
        last = audit.head(s)
        assert (last.actor, last.action) == (people.SYSTEM_ACTOR, "project.expire")
        assert projects.expire_due(s, now=later) == []


def test_sweep_records_expiry_of_every_due_project(engine):
    approved_project(engine, "a1", "gus", days=1)
    approved_project(engine, "a2", "hal", days=1)
    approved_project(engine, "a3", "ivy", days=10)
    with session_scope(engine) as s:
        projects.transition(s, OPERATOR, "a2", "suspend")
        later = projects.get_project(s, "a1").expires_at
    with session_scope(engine) as s:
        assert sorted(projects.expire_due(s, now=later)) == ["a1", "a2"]
    with session_scope(engine) as s:
        assert [projects.get_project(s, p).status for p in ("a1", "a2", "a3")] == ["expired", "expired", "approved"]
        assert audit.verify_database(s).ok


def test_extend_moves_the_end_date_of_a_live_project(engine):
    approved_project(engine, "ext", "fay", days=2)
    with session_scope(engine) as s:
        projects.extend(s, OPERATOR, "ext", _until(60))
    with session_scope(engine) as s:
        assert projects.get_project(s, "ext").expires_at == _until(60)
        projects.transition(s, OPERATOR, "ext", "close")
    with session_scope(engine) as s, pytest.raises(UserError, match="closed"):
        projects.extend(s, OPERATOR, "ext", _until(90))
