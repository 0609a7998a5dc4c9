"""Access by competitive application (issue 13): calls, applications, panel review with conflicts
of interest, ranked allocation of a token pool, tranches, supplements, appeals and close-out, on
SQLite and PostgreSQL; then the same path through the `enclave` command."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import func, select

from enclave.errors import BadInput, Conflict, Forbidden, InvalidTransition, NotFound
from enclave.hub.admission import LOGIN_ROLES
from enclave.registry import applications, audit, awards, calls, grants, panel, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from enclave.registry.models import (
    AccessApplication, AccessApplicationVersion, AccessAward, AuditEvent, Grant, PanelScore, Person, Project, Role, Tier,
)

from tests.helpers import OPERATOR

CRITERIA = ("significance", "least_access", "feasibility", "risk")
TODAY = dt.date.today()
TRAINED = (TODAY - dt.timedelta(days=100)).isoformat()
EXPIRED = (TODAY - dt.timedelta(days=2000)).isoformat()
PEOPLE = [  # username, affiliation, roles
    ("ann", "Uni A", ["applicant"]), ("ben", "Uni B", ["applicant"]), ("cat", "Uni C", ["applicant"]),
    ("dan", "Uni A", ["applicant"]),
    ("p1", "Inst X", ["panel"]), ("p2", "Inst Y", ["panel"]), ("p3", "Inst Z", ["panel"]),
    ("p4", "  uni a ", ["panel"]),  # same institution as ann and dan, written differently
]


def _people(engine) -> None:
    with session_scope(engine) as s:
        for username, affiliation, roles in PEOPLE:
            people.add_person(s, OPERATOR, username, username.title(), f"{username}@example.org", affiliation, roles)


def _open(engine, slug="c1", pool=100_000, tiers=("sample", "score", "internals"), max_award=None) -> str:
    with session_scope(engine) as s:
        return calls.open_call(s, OPERATOR, slug, f"Call {slug}", end_of_day(TODAY + dt.timedelta(days=10)), pool,
                               list(tiers), max_award).terms_sha256


FIELDS = dict(title="Memorisation in GPT-2", lay_summary="Does the model repeat what it read?",
              research_question="How often does GPT-2 reproduce training text?",
              least_access="Sampling answers it; we need no internals.", token_justification="100 prompts x 500.",
              datasets=["census"], planned_outputs="Aggregate rates, small-cell checked.",
              risk_assessment="Low: no personal data leaves.", ethics_reference="IRB-2026-17")


def _draft(engine, who, call="c1", tier="sample", requests=100, tpr=500, team=None) -> int:
    with session_scope(engine) as s:
        return applications.create(s, who, call, tier, requests=requests, tokens_per_request=tpr,
                                   team=team or [f"{who}:{TRAINED}"], **FIELDS).id


def _apply(engine, who, call="c1", **kw) -> int:
    app_id = _draft(engine, who, call, **kw)
    with session_scope(engine) as s:
        applications.submit(s, who, app_id, calls.get_call(s, call).terms_sha256)
    return app_id


def _to_review(engine, app_id, members=("p1", "p2")) -> None:
    with session_scope(engine) as s:
        applications.screen(s, OPERATOR, app_id)
        panel.assign(s, OPERATOR, app_id, list(members))
        for m in members:
            panel.declare(s, m, app_id)
        panel.start_review(s, OPERATOR, app_id)


def _score(engine, app_id, member, value, comment="") -> None:
    with session_scope(engine) as s:
        panel.score(s, member, app_id, {c: value for c in CRITERIA}, comment, "private note")


def _snapshot(engine) -> tuple:
    """What a refused operation must leave as it was: the audit head and every access table's rows."""
    with session_scope(engine) as s:
        head = s.exec(select(func.max(AuditEvent.seq))).one()
        counts = tuple(s.exec(select(func.count()).select_from(m)).one()
                       for m in (AccessApplication, AccessApplicationVersion, PanelScore, AccessAward, Project))
        states = tuple((a.id, a.state, a.content, a.outcome) for a in s.exec(select(AccessApplication).order_by(AccessApplication.id)))
        tokens = tuple((g.project_id, g.tokens_total) for g in s.exec(select(Grant).order_by(Grant.project_id)))
    return head, counts, states, tokens


def _refused(engine, error, match, fn, *args, **kwargs) -> None:
    before = _snapshot(engine)
    with pytest.raises(error, match=match):
        with session_scope(engine) as s:
            fn(s, *args, **kwargs)
    assert _snapshot(engine) == before


@pytest.fixture
def reg(engine):
    _people(engine)
    _open(engine)
    return engine


def test_the_whole_path_from_call_to_close_out(reg):
    ann = _apply(reg, "ann", team=[f"ann:{TRAINED}", f"dan:{TRAINED}"])
    ben = _apply(reg, "ben", tier="score", requests=120)       # 60_000
    cat = _apply(reg, "cat", requests=60)                       # 30_000
    for app_id in (ann, ben, cat):
        _to_review(reg, app_id, ("p1", "p2") if app_id != ann else ("p1", "p2", "p3"))
    for app_id, value in ((ann, 2), (ben, 3), (cat, 4)):
        _score(reg, app_id, "p1", value, comment="clear question")
        _score(reg, app_id, "p2", value)
    _score(reg, ann, "p3", 3)  # ann: members' means 2, 2, 3 -> 2.333333

    with session_scope(reg) as s:
        with pytest.raises(Conflict, match="still taking applications"):
            awards.allocate(reg, OPERATOR, "c1")
        calls.close_call(s, OPERATOR, "c1")
    with session_scope(reg) as s:
        ranked = awards.plan(s, "c1")
    assert [(r.application, r.mean, r.requested, r.recommended, r.outcome) for r in ranked] == [
        (ann, 2.333333, 50_000, 50_000, "approved"),
        (ben, 3.0, 60_000, 50_000, "approved"),          # the cut: reduced to what is left
        (cat, 4.0, 30_000, 0, "deferred"),
    ]
    assert "reduced" in ranked[1].note

    dry = awards.allocate(reg, OPERATOR, "c1", dry_run=True)
    assert dry == ranked
    assert awards.allocate(reg, OPERATOR, "c1") == dry

    with session_scope(reg) as s:
        assert awards.plan(s, "c1") == []
        assert awards.tokens_left(s, calls.get_call(s, "c1")) == 0
        project = projects.get_project(s, f"c1-{ann}")
        assert project.status == "approved" and project.pi_id == people.get_person(s, "ann").id
        assert [p.username for p in projects.members(s, project)] == ["ann", "dan"]
        assert people.get_person(s, "dan").has_role(Role.scholar)    # the award made the team scholars
        grant = grants.get_grant(s, f"c1-{ann}")
        assert (grant.tokens_total, grant.tier) == (25_000, "sample")
        assert grants.get_grant(s, f"c1-{ben}").tier == "score"
        assert (project.expires_at - utcnow()).days in (364, 365)
        decided = {a.id: (a.state, a.outcome) for a in applications.list_applications(s, "c1")}
        assert decided == {ann: ("decided", "approved"), ben: ("decided", "approved"), cat: ("decided", "deferred")}
        # The applicant sees the summary and the comments addressed to them, not who wrote what.
        seen = panel.panel_json(s, applications.get_application(s, ann), private=False)
        assert seen["mean"] == 2.333333 and seen["comments"] == ["clear question"] and "members" not in seen
        actions = [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.subject == f"application:{ann}")
                                            .order_by(AuditEvent.seq))]
        assert actions[:4] == ["application.create", "application.submit", "application.screen", "panel.assign"]
        assert actions[-1] == "application.decide"

    slug = f"c1-{ann}"
    _refused(reg, Conflict, "no progress report", awards.release_tranche, OPERATOR, slug)
    _refused(reg, Forbidden, "not a member", awards.file_report, "ben", slug, "progress", "Halfway.")
    with session_scope(reg) as s:
        awards.file_report(s, "dan", slug, "progress", "Halfway there.")
        awards.release_tranche(s, OPERATOR, slug)
    _refused(reg, Conflict, "was released", awards.release_tranche, OPERATOR, slug)
    with session_scope(reg) as s:
        assert grants.get_grant(s, slug).tokens_total == 50_000
    # The pool is spent: a supplement would overspend it.
    _refused(reg, Conflict, "would overspend", awards.supplement, OPERATOR, slug, 1000, "more prompts")
    with session_scope(reg) as s:
        awards.extend(s, OPERATOR, slug, end_of_day(TODAY + dt.timedelta(days=500)))
        assert grants.get_grant(s, slug).tokens_total == 50_000     # an extension moves dates only
    _refused(reg, Conflict, "no final report", awards.close, OPERATOR, slug)
    with session_scope(reg) as s:
        awards.file_report(s, "ann", slug, "final", "Done: rates published.")
        awards.close(s, OPERATOR, slug)
        assert projects.get_project(s, slug).status == "closed"
        assert audit.verify_database(s).ok


def test_allocation_is_deterministic_ties_go_to_the_earlier_submission(reg):
    first = _apply(reg, "ben", requests=80)       # 40_000, submitted first
    second = _apply(reg, "ann", requests=80)      # same score, submitted later
    third = _apply(reg, "cat", requests=80)
    for app_id in (third, second, first):         # reviewed and scored in another order
        _to_review(reg, app_id)
        _score(reg, app_id, "p1", 3)
        _score(reg, app_id, "p2", 3)
    with session_scope(reg) as s:
        calls.close_call(s, OPERATOR, "c1")
        plans = [awards.plan(s, "c1") for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]
    assert [(r.application, r.recommended) for r in plans[0]] == [(first, 40_000), (second, 40_000), (third, 20_000)]
    assert awards.allocate(reg, OPERATOR, "c1", dry_run=True) == plans[0] == awards.allocate(reg, OPERATOR, "c1")
    # Run again: everything is decided, nothing more happens.
    assert awards.allocate(reg, OPERATOR, "c1") == []


def test_awards_respect_tier_cap_max_award_and_the_funding_threshold(engine):
    _people(engine)
    _open(engine, "big", pool=10_000_000, tiers=("sample", "score"), max_award=300_000)
    a = _apply(engine, "ann", call="big", requests=1000, tpr=1000)        # asks 1_000_000
    b = _apply(engine, "ben", call="big", requests=100, tpr=1000)         # asks 100_000, scored poorly
    for app_id, value in ((a, 1), (b, 7)):
        _to_review(engine, app_id)
        _score(engine, app_id, "p1", value)
        _score(engine, app_id, "p2", value)
    with session_scope(engine) as s:
        calls.close_call(s, OPERATOR, "big")
    rows = awards.allocate(engine, OPERATOR, "big")
    assert [(r.recommended, r.outcome) for r in rows] == [(300_000, "approved"), (0, "rejected")]
    assert "funding threshold" in rows[1].note


def test_conditions_make_the_award_approved_subject_to_them(reg):
    app_id = _apply(reg, "ann")
    _to_review(reg, app_id)
    _refused(reg, Forbidden, "operator", awards.set_conditions, "ann", app_id, "none at all")
    with session_scope(reg) as s:
        awards.set_conditions(s, OPERATOR, app_id, "outputs reviewed by two reviewers")
        calls.close_call(s, OPERATOR, "c1")
    _score(reg, app_id, "p1", 2)
    _score(reg, app_id, "p2", 2)
    (row,) = awards.allocate(reg, OPERATOR, "c1")
    assert (row.outcome, row.recommended) == ("approved_subject_to", 50_000)
    with session_scope(reg) as s:
        assert applications.get_application(s, app_id).outcome == "approved_subject_to"


def test_two_allocations_at_once_spend_the_pool_once(reg):
    import threading

    ids = [_apply(reg, who, requests=120) for who in ("ann", "ben", "cat")]     # 60_000 each, pool 100_000
    for app_id in ids:
        _to_review(reg, app_id)
        _score(reg, app_id, "p1", 2)
        _score(reg, app_id, "p2", 2)
    with session_scope(reg) as s:
        calls.close_call(s, OPERATOR, "c1")
    outcomes: list = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        try:
            outcomes.append(awards.allocate(reg, OPERATOR, "c1"))
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 2
    with session_scope(reg) as s:
        awarded = s.exec(select(AccessAward)).all()
        assert sum(a.tokens_awarded for a in awarded) == 100_000
        assert sorted(a.tokens_awarded for a in awarded) == [40_000, 60_000]
        assert [a.state for a in applications.list_applications(s, "c1")] == ["decided"] * 3


def test_a_submitted_application_is_frozen(reg):
    app_id = _apply(reg, "ann")
    _refused(reg, Conflict, "frozen", applications.edit, "ann", app_id, title="Something else")
    _refused(reg, InvalidTransition, "cannot submit", applications.submit, "ann", app_id, "0" * 64)
    with session_scope(reg) as s:
        (version,) = applications.versions(s, applications.get_application(s, app_id))
        assert version.content_sha256 == audit.sha256_text(version.content)
    # Not even the database lets a submitted version change.
    with pytest.raises(DBAPIError, match="append-only"):
        with reg.begin() as conn:
            conn.execute(text("UPDATE access_application_version SET content = '{}'"))


def test_a_deferred_application_is_revised_as_a_new_version(reg):
    app_id = _apply(reg, "ann")
    with session_scope(reg) as s:
        applications.screen(s, OPERATOR, app_id)
        awards.decide_by_operator(s, OPERATOR, app_id, "deferred", "say more about risk")
        applications.revise(s, "ann", app_id)
        applications.edit(s, "ann", app_id, risk_assessment="Much more on risk.")
        applications.submit(s, "ann", app_id, calls.get_call(s, "c1").terms_sha256)
        record = applications.get_application(s, app_id)
        assert [v.version for v in applications.versions(s, record)] == [1, 2]
        assert "Much more" not in applications.versions(s, record)[0].content


@pytest.mark.parametrize("team, match", [
    ([f"ann:{EXPIRED}"], "expired"),
    ([f"ann:{TRAINED}", f"dan:{EXPIRED}"], "'dan'.*expired"),
    ([f"ann:{(TODAY + dt.timedelta(days=3)).isoformat()}"], "in the future"),
    ([f"ann:{TRAINED}", f"ghost:{TRAINED}"], "not registered"),
    ([f"ann:{TRAINED}", f"{OPERATOR}:{TRAINED}"], "neither the applicant nor the scholar role"),
    ([f"dan:{TRAINED}"], "must be in the team"),
])
def test_submission_needs_a_trained_team(reg, team, match):
    app_id = _draft(reg, "ann", team=team)
    _refused(reg, BadInput, match, applications.submit, "ann", app_id, _terms(reg))


def _terms(engine) -> str:
    with session_scope(engine) as s:
        return calls.get_call(s, "c1").terms_sha256


def test_submission_bad_input(reg):
    app_id = _draft(reg, "ann")
    _refused(reg, BadInput, "accept the call's terms", applications.submit, "ann", app_id, "f" * 64)
    _refused(reg, Forbidden, "not the applicant", applications.submit, "ben", app_id, _terms(reg))
    _refused(reg, Forbidden, "not the applicant", applications.edit, "ben", app_id, title="Mine now")
    _refused(reg, Forbidden, "does not hold the applicant role", applications.create, "p1", "c1", "sample")
    _refused(reg, BadInput, "offers the tiers", applications.create, "ann", "c1", "finetune")
    _refused(reg, BadInput, "unknown tier", applications.create, "ann", "c1", "everything")
    _refused(reg, BadInput, "requests must be a whole number", applications.edit, "ann", app_id, requests=-4)
    _refused(reg, BadInput, "USER:YYYY-MM-DD", applications.edit, "ann", app_id, team=["ann"])
    with session_scope(reg) as s:
        empty = applications.create(s, "ann", "c1", "sample").id
    _refused(reg, BadInput, "incomplete: fill in title", applications.submit, "ann", empty, _terms(reg))
    with session_scope(reg) as s:
        calls.close_call(s, OPERATOR, "c1")
    _refused(reg, Conflict, "not taking applications", applications.submit, "ann", app_id, _terms(reg))
    _refused(reg, Conflict, "not taking applications", applications.create, "ann", "c1", "sample")


def test_call_bad_input(reg, tmp_path):
    later = end_of_day(TODAY + dt.timedelta(days=5))
    _refused(reg, Conflict, "already exists", calls.open_call, OPERATOR, "c1", "Again", later, 10)
    _refused(reg, BadInput, "token pool", calls.open_call, OPERATOR, "c2", "T", later, 0)
    _refused(reg, BadInput, "not in the future", calls.open_call, OPERATOR, "c2", "T", end_of_day(TODAY - dt.timedelta(days=2)), 10)
    _refused(reg, BadInput, "unknown tier", calls.open_call, OPERATOR, "c2", "T", later, 10, ["gold"])
    _refused(reg, Forbidden, "operator", calls.open_call, "ann", "c2", "T", later, 10)
    bad = tmp_path / "rubric.toml"
    bad.write_text(calls.DEFAULT_RUBRIC.read_text().replace("scale_worst = 9", "scale_worst = 10"))
    _refused(reg, BadInput, "1 \\(best\\) to 9", calls.open_call, OPERATOR, "c2", "T", later, 10, rubric_path=bad)
    bad.write_text(calls.DEFAULT_RUBRIC.read_text().replace("fund_threshold = 5.0", "fund_threshold = 12.0"))
    _refused(reg, BadInput, "must lie on the scale", calls.open_call, OPERATOR, "c2", "T", later, 10, rubric_path=bad)
    _refused(reg, BadInput, "cannot read rubric", calls.open_call, OPERATOR, "c2", "T", later, 10,
             rubric_path=tmp_path / "none.toml")


def test_the_call_keeps_the_rubric_and_terms_it_opened_with(reg):
    with session_scope(reg) as s:
        call = calls.get_call(s, "c1")
        assert call.terms_sha256 == audit.sha256_text(calls.DEFAULT_TERMS.read_text())
        assert [c.name for c in calls.rubric_of(call).criteria] == list(CRITERIA)
        assert calls.rubric_of(call).tier_caps == {"sample": 400_000, "score": 1_500_000, "internals": 3_000_000,
                                                   "finetune": 3_000_000}


@pytest.mark.parametrize("scores, match", [
    ({c: 0 for c in CRITERIA}, "from 1 \\(best\\) to 9"),
    ({c: 10 for c in CRITERIA}, "from 1 \\(best\\) to 9"),
    ({**{c: 3 for c in CRITERIA}, "risk": 2.5}, "whole number"),
    ({c: 3 for c in CRITERIA[:3]}, "missing risk"),
    ({**{c: 3 for c in CRITERIA}, "charm": 1}, "unknown criterion 'charm'"),
])
def test_scores_out_of_range_are_refused(reg, scores, match):
    app_id = _apply(reg, "ann")
    _to_review(reg, app_id)
    _refused(reg, BadInput, match, panel.score, "p1", app_id, scores)


def test_conflicts_of_interest(reg):
    app_id = _apply(reg, "ann", team=[f"ann:{TRAINED}", f"ben:{TRAINED}"])
    with session_scope(reg) as s:
        applications.screen(s, OPERATOR, app_id)
        rows = panel.assign(s, OPERATOR, app_id, ["p1", "p2", "p3", "p4"])
        assert [r.conflict for r in rows] == [None, None, None, "institution"]
        assert rows[3].conflict_note == "same institution as ann"
    # Same institution is flagged without asking, and cannot be declared away.
    _refused(reg, Conflict, "it stands", panel.declare, "p4", app_id)
    _refused(reg, Forbidden, "has a conflict", panel.open_application, "p4", app_id)
    # Nobody opens an application before declaring.
    _refused(reg, Conflict, "declare your conflicts", panel.open_application, "p1", app_id)
    with session_scope(reg) as s:
        panel.declare(s, "p1", app_id)
        panel.declare(s, "p2", app_id)
        panel.declare(s, "p3", app_id, conflict="co-author of ben in 2025")
        assert panel.open_application(s, "p1", app_id)["content"]["title"] == FIELDS["title"]
    _refused(reg, Forbidden, "has a conflict", panel.open_application, "p3", app_id)
    _refused(reg, Conflict, "it stands", panel.declare, "p3", app_id)           # no stepping back in
    _refused(reg, Forbidden, "does not hold the panel role", panel.open_application, "ann", app_id)
    with session_scope(reg) as s:
        people.set_roles(s, OPERATOR, "ben", ["panel"], [])
    _refused(reg, Conflict, "on the application's team", panel.assign, OPERATOR, app_id, ["ben"])
    with session_scope(reg) as s:
        panel.start_review(s, OPERATOR, app_id)
    _refused(reg, Forbidden, "has a conflict", panel.score, "p3", app_id, {c: 1 for c in CRITERIA})
    _refused(reg, Forbidden, "has a conflict", panel.score, "p4", app_id, {c: 1 for c in CRITERIA})
    _score(reg, app_id, "p1", 2)
    with session_scope(reg) as s:
        # One member counts: below the quorum of two, so no mean yet; the conflicted never count.
        res = panel.result(s, applications.get_application(s, app_id), calls.rubric_of(calls.get_call(s, "c1")))
        assert (res.counted, res.mean) == (1, None)
    _score(reg, app_id, "p2", 4)
    with session_scope(reg) as s:
        res = panel.result(s, applications.get_application(s, app_id), calls.rubric_of(calls.get_call(s, "c1")))
        assert (res.counted, res.mean, res.flagged) == (2, 3.0, False)
        opened = s.exec(select(AuditEvent).where(AuditEvent.action == "panel.open")).all()
        assert [e.actor for e in opened] == ["p1"]


def test_panel_size_and_disagreement(reg):
    deep = _apply(reg, "ann", tier="internals")
    with session_scope(reg) as s:
        applications.screen(s, OPERATOR, deep)
        panel.assign(s, OPERATOR, deep, ["p1", "p2"])
    _refused(reg, Conflict, "needs 3 panel members", panel.start_review, OPERATOR, deep)
    _refused(reg, BadInput, "does not hold the panel role", panel.assign, OPERATOR, deep, ["cat"])

    split = _apply(reg, "ben")
    _to_review(reg, split)
    _score(reg, split, "p1", 1)
    _score(reg, split, "p2", 6)
    with session_scope(reg) as s:
        calls.close_call(s, OPERATOR, "c1")
        applications.withdraw(s, "ann", deep)
        (row,) = awards.plan(s, "c1")
        assert row.flagged and row.outcome == "blocked"
    before = _snapshot(reg)
    with pytest.raises(Conflict, match="panel disagrees"):
        awards.allocate(reg, OPERATOR, "c1")
    assert _snapshot(reg) == before
    _score(reg, split, "p2", 3)             # after discussion
    assert [r.outcome for r in awards.allocate(reg, OPERATOR, "c1")] == ["approved"]


def test_allocation_waits_for_every_application(reg):
    waiting = _apply(reg, "ann")
    with session_scope(reg) as s:
        calls.close_call(s, OPERATOR, "c1")
    with pytest.raises(Conflict, match=f"application {waiting} .* not yet in review"):
        awards.allocate(reg, OPERATOR, "c1", dry_run=True)
    with pytest.raises(Forbidden):
        awards.allocate(reg, "ann", "c1")


def test_appeals_within_the_window_and_awards_from_what_is_left(reg):
    app_id = _apply(reg, "ann")
    with session_scope(reg) as s:
        applications.screen(s, OPERATOR, app_id)
        awards.decide_by_operator(s, OPERATOR, app_id, "rejected", "out of scope")
        decided_at = applications.get_application(s, app_id).decided_at
    late = decided_at + dt.timedelta(days=31)
    _refused(reg, Conflict, "30 days to appeal", applications.appeal, "ann", app_id, "it is in scope", now=late)
    _refused(reg, BadInput, "needs a reason", applications.appeal, "ann", app_id, " ")
    _refused(reg, Forbidden, "not the applicant", applications.appeal, "ben", app_id, "mine")
    with session_scope(reg) as s:
        applications.appeal(s, "ann", app_id, "it is in scope", now=decided_at + dt.timedelta(days=29))
    _refused(reg, BadInput, "from 1 to 50000", awards.decide_by_operator, OPERATOR, app_id, "approved", tokens=60_000)
    _refused(reg, BadInput, "needs --tokens", awards.decide_by_operator, OPERATOR, app_id, "approved")
    with session_scope(reg) as s:
        awards.decide_by_operator(s, OPERATOR, app_id, "approved", tokens=40_000)
        assert awards.tokens_left(s, calls.get_call(s, "c1")) == 60_000
        assert grants.get_grant(s, f"c1-{app_id}").tokens_total == 20_000
    _refused(reg, Conflict, "approved in full", applications.appeal, "ann", app_id, "again")


def test_pool_overspend_and_the_one_supplement(engine):
    _people(engine)
    _open(engine, pool=120_000)
    a = _apply(engine, "ann")              # 50_000
    _to_review(engine, a)
    _score(engine, a, "p1", 2)
    _score(engine, a, "p2", 2)
    with session_scope(engine) as s:
        calls.close_call(s, OPERATOR, "c1")
    awards.allocate(engine, OPERATOR, "c1")
    slug = f"c1-{a}"
    _refused(engine, BadInput, "half the tier's cap", awards.supplement, OPERATOR, slug, 200_001, "more")
    _refused(engine, Conflict, "would overspend", awards.supplement, OPERATOR, slug, 70_001, "more")
    _refused(engine, BadInput, "needs a reason", awards.supplement, OPERATOR, slug, 10, "")
    with session_scope(engine) as s:
        awards.supplement(s, OPERATOR, slug, 70_000, "a second data set")
        assert grants.get_grant(s, slug).tokens_total == 25_000 + 70_000
        assert awards.tokens_left(s, calls.get_call(s, "c1")) == 0
    _refused(engine, Conflict, "one supplement", awards.supplement, OPERATOR, slug, 1, "more")


def test_award_tokens_stay_with_their_project(engine):
    """Tranches and supplements only ever add to the award's own project; a project not awarded
    through a call has no award to draw on, and the revoked project's tranche stays unreleased."""
    _people(engine)
    _open(engine)
    a = _apply(engine, "ann")
    _to_review(engine, a)
    _score(engine, a, "p1", 2)
    _score(engine, a, "p2", 2)
    with session_scope(engine) as s:
        calls.close_call(s, OPERATOR, "c1")
    awards.allocate(engine, OPERATOR, "c1")
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "eve", "Eve", "eve@example.org", "", ["scholar"])
        projects.create_project(s, OPERATOR, "other", "Other", "eve", "Other work.")
    _refused(engine, NotFound, "not awarded through a call", awards.supplement, OPERATOR, "other", 10, "move")
    _refused(engine, NotFound, "not awarded through a call", awards.release_tranche, OPERATOR, "other")
    with session_scope(engine) as s:
        awards.file_report(s, "ann", f"c1-{a}", "progress", "Going.")
        projects.transition(s, OPERATOR, f"c1-{a}", "revoke", reason="misuse")
    _refused(engine, Conflict, "revoked", awards.release_tranche, OPERATOR, f"c1-{a}")
    # One award per project and one project per award: there is no column to move tokens by.
    assert AccessAward.__table__.c.project_id.unique


def test_roles_and_tiers_agree_with_the_rest_of_the_enclave():
    assert tuple(t.value for t in Tier) == grants.TIERS
    assert {"applicant", "panel"} <= LOGIN_ROLES
    assert people.parse_roles(["panel", "applicant"]) == ["applicant", "panel"]


def test_application_state_machine_has_one_table():
    app = AccessApplication(call_id=1, applicant_id=1, state="withdrawn", content="{}", tier="sample", tokens_requested=0)
    with pytest.raises(InvalidTransition, match="withdrawn is final"):
        applications.check_transition(app, "submit")
    app.state = "decided"
    with pytest.raises(InvalidTransition, match="from decided it may: appeal, revise"):
        applications.check_transition(app, "screen")


def test_applicants_and_panel_log_in_but_use_nothing_until_awarded(reg):
    """The hub lets applicants and panel members in (for the access pages), but neither may start
    a notebook or call the model: that needs the scholar role and a live project, which only an
    award brings."""
    from enclave.errors import AccessDenied
    from enclave.hub.admission import login_decision, session_plan
    from enclave.registry.access import resolve

    with session_scope(reg) as s:
        for who in ("ann", "p1"):
            decision = login_decision(s, who)
            assert decision.allowed and not decision.admin
            with pytest.raises(AccessDenied, match="scholar role"):
                session_plan(s, who, None)
            with pytest.raises(AccessDenied, match="scholar role"):
                resolve(s, who)


# --- the same path through the `enclave` command ----------------------------------------------

@pytest.fixture
def cli(db_url, tmp_path, monkeypatch):
    from tests.test_cli import InProcessCli

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(ENCLAVE_HOME=str(tmp_path / "home"), ENCLAVE_DB_URL=db_url, ENCLAVE_OPERATOR="boss")
    cli = InProcessCli(env, monkeypatch)
    cli("init", "--operator", "boss", "--name", "Bea Boss", "--email", "boss@rdc.example")
    for username, affiliation, roles in PEOPLE:
        cli("person", "add", username, "--name", username.title(), "--email", f"{username}@uni.example",
            "--affiliation", affiliation, *[a for r in roles for a in ("--role", r)])
    return cli


def _cli_apply(cli, who: str, terms: str, requests: str, team: list[str] | None = None) -> str:
    app_id = cli("application", "create", "c1", "--tier", "sample", "--title", f"{who}'s study", "--lay-summary", "L",
                 "--question", "Q?", "--least-access", "Sampling is enough.", "--requests", requests,
                 "--tokens-per-request", "500", "--token-justification", "J", "--dataset", "census", "--outputs", "O",
                 "--risk", "R", "--ethics", "IRB-1", *[a for m in (team or [f"{who}:{TRAINED}"]) for a in ("--team", m)],
                 "--as", who).stdout.strip()
    cli("application", "submit", app_id, "--accept-terms", terms, "--as", who)
    return app_id


def test_cli_walk(cli):
    cli("call", "open", "c1", "--title", "Memorisation 2027", "--closes", (TODAY + dt.timedelta(days=20)).isoformat(),
        "--pool-tokens", "80000", "--tier", "sample", "--tier", "score")
    shown = cli.json("call", "show", "c1")
    assert shown["pool_tokens"] == 80_000 and shown["tiers"] == ["sample", "score"] and shown["accepting"]
    terms = shown["terms_sha256"]
    assert audit.sha256_text(cli("call", "show", "c1", "--terms").stdout) == terms
    assert [c["slug"] for c in cli.json("call", "list")] == ["c1"]

    ann = _cli_apply(cli, "ann", terms, "100", [f"ann:{TRAINED}", f"dan:{TRAINED}"])   # 50_000
    ben = _cli_apply(cli, "ben", terms, "100")                                          # 50_000
    cli.fails("application", "edit", ann, "--title", "Changed", "--as", "ann", match="frozen")
    cli.fails("application", "show", ann, "--as", "ben", match="not the applicant")
    assert cli.json("application", "show", ann, "--as", "ann")["state"] == "submitted"
    assert [a["id"] for a in cli.json("application", "list", "--as", "ben")] == [int(ben)]
    assert len(cli.json("application", "list")) == 2

    for app_id in (ann, ben):
        cli("application", "screen", app_id)
        out = cli("panel", "assign", app_id, "p1", "p2", "p4").stdout
        assert ("conflict flagged: p4" in out) == (app_id == ann)
    cli.fails("panel", "open", ann, "--as", "p1", match="declare your conflicts")
    cli.fails("panel", "declare", ann, "--as", "p4", "--none", match="it stands")
    cli.fails("panel", "declare", ann, "--as", "p1", match="exactly one of")
    for app_id in (ann, ben):
        for member in ("p1", "p2"):
            cli("panel", "declare", app_id, "--none", "--as", member)
        cli("application", "review", app_id)
    cli("panel", "declare", ben, "--conflict", "former student", "--as", "p4")
    assert cli.json("panel", "open", ann, "--as", "p1")["content"]["title"] == "ann's study"
    cli.fails("panel", "open", ann, "--as", "p4", match="has a conflict")
    cli.fails("application", "show", ann, "--as", "p4", match="enclave panel open")   # no way round the declaration
    scores = lambda n: [a for c in CRITERIA for a in ("--score", f"{c}={n}")]  # noqa: E731
    cli.fails("panel", "score", ann, *scores(10), "--as", "p1", match="from 1 (best) to 9")
    cli.fails("panel", "score", ann, "--score", "significance=x", "--as", "p1", match="whole number")
    cli.fails("panel", "score", ann, *scores(1), "--as", "p4", match="has a conflict")
    for app_id, n in ((ann, 2), (ben, 3)):
        cli("panel", "score", app_id, *scores(n), "--comment", "sound", "--private", "meh", "--as", "p1")
        cli("panel", "score", app_id, *scores(n), "--as", "p2")
    mine = cli.json("application", "show", ann, "--as", "ann")["panel"]
    assert mine == {"counted": 2, "mean": 2.0, "spread": 0.0, "flagged": False, "comments": ["sound"]}
    assert cli.json("application", "show", ann)["panel"]["members"][0]["private"] == "meh"

    cli.fails("call", "allocate", "c1", match="still taking applications")
    cli("call", "close", "c1")
    ranked = cli.json("call", "rank", "c1")
    assert [(r["application"], r["recommended"]) for r in ranked] == [(int(ann), 50_000), (int(ben), 30_000)]
    before = cli("audit", "head").stdout
    dry = cli.json("call", "allocate", "c1", "--dry-run")
    assert cli("audit", "head").stdout == before
    assert cli.json("call", "allocate", "c1") == dry == ranked
    assert "0 tokens in 0 awards" in cli("call", "allocate", "c1").stdout      # all decided: nothing more to do

    slug = f"c1-{ann}"
    award = cli.json("award", "show", slug)
    assert (award["tokens_awarded"], award["tranche_first"], award["tranche_second"]) == (50_000, 25_000, 25_000)
    assert cli.json("grant", "show", slug)["tokens_total"] == 25_000
    assert cli.json("project", "show", slug)["members"] == ["ann", "dan"]
    assert "allowed: dan in " + slug in cli("check-access", "dan").stdout
    cli.fails("award", "tranche", slug, match="no progress report")
    cli("report", "progress", slug, "--text", "Half done.", "--as", "dan")
    cli("award", "tranche", slug)
    assert cli.json("grant", "show", slug)["tokens_total"] == 50_000
    cli.fails("award", "supplement", slug, "--tokens", "1000", "--reason", "more", match="would overspend")
    cli("award", "extend", slug, "--until", (TODAY + dt.timedelta(days=400)).isoformat())
    cli.fails("award", "close", slug, match="no final report")
    cli("report", "final", slug, "--text", "Finished.", "--as", "ann")
    cli("award", "close", slug)
    assert cli.json("project", "show", slug)["status"] == "closed"
    assert [a["project"] for a in cli.json("award", "list")] == sorted([slug, f"c1-{ben}"])
    assert "audit chain intact" in cli("audit", "verify").stdout


CLI_BAD_INPUT = [
    (["call", "open", "c2", "--title", "T", "--closes", "someday", "--pool-tokens", "5"], "bad --closes"),
    (["call", "open", "c2", "--title", "T", "--closes", "2030-01-01", "--pool-tokens", "0"], "token pool"),
    (["call", "open", "c2", "--title", "T", "--closes", "2030-01-01", "--pool-tokens", "5", "--tier", "gold"], "unknown tier"),
    (["call", "show", "nope"], "unknown call"),
    (["application", "create", "c1", "--as", "p1"], "does not hold the applicant role"),
    (["application", "create", "c1", "--team", "ann", "--as", "ann"], "USER:YYYY-MM-DD"),
    (["application", "show", "999", "--as", "ann"], "unknown application"),
    (["panel", "score", "1", "--score", "significance", "--as", "p1"], "CRITERION=N"),
    (["award", "show", "nope"], "unknown project"),
    (["report", "progress", "nope", "--as", "ann"], "--text TEXT or --file PATH"),
]


@pytest.mark.parametrize("args, message", CLI_BAD_INPUT, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CLI_BAD_INPUT)])
def test_cli_bad_input_is_one_line_and_writes_nothing(cli, args, message):
    cli("call", "open", "c1", "--title", "T", "--closes", (TODAY + dt.timedelta(days=20)).isoformat(), "--pool-tokens", "9")
    before = cli("audit", "head").stdout
    cli.fails(*args, match=message)
    assert cli("audit", "head").stdout == before
