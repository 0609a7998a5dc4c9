"""Ranking a call's applications, allocating its token pool, and the life of each award.

`plan` ranks the applications in review by the panel's weighted mean (1 best), ties broken by
submission time and then id, and funds down the ranking: each gets what it asked for, capped by
its tier and the call's `max_award`, until the pool runs out; the one at the cut gets what is left
and everything below it is deferred. The plan is a pure function of the registry's state, so a
dry run and the real run agree, and the real run, one transaction per application, can stop
half-way and be run again: deciding the top of a ranking leaves the rest of the plan unchanged.

Each award creates the approved project (its PI the applicant, its members the team), a grant
holding the first half of the tokens, access to the registered datasets the application named,
and the award row that binds those tokens to that project
for good (there is no operation that moves them). The second half is released by `release_tranche`
after a progress report; one supplement of at most half the tier's cap may follow; extensions move
the end date only; closing needs a final report. Revocation and renewal are the project's own
transitions (`enclave project revoke`, `enclave project extend`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from enclave.errors import BadInput, Conflict, Forbidden, NotFound
from enclave.registry import audit, datasets, grants, people, projects
from enclave.registry.applications import content_of, decide, get_application, require_actor, check_transition
from enclave.registry.calls import Rubric, accepting, get_call, rubric_of
from enclave.registry.clock import end_of_day, iso, last_day, utcnow
from enclave.registry.db import is_postgres, session_scope
from enclave.registry.lifecycle import require_live
from enclave.registry.models import (
    AccessApplication, AccessAward, AccessCall, ApplicationState as S, AwardReport, Dataset, Membership, Outcome,
    Person, Project, ReportKind, Role,
)
from enclave.registry.panel import result

# Applications that must be through screening and into review before a call is allocated.
NOT_READY = frozenset({S.submitted.value, S.screening.value})
MAX_REPORT_CHARS = 20_000


@dataclasses.dataclass(frozen=True)
class PlanRow:
    rank: int
    application: int
    applicant: str
    tier: str
    mean: float | None
    counted: int
    flagged: bool
    requested: int
    cap: int
    recommended: int
    outcome: str        # approved | approved_subject_to | deferred | rejected, or "blocked"
    note: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tokens_left(session: Session, call: AccessCall) -> int:
    spent = session.exec(select(func.coalesce(func.sum(AccessAward.tokens_awarded + AccessAward.supplement_tokens), 0))
                         .where(AccessAward.call_id == call.id)).one()
    return call.pool_tokens - int(spent)


def cap_for(call: AccessCall, rubric: Rubric, tier: str) -> int:
    cap = rubric.tier_caps[tier]
    return min(cap, call.max_award) if call.max_award else cap


def plan(session: Session, call_slug: str) -> list[PlanRow]:
    """The ranked table and what allocation would do with each application now in review."""
    call = get_call(session, call_slug)
    rubric = rubric_of(call)
    apps = session.exec(select(AccessApplication).where(AccessApplication.call_id == call.id,
                                                        AccessApplication.state == S.in_review.value)).all()
    scored = [(app, result(session, app, rubric)) for app in apps]
    # Unscored last; then best mean, earliest submission, lowest id: a total order, so no ties.
    scored.sort(key=lambda pair: (pair[1].mean is None, pair[1].mean or 0.0, pair[0].submitted_at, pair[0].id))
    left, rows = tokens_left(session, call), []
    for rank, (app, res) in enumerate(scored, start=1):
        cap = min(app.tokens_requested, cap_for(call, rubric, app.tier))
        applicant = session.get(Person, app.applicant_id).username
        amount, note = 0, ""
        if res.mean is None:
            outcome, note = "blocked", f"{res.counted} of {res.quorum} panel scores that count"
        elif res.flagged:
            outcome, note = "blocked", f"panel disagrees (spread {res.spread:g} > {rubric.disagreement_range:g}): discuss and rescore"
        elif res.mean > rubric.fund_threshold:
            outcome, note = Outcome.rejected.value, f"score {res.mean:g} worse than the funding threshold {rubric.fund_threshold:g}"
        elif left <= 0:
            outcome, note = Outcome.deferred.value, "the call's pool is spent"
        else:
            amount = min(cap, left)
            left -= amount
            outcome = Outcome.approved_subject_to.value if app.conditions else Outcome.approved.value
            note = "reduced: the pool ran out here" if amount < cap else ""
        rows.append(PlanRow(rank, app.id, applicant, app.tier, res.mean, res.counted, res.flagged,
                            app.tokens_requested, cap, amount, outcome, note))
    return rows


def _lock_call(session: Session, call_slug: str) -> AccessCall:
    """The call row, locked for this transaction on PostgreSQL (SQLite writers are serialised), so
    two allocations at once cannot both spend the same pool."""
    query = select(AccessCall).where(AccessCall.slug == call_slug)
    if is_postgres(session):
        query = query.with_for_update()
    call = session.exec(query).first()
    if call is None:
        raise NotFound(f"unknown call {call_slug!r}")
    return call


def check_allocatable(session: Session, call_slug: str, now: dt.datetime) -> list[PlanRow]:
    call = get_call(session, call_slug)
    if accepting(call, now):
        raise Conflict(f"call {call_slug!r} is still taking applications; close it first (`enclave call close {call_slug}`)")
    waiting = session.exec(select(AccessApplication.id).where(AccessApplication.call_id == call.id,
                                                              AccessApplication.state.in_(NOT_READY))).all()
    if waiting:
        raise Conflict(f"application {sorted(waiting)[0]} of call {call_slug!r} is not yet in review; screen and review "
                       "or decide every application first")
    rows = plan(session, call_slug)
    blocked = [r for r in rows if r.outcome == "blocked"]
    if blocked:
        raise Conflict(f"cannot allocate call {call_slug!r}: application {blocked[0].application} has {blocked[0].note}")
    return rows


def allocate(engine: Engine, actor: str, call_slug: str, *, dry_run: bool = False,
             now: dt.datetime | None = None) -> list[PlanRow]:
    """Decide every application in review: awards down the ranking, the rest deferred or rejected.
    One transaction per application; the dry run returns the same rows and writes nothing."""
    now = now or utcnow()
    with session_scope(engine) as s:
        people.require_role(s, actor)
        rows = check_allocatable(s, call_slug, now)
    if dry_run:
        return rows
    done = []
    for expected in rows:
        with session_scope(engine) as s:
            call = _lock_call(s, call_slug)
            # Recomputed under the lock: another allocation may have got here first.
            current = next((r for r in check_allocatable(s, call_slug, now) if r.application == expected.application), None)
            if current is None or dataclasses.replace(current, rank=expected.rank) != expected:
                raise Conflict(f"call {call_slug!r} changed while it was being allocated; run it again")
            app = get_application(s, expected.application)
            if expected.recommended > 0:
                award_application(s, actor, call, app, expected.recommended, expected.outcome, now=now)
            else:
                decide(s, actor, app, expected.outcome, expected.note, now=now)
        done.append(expected)
    return done


def award_application(session: Session, actor: str, call: AccessCall, app: AccessApplication, tokens: int,
                      outcome: str, *, now: dt.datetime) -> AccessAward:
    """Decide `app` as approved with `tokens`, creating its project, members, grant and award."""
    rubric = rubric_of(call)
    if tokens <= 0 or tokens > min(app.tokens_requested, cap_for(call, rubric, app.tier)):
        raise BadInput(f"an award for application {app.id} must be from 1 to "
                       f"{min(app.tokens_requested, cap_for(call, rubric, app.tier))} tokens, not {tokens}")
    left = tokens_left(session, call)
    if tokens > left:
        raise Conflict(f"call {call.slug!r} has {left} tokens left in its pool; {tokens} would overspend it")
    content = content_of(app)
    applicant = session.get(Person, app.applicant_id)
    team = [m["username"] for m in content["team"]]
    for username in [applicant.username, *team]:
        # An award makes its team scholars: the roles the project's notebooks and keys require.
        person = people.get_person(session, username)
        if not person.has_role(Role.scholar):
            people.set_roles(session, actor, username, [Role.scholar.value], [])
    slug = f"{call.slug}-{app.id}"
    projects.create_project(session, actor, slug, content["title"], applicant.username, content["research_question"],
                            terms_version=f"call:{call.slug}:{call.terms_sha256[:16]}")
    until = end_of_day((now + dt.timedelta(days=rubric.award_days)).date())
    project = projects.transition(session, actor, slug, "approve", until=until, now=now)
    for username in team:
        if username != applicant.username:
            projects.add_member(session, actor, slug, username, now=now)
    first = tokens - tokens // 2
    grants.set_grant(session, actor, slug, tokens_total=first, tier=app.tier)
    award = AccessAward(call_id=call.id, application_id=app.id, project_id=project.id, tier=app.tier,
                        tokens_awarded=tokens, tranche_first=first, tranche_second=tokens // 2, created_at=now,
                        created_by=actor)
    session.add(award)
    session.flush()
    granted, not_granted = grant_datasets(session, actor, slug, content.get("datasets", []))
    decide(session, actor, app, outcome, f"awarded {tokens} tokens as project {slug}", now=now)
    audit.append(session, actor=actor, action="award.create", subject=f"project:{slug}", details={
        "call": call.slug, "application": app.id, "tier": app.tier, "tokens": tokens, "first_tranche": first,
        "second_tranche": tokens // 2, "until": last_day(until), "conditions": app.conditions,
        "datasets_granted": granted, "datasets_not_granted": not_granted})
    return award


def grant_datasets(session: Session, actor: str, slug: str, names: list[str]) -> tuple[list[str], list[str]]:
    """Let the new project use each dataset its application named, in the award's transaction. A
    name that is not (or no longer) registered is left out and reported, never an error: losing
    the award over a dataset the operator can still allow by hand would be worse."""
    granted, missing = [], []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):  # once each, in the order named
        if session.exec(select(Dataset).where(Dataset.name == name)).first() is None:
            missing.append(name)
            continue
        datasets.allow(session, actor, name, slug)
        granted.append(name)
    return granted, missing


# --- operator decisions outside allocation -----------------------------------------------------

def decide_by_operator(session: Session, actor: str, app_id: int, outcome: str, reason: str = "",
                       tokens: int | None = None, now: dt.datetime | None = None) -> AccessApplication:
    """An operator's decision: screen out (rejected/deferred), or answer an appeal; an approval
    after appeal needs `tokens`, which come from what is left of the call's pool."""
    now = now or utcnow()
    app = get_application(session, app_id)
    require_actor(session, actor, app, check_transition(app, "decide"))
    if outcome in (Outcome.approved.value, Outcome.approved_subject_to.value):
        if app.state != S.appealed.value:
            raise Conflict(f"application {app.id} is {app.state}: approvals come from `enclave call allocate`, "
                           "or from the answer to an appeal")
        if tokens is None:
            raise BadInput("an approval after appeal needs --tokens")
        call = _lock_call(session, session.get(AccessCall, app.call_id).slug)
        award_application(session, actor, call, app, tokens, outcome, now=now)
        return app
    if tokens is not None:
        raise BadInput(f"--tokens goes with an approval, not with {outcome}")
    return decide(session, actor, app, outcome, reason, now=now)


def set_conditions(session: Session, actor: str, app_id: int, text: str) -> AccessApplication:
    """Conditions an award must meet (approved_subject_to), set by an operator during review."""
    people.require_role(session, actor)
    app = get_application(session, app_id)
    if app.state not in (S.screening.value, S.in_review.value, S.appealed.value):
        raise Conflict(f"application {app.id} is {app.state}; conditions are set before the decision")
    app.conditions = text.strip()
    session.add(app)
    session.flush()
    audit.append(session, actor=actor, action="application.conditions", subject=f"application:{app.id}",
                 details={"conditions": app.conditions})
    return app


# --- the life of an award ----------------------------------------------------------------------

def get_award(session: Session, slug: str) -> tuple[AccessAward, Project]:
    project = projects.get_project(session, slug)
    award = session.exec(select(AccessAward).where(AccessAward.project_id == project.id)).first()
    if award is None:
        raise NotFound(f"project {slug!r} was not awarded through a call")
    return award, project


def file_report(session: Session, actor: str, slug: str, kind: str, text: str, now: dt.datetime | None = None) -> AwardReport:
    """A progress or final report, filed by a member of the awarded project."""
    now = now or utcnow()
    try:
        kind = ReportKind(kind).value
    except ValueError:
        raise BadInput(f"unknown report kind {kind!r}: progress or final") from None
    award, project = get_award(session, slug)
    person = people.require_role(session, actor, Role.scholar)
    if session.get(Membership, (project.id, person.id)) is None:
        raise Forbidden(f"{actor!r} is not a member of project {slug!r}")
    require_live(project, f"file a {kind} report", now)
    if not text.strip():
        raise BadInput("a report needs text (--text or --file)")
    if len(text) > MAX_REPORT_CHARS:
        raise BadInput(f"a report holds at most {MAX_REPORT_CHARS} characters")
    report = AwardReport(award_id=award.id, kind=kind, text=text.strip(), sha256=audit.sha256_text(text.strip()),
                         filed_at=now, filed_by=actor)
    session.add(report)
    session.flush()
    audit.append(session, actor=actor, action=f"award.report_{kind}", subject=f"project:{slug}",
                 details={"sha256": report.sha256, "report": report.id})
    return report


def _reports(session: Session, award: AccessAward, kind: ReportKind) -> list[AwardReport]:
    return list(session.exec(select(AwardReport).where(AwardReport.award_id == award.id, AwardReport.kind == kind.value)
                             .order_by(AwardReport.id)).all())


def release_tranche(session: Session, actor: str, slug: str, now: dt.datetime | None = None) -> AccessAward:
    """Add the second half of the award to the project's grant, once a progress report is filed."""
    now = now or utcnow()
    people.require_role(session, actor)
    award, project = get_award(session, slug)
    require_live(project, "release its second tranche", now)
    if award.second_released_at is not None:
        raise Conflict(f"the second tranche of {slug!r} was released on {award.second_released_at.date()}")
    if not _reports(session, award, ReportKind.progress):
        raise Conflict(f"project {slug!r} has filed no progress report; the second tranche waits for one")
    _add_tokens(session, actor, slug, award.tranche_second)
    award.second_released_at, award.second_released_by = now, actor
    session.add(award)
    session.flush()
    audit.append(session, actor=actor, action="award.tranche", subject=f"project:{slug}",
                 details={"tokens": award.tranche_second})
    return award


def supplement(session: Session, actor: str, slug: str, tokens: int, reason: str, now: dt.datetime | None = None) -> AccessAward:
    """One supplement per award, at most half the tier's cap, from what is left of the call's pool."""
    now = now or utcnow()
    people.require_role(session, actor)
    award, project = get_award(session, slug)
    require_live(project, "supplement its award", now)
    if not reason.strip():
        raise BadInput("a supplement needs a reason (--reason)")
    if award.supplement_at is not None:
        raise Conflict(f"project {slug!r} had its one supplement on {award.supplement_at.date()}")
    call = _lock_call(session, session.get(AccessCall, award.call_id).slug)
    most = rubric_of(call).tier_caps[award.tier] // 2
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 < tokens <= most:
        raise BadInput(f"a supplement for a {award.tier} award is from 1 to {most} tokens (half the tier's cap), not {tokens}")
    left = tokens_left(session, call)
    if tokens > left:
        raise Conflict(f"call {call.slug!r} has {left} tokens left in its pool; {tokens} would overspend it")
    _add_tokens(session, actor, slug, tokens)
    award.supplement_tokens, award.supplement_at = tokens, now
    session.add(award)
    session.flush()
    audit.append(session, actor=actor, action="award.supplement", subject=f"project:{slug}",
                 details={"tokens": tokens, "reason": reason.strip()})
    return award


def _add_tokens(session: Session, actor: str, slug: str, tokens: int) -> None:
    grant = grants.get_grant(session, slug)
    grants.set_grant(session, actor, slug, tokens_total=grant.tokens_total + tokens)


def extend(session: Session, actor: str, slug: str, until: dt.datetime, now: dt.datetime | None = None) -> Project:
    """A later end date, nothing else: extensions never add tokens."""
    get_award(session, slug)
    return projects.extend(session, actor, slug, until, now=now)


def close(session: Session, actor: str, slug: str, now: dt.datetime | None = None) -> Project:
    award, _ = get_award(session, slug)
    people.require_role(session, actor)
    if not _reports(session, award, ReportKind.final):
        raise Conflict(f"project {slug!r} has filed no final report; it cannot be closed before it does")
    return projects.transition(session, actor, slug, "close", now=now)


def award_json(session: Session, award: AccessAward, project: Project) -> dict[str, Any]:
    call = session.get(AccessCall, award.call_id)
    return {
        "project": project.slug, "status": project.status, "until": last_day(project.expires_at), "call": call.slug,
        "application": award.application_id, "tier": award.tier, "tokens_awarded": award.tokens_awarded,
        "tranche_first": award.tranche_first, "tranche_second": award.tranche_second,
        "second_released_at": iso(award.second_released_at), "supplement_tokens": award.supplement_tokens,
        "reports": [{"kind": r.kind, "filed_at": iso(r.filed_at), "by": r.filed_by, "sha256": r.sha256}
                    for r in session.exec(select(AwardReport).where(AwardReport.award_id == award.id)
                                          .order_by(AwardReport.id)).all()],
    }


def list_awards(session: Session, call_slug: str | None = None) -> list[tuple[AccessAward, Project]]:
    query = select(AccessAward, Project).join(Project, Project.id == AccessAward.project_id).order_by(Project.slug)
    if call_slug is not None:
        query = query.where(AccessAward.call_id == get_call(session, call_slug).id)
    return [(a, p) for a, p in session.exec(query).all()]
