"""Applications for access: drafts an applicant edits, submissions frozen as numbered versions,
and one state machine for every move, each an audit event.

    draft --submit--> submitted --screen--> screening --review--> in_review --decide--> decided
    screening --decide--> decided                  (screened out: rejected or deferred)
    decided --appeal--> appealed --decide--> decided   (within the call's appeal window)
    decided(deferred) --revise--> draft            (a new version; the old one stays as it was)
    draft|submitted|screening|in_review --withdraw--> withdrawn

A submitted application is never edited: `revise` starts the next version from a copy, and every
submitted version is kept in `access_application_version` with the SHA-256 of its content.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from sqlmodel import Session, select

from enclave.errors import BadInput, Conflict, Forbidden, InvalidTransition, NotFound
from enclave.registry import audit
from enclave.registry.calls import accepting, get_call, parse_tiers, rubric_of
from enclave.registry.clock import iso, utcnow
from enclave.registry.models import (
    AccessApplication, AccessApplicationVersion, AccessCall, ApplicationState as S, AuditEvent, Outcome, Person, Role,
)
from enclave.registry.people import find_person, get_person, require_role

# Text fields, each required before submission, with the longest text each may hold.
TEXT_FIELDS: dict[str, int] = {
    "title": 200,
    "lay_summary": 4000,
    "research_question": 4000,
    "least_access": 4000,           # why this model and tier is the least access that answers it
    "token_justification": 4000,    # why requests x tokens per request
    "planned_outputs": 4000,        # and how they will pass output review
    "risk_assessment": 4000,        # risk and misuse self-assessment
    "ethics_reference": 200,
}
# Largest single figures an application may ask for (far above any tier's cap).
MAX_REQUESTS = 10**9
MAX_TOKENS_PER_REQUEST = 100_000


@dataclasses.dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[S]
    target: S
    # "applicant": only the application's own applicant; "operator": an operator.
    by: str


TRANSITIONS: dict[str, Transition] = {t.action: t for t in (
    Transition("submit", frozenset({S.draft}), S.submitted, "applicant"),
    Transition("screen", frozenset({S.submitted}), S.screening, "operator"),
    Transition("review", frozenset({S.screening}), S.in_review, "operator"),
    Transition("decide", frozenset({S.screening, S.in_review, S.appealed}), S.decided, "operator"),
    Transition("appeal", frozenset({S.decided}), S.appealed, "applicant"),
    Transition("revise", frozenset({S.decided}), S.draft, "applicant"),
    Transition("withdraw", frozenset({S.draft, S.submitted, S.screening, S.in_review}), S.withdrawn, "applicant"),
)}


def check_transition(app: AccessApplication, action: str) -> Transition:
    """The transition `action` from the application's state, or an error naming what is allowed."""
    step = TRANSITIONS.get(action)
    if step is None:
        raise InvalidTransition(f"unknown application action {action!r}")
    current = S(app.state)
    if current not in step.sources:
        allowed = sorted(a for a, t in TRANSITIONS.items() if current in t.sources)
        hint = f"from {current.value} it may: {', '.join(allowed)}" if allowed else f"{current.value} is final"
        raise InvalidTransition(f"cannot {action} application {app.id}: it is {current.value} ({hint})")
    return step


def require_actor(session: Session, actor: str | None, app: AccessApplication, step: Transition) -> Person:
    if step.by == "operator":
        return require_role(session, actor)
    person = require_role(session, actor, Role.applicant)
    if person.id != app.applicant_id:
        raise Forbidden(f"{actor!r} is not the applicant of application {app.id}")
    return person


def move(session: Session, actor: str, app: AccessApplication, action: str, *,
         details: dict[str, Any] | None = None, now: dt.datetime | None = None) -> AccessApplication:
    """Take one step of the state machine (the actor already checked) and record it."""
    step = check_transition(app, action)
    before = app.state
    app.state, app.updated_at = step.target.value, now or utcnow()
    session.add(app)
    session.flush()
    audit.append(session, actor=actor, action=f"application.{action}", subject=f"application:{app.id}",
                 details={"from": before, "to": step.target.value, **(details or {})})
    return app


# --- content -----------------------------------------------------------------------------------

def empty_content() -> dict[str, Any]:
    return {**{name: "" for name in TEXT_FIELDS}, "requests": 0, "tokens_per_request": 0, "datasets": [],
            "team": []}


def parse_team(entries: list[str]) -> list[dict[str, str]]:
    """`USER:YYYY-MM-DD` entries: each team member and the date of their research-ethics training."""
    team, seen = [], set()
    for entry in entries:
        username, sep, day = entry.partition(":")
        if not sep or not username:
            raise BadInput(f"bad team member {entry!r}: use USER:YYYY-MM-DD (the date of their training)")
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise BadInput(f"bad training date in {entry!r}: expected YYYY-MM-DD") from None
        if username in seen:
            raise BadInput(f"{username!r} is named twice in the team")
        seen.add(username)
        team.append({"username": username, "training_date": day})
    return team


def apply_changes(content: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The content with `changes` (None: unchanged) applied and checked field by field."""
    content = dict(content)
    for name, value in changes.items():
        if value is None:
            continue
        if name in TEXT_FIELDS:
            if not isinstance(value, str) or len(value) > TEXT_FIELDS[name]:
                raise BadInput(f"{name} must be text of at most {TEXT_FIELDS[name]} characters")
            content[name] = value.strip()
        elif name in ("requests", "tokens_per_request"):
            top = MAX_REQUESTS if name == "requests" else MAX_TOKENS_PER_REQUEST
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
                raise BadInput(f"{name} must be a whole number from 1 to {top}, not {value}")
            content[name] = value
        elif name == "datasets":
            content[name] = sorted({str(d).strip() for d in value if str(d).strip()})
        elif name == "team":
            content[name] = parse_team(list(value))
        else:
            raise BadInput(f"unknown application field {name!r}")
    return content


def tokens_requested(content: dict[str, Any]) -> int:
    return int(content.get("requests") or 0) * int(content.get("tokens_per_request") or 0)


def content_of(app: AccessApplication) -> dict[str, Any]:
    return json.loads(app.content)


def _store(app: AccessApplication, content: dict[str, Any]) -> None:
    app.content = audit.canonical_json(content)
    app.tokens_requested = tokens_requested(content)


# --- operations --------------------------------------------------------------------------------

def create(session: Session, actor: str, call_slug: str, tier: str, now: dt.datetime | None = None,
           **fields: Any) -> AccessApplication:
    """A new draft for `call_slug`, written by `actor` (who needs the applicant role)."""
    now = now or utcnow()
    person = require_role(session, actor, Role.applicant)
    call = get_call(session, call_slug)
    if not accepting(call, now):
        raise Conflict(f"call {call_slug!r} is not taking applications")
    (tier,) = parse_tiers([tier])
    if tier not in call.tiers.split(","):
        raise BadInput(f"call {call_slug!r} offers the tiers {call.tiers.replace(',', ', ')}, not {tier!r}")
    content = apply_changes(empty_content(), fields)
    app = AccessApplication(call_id=call.id, applicant_id=person.id, tier=tier, content="", tokens_requested=0,
                            created_at=now, updated_at=now)
    _store(app, content)
    session.add(app)
    session.flush()
    audit.append(session, actor=actor, action="application.create", subject=f"application:{app.id}",
                 details={"call": call_slug, "tier": tier})
    return app


def edit(session: Session, actor: str, app_id: int, tier: str | None = None, now: dt.datetime | None = None,
         **changes: Any) -> AccessApplication:
    """Change a draft. A submitted application is frozen: the refusal says how to make a new version."""
    app = get_application(session, app_id)
    person = require_role(session, actor, Role.applicant)
    if person.id != app.applicant_id:
        raise Forbidden(f"{actor!r} is not the applicant of application {app.id}")
    if app.state != S.draft.value:
        raise Conflict(f"application {app.id} was submitted and is frozen (it is {app.state}); "
                       "only a deferred decision lets you revise it as a new version")
    call = session.get(AccessCall, app.call_id)
    if tier is not None:
        (tier,) = parse_tiers([tier])
        if tier not in call.tiers.split(","):
            raise BadInput(f"call {call.slug!r} offers the tiers {call.tiers.replace(',', ', ')}, not {tier!r}")
    before = content_of(app)
    after = apply_changes(before, changes)
    if after == before and tier in (None, app.tier):
        return app
    changed = sorted(k for k in after if after[k] != before.get(k)) + (["tier"] if tier not in (None, app.tier) else [])
    _store(app, after)
    app.tier = tier or app.tier
    app.updated_at = now or utcnow()
    session.add(app)
    session.flush()
    audit.append(session, actor=actor, action="application.edit", subject=f"application:{app.id}",
                 details={"fields": changed, "version": app.version})
    return app


def missing_fields(content: dict[str, Any]) -> list[str]:
    missing = [name for name in TEXT_FIELDS if not content.get(name)]
    missing += [name for name in ("requests", "tokens_per_request", "team") if not content.get(name)]
    return missing


def training_problems(session: Session, team: list[dict[str, str]], valid_days: int, now: dt.datetime) -> list[str]:
    """Why the team may not apply: unknown members, training in the future or expired."""
    problems = []
    for member in team:
        person = find_person(session, member["username"])
        if person is None:
            problems.append(f"team member {member['username']!r} is not registered")
            continue
        if not (person.has_role(Role.applicant) or person.has_role(Role.scholar)):
            # An award makes the team scholars: only people who signed up to do research may be named.
            problems.append(f"team member {member['username']!r} holds neither the applicant nor the scholar role")
            continue
        taken = dt.date.fromisoformat(member["training_date"])
        if taken > now.date():
            problems.append(f"{member['username']!r}'s training date {taken} is in the future")
        elif taken + dt.timedelta(days=valid_days) < now.date():
            problems.append(f"{member['username']!r}'s training of {taken} expired "
                            f"{taken + dt.timedelta(days=valid_days)}; renew it before submitting")
    return problems


def submit(session: Session, actor: str, app_id: int, accept_terms: str, now: dt.datetime | None = None) -> AccessApplication:
    """Freeze the draft as the next version. `accept_terms` is the SHA-256 of the call's terms the
    applicant read: a different hash (the terms changed, or were never read) refuses."""
    now = now or utcnow()
    app = get_application(session, app_id)
    step = check_transition(app, "submit")
    require_actor(session, actor, app, step)
    call = session.get(AccessCall, app.call_id)
    if not accepting(call, now):
        raise Conflict(f"call {call.slug!r} is not taking applications")
    if (accept_terms or "").strip().lower() != call.terms_sha256:
        raise BadInput(f"accept the call's terms by their SHA-256 ({call.terms_sha256}; see `enclave call show "
                       f"{call.slug} --terms`)")
    content = content_of(app)
    missing = missing_fields(content)
    if missing:
        raise BadInput(f"application {app.id} is incomplete: fill in {', '.join(missing)}")
    if actor not in {m["username"] for m in content["team"]}:
        raise BadInput(f"the applicant {actor!r} must be in the team, with their training date")
    problems = training_problems(session, content["team"], rubric_of(call).training_valid_days, now)
    if problems:
        raise BadInput(problems[0])
    session.add(AccessApplicationVersion(
        application_id=app.id, version=app.version, content=app.content, content_sha256=audit.sha256_text(app.content),
        terms_sha256=call.terms_sha256, submitted_at=now, submitted_by=actor))
    app.submitted_at = now
    return move(session, actor, app, "submit", now=now, details={
        "version": app.version, "content_sha256": audit.sha256_text(app.content), "terms_sha256": call.terms_sha256,
        "tokens_requested": app.tokens_requested, "tier": app.tier})


def screen(session: Session, actor: str, app_id: int, now: dt.datetime | None = None) -> AccessApplication:
    """An operator takes a submitted application in for screening (completeness, eligibility)."""
    app = get_application(session, app_id)
    require_actor(session, actor, app, check_transition(app, "screen"))
    return move(session, actor, app, "screen", now=now)


def decide(session: Session, actor: str, app: AccessApplication, outcome: str, reason: str = "",
           now: dt.datetime | None = None) -> AccessApplication:
    """Record a decision (the actor already checked by the caller: an operator or `call allocate`)."""
    now = now or utcnow()
    try:
        outcome = Outcome(outcome).value
    except ValueError:
        raise BadInput(f"unknown outcome {outcome!r}: choose from {', '.join(o.value for o in Outcome)}") from None
    if outcome in (Outcome.rejected.value, Outcome.deferred.value) and not reason.strip():
        raise BadInput(f"a decision of {outcome} needs a reason (--reason)")
    check_transition(app, "decide")
    appealed = app.state == S.appealed.value
    app.outcome, app.outcome_reason, app.decided_at, app.decided_by = outcome, reason.strip(), now, actor
    return move(session, actor, app, "decide", now=now,
                details={"outcome": outcome, "reason": reason.strip(), "after_appeal": appealed})


def appeal(session: Session, actor: str, app_id: int, reason: str, now: dt.datetime | None = None) -> AccessApplication:
    now = now or utcnow()
    app = get_application(session, app_id)
    step = check_transition(app, "appeal")
    require_actor(session, actor, app, step)
    if not reason.strip():
        raise BadInput("an appeal needs a reason (--reason)")
    if app.outcome == Outcome.approved.value:
        raise Conflict(f"application {app.id} was approved in full; there is nothing to appeal")
    days = rubric_of(session.get(AccessCall, app.call_id)).appeal_days
    if now > app.decided_at + dt.timedelta(days=days):
        raise Conflict(f"the {days} days to appeal the decision of {app.decided_at.date()} are over")
    if _appeals(session, app) >= 1:
        raise Conflict(f"application {app.id} was appealed once already")
    return move(session, actor, app, "appeal", now=now, details={"reason": reason.strip(), "outcome": app.outcome})


def _appeals(session: Session, app: AccessApplication) -> int:
    """Appeals so far: the audit chain is their record (an application is appealed at most once)."""
    return len(session.exec(select(AuditEvent.seq).where(
        AuditEvent.subject == f"application:{app.id}", AuditEvent.action == "application.appeal")).all())


def revise(session: Session, actor: str, app_id: int, now: dt.datetime | None = None) -> AccessApplication:
    """A deferred application becomes a draft again, as the next version (the last stays frozen)."""
    now = now or utcnow()
    app = get_application(session, app_id)
    step = check_transition(app, "revise")
    require_actor(session, actor, app, step)
    if app.outcome != Outcome.deferred.value:
        raise Conflict(f"only a deferred application can be revised; {app.id} was {app.outcome}")
    call = session.get(AccessCall, app.call_id)
    if not accepting(call, now):
        raise Conflict(f"call {call.slug!r} is not taking applications")
    app.version += 1
    app.outcome, app.outcome_reason, app.decided_at, app.decided_by, app.submitted_at = None, "", None, None, None
    return move(session, actor, app, "revise", now=now, details={"version": app.version})


def withdraw(session: Session, actor: str, app_id: int, now: dt.datetime | None = None) -> AccessApplication:
    app = get_application(session, app_id)
    step = check_transition(app, "withdraw")
    require_actor(session, actor, app, step)
    return move(session, actor, app, "withdraw", now=now)


def get_application(session: Session, app_id: int) -> AccessApplication:
    app = session.get(AccessApplication, app_id) if isinstance(app_id, int) else None
    if app is None:
        raise NotFound(f"unknown application {app_id!r}")
    return app


def list_applications(session: Session, call_slug: str | None = None, applicant: str | None = None) -> list[AccessApplication]:
    query = select(AccessApplication).order_by(AccessApplication.id)
    if call_slug is not None:
        query = query.where(AccessApplication.call_id == get_call(session, call_slug).id)
    if applicant is not None:
        query = query.where(AccessApplication.applicant_id == get_person(session, applicant).id)
    return list(session.exec(query).all())


def versions(session: Session, app: AccessApplication) -> list[AccessApplicationVersion]:
    return list(session.exec(select(AccessApplicationVersion).where(
        AccessApplicationVersion.application_id == app.id).order_by(AccessApplicationVersion.version)).all())


def application_json(session: Session, app: AccessApplication, *, content: bool = True) -> dict[str, Any]:
    call = session.get(AccessCall, app.call_id)
    applicant = session.get(Person, app.applicant_id)
    record = {
        "id": app.id, "call": call.slug, "applicant": applicant.username, "state": app.state, "outcome": app.outcome,
        "outcome_reason": app.outcome_reason, "tier": app.tier, "tokens_requested": app.tokens_requested,
        "version": app.version, "submitted_at": iso(app.submitted_at), "decided_at": iso(app.decided_at),
        "conditions": app.conditions,
    }
    if content:
        record["content"] = content_of(app)
        record["versions"] = [{"version": v.version, "content_sha256": v.content_sha256,
                               "terms_sha256": v.terms_sha256, "submitted_at": iso(v.submitted_at)}
                              for v in versions(session, app)]
    return record
