"""Panel review: operators assign panel members, each member declares conflicts before opening an
application, members score every criterion of the call's rubric (1 best, 9 worst) with a comment
to the applicant and a private one for the panel.

A member at the same institution as anyone on the team is flagged automatically, and that flag
cannot be declared away. A conflicted member neither opens nor scores; a conflicted or absent
(not yet scored) member does not count towards the mean. Members' weighted means further apart
than the rubric's `disagreement_range` flag the application for discussion."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlmodel import Session, select

from enclave.errors import BadInput, Conflict, Forbidden
from enclave.registry import audit
from enclave.registry.applications import (
    application_json, check_transition, content_of, get_application, move, require_actor,
)
from enclave.registry.calls import Rubric, rubric_of
from enclave.registry.clock import iso, utcnow
from enclave.registry.models import (
    AccessApplication, AccessCall, ApplicationState as S, ConflictKind, PanelAssignment, PanelScore, Person, Role,
)
from enclave.registry.people import get_person, require_role

# States in which the panel may still be changed.
ASSIGNABLE = frozenset({S.submitted.value, S.screening.value, S.in_review.value})


def _institution(value: str) -> str:
    return " ".join(value.casefold().split())


def institution_clash(session: Session, app: AccessApplication, member: Person) -> str | None:
    """The team member who shares `member`'s institution, if any (empty affiliations never match)."""
    mine = _institution(member.affiliation)
    if not mine:
        return None
    for entry in content_of(app).get("team", []):
        other = session.exec(select(Person).where(Person.username == entry["username"])).first()
        if other is not None and _institution(other.affiliation) == mine:
            return other.username
    applicant = session.get(Person, app.applicant_id)
    return applicant.username if _institution(applicant.affiliation) == mine else None


def assign(session: Session, actor: str, app_id: int, usernames: list[str], now: dt.datetime | None = None) -> list[PanelAssignment]:
    now = now or utcnow()
    require_role(session, actor)
    app = get_application(session, app_id)
    if app.state not in ASSIGNABLE:
        raise Conflict(f"application {app.id} is {app.state}; a panel is assigned once it is submitted and before a decision")
    if not usernames:
        raise BadInput("name at least one panel member")
    team = {m["username"] for m in content_of(app).get("team", [])} | {session.get(Person, app.applicant_id).username}
    made = []
    for username in usernames:
        member = get_person(session, username)
        if not member.has_role(Role.panel):
            raise BadInput(f"{username!r} does not hold the panel role")
        if username in team:
            raise Conflict(f"{username!r} is on the application's team and cannot sit on its panel")
        if session.get(PanelAssignment, (app.id, member.id)) is not None:
            raise Conflict(f"{username!r} is already on the panel of application {app.id}")
        row = PanelAssignment(application_id=app.id, person_id=member.id, assigned_at=now, assigned_by=actor)
        clash = institution_clash(session, app, member)
        if clash is not None:
            # Flagged at once: the member never gets to declare it away.
            row.conflict, row.declared_at = ConflictKind.institution.value, now
            row.conflict_note = f"same institution as {clash}"
        session.add(row)
        session.flush()
        audit.append(session, actor=actor, action="panel.assign", subject=f"application:{app.id}",
                     details={"member": username, "conflict": row.conflict, "note": row.conflict_note})
        made.append(row)
    return made


def _assignment(session: Session, actor: str | None, app: AccessApplication) -> tuple[Person, PanelAssignment]:
    person = require_role(session, actor, Role.panel)
    row = session.get(PanelAssignment, (app.id, person.id))
    if row is None:
        raise Forbidden(f"{actor!r} is not on the panel of application {app.id}")
    return person, row


def declare(session: Session, actor: str, app_id: int, conflict: str = "", now: dt.datetime | None = None) -> PanelAssignment:
    """Declare a conflict (`conflict` says what it is) or none (empty). A flagged or declared
    conflict stays: a member may step out, never back in."""
    now = now or utcnow()
    app = get_application(session, app_id)
    person, row = _assignment(session, actor, app)
    if row.conflict not in (None, ConflictKind.none.value):
        raise Conflict(f"{actor!r} has a conflict with application {app.id} ({row.conflict_note or row.conflict}); it stands")
    clash = institution_clash(session, app, person)
    if clash is not None:
        row.conflict, row.conflict_note = ConflictKind.institution.value, f"same institution as {clash}"
    elif conflict.strip():
        row.conflict, row.conflict_note = ConflictKind.declared.value, conflict.strip()
    elif row.conflict == ConflictKind.none.value:
        return row
    else:
        row.conflict, row.conflict_note = ConflictKind.none.value, ""
    row.declared_at = now
    session.add(row)
    session.flush()
    audit.append(session, actor=actor, action="panel.declare", subject=f"application:{app.id}",
                 details={"conflict": row.conflict, "note": row.conflict_note})
    return row


def _require_clear(row: PanelAssignment, actor: str, app: AccessApplication, doing: str) -> None:
    if row.conflict is None:
        raise Conflict(f"declare your conflicts with application {app.id} before you {doing} it "
                       f"(`enclave panel declare {app.id} --none` or `--conflict TEXT`)")
    if row.conflict != ConflictKind.none.value:
        raise Forbidden(f"{actor!r} has a conflict with application {app.id} ({row.conflict_note}) and may not {doing} it")


def open_application(session: Session, actor: str, app_id: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """What a panel member reads, once they have declared no conflict; every opening is audited."""
    app = get_application(session, app_id)
    _, row = _assignment(session, actor, app)
    _require_clear(row, actor, app, "open")
    audit.append(session, actor=actor, action="panel.open", subject=f"application:{app.id}",
                 details={"version": app.version})
    call = session.get(AccessCall, app.call_id)
    return {**application_json(session, app), "rubric": [dataclasses.asdict(c) for c in rubric_of(call).criteria]}


def parse_scores(items: list[str]) -> dict[str, Any]:
    """`criterion=N` pairs, as typed (N checked against the rubric by `score`)."""
    scores: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"bad score {item!r}: use CRITERION=N")
        try:
            scores[name.strip()] = int(value)
        except ValueError:
            raise BadInput(f"bad score {item!r}: N must be a whole number from 1 to 9") from None
    return scores


def score(session: Session, actor: str, app_id: int, scores: dict[str, Any], comment: str = "", private: str = "",
          now: dt.datetime | None = None) -> PanelAssignment:
    """Record (or replace, before the decision) one member's scores on every criterion."""
    now = now or utcnow()
    app = get_application(session, app_id)
    person, row = _assignment(session, actor, app)
    _require_clear(row, actor, app, "score")
    if app.state != S.in_review.value:
        raise Conflict(f"application {app.id} is {app.state}; the panel scores it while it is in_review")
    rubric = rubric_of(session.get(AccessCall, app.call_id))
    names = [c.name for c in rubric.criteria]
    unknown = sorted(set(scores) - set(names))
    if unknown:
        raise BadInput(f"unknown criterion {unknown[0]!r}: the rubric has {', '.join(names)}")
    missing = [n for n in names if n not in scores]
    if missing:
        raise BadInput(f"score every criterion; missing {', '.join(missing)}")
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int) or not rubric.best <= value <= rubric.worst:
            raise BadInput(f"score for {name} must be a whole number from {rubric.best} (best) to {rubric.worst}, not {value}")
    for name in names:
        existing = session.get(PanelScore, (app.id, person.id, name))
        if existing is None:
            session.add(PanelScore(application_id=app.id, person_id=person.id, criterion=name, score=scores[name]))
        else:
            existing.score = scores[name]
            session.add(existing)
    row.comment_public, row.comment_private, row.scored_at = comment.strip(), private.strip(), now
    session.add(row)
    session.flush()
    audit.append(session, actor=actor, action="panel.score", subject=f"application:{app.id}", details={
        "scores": {n: scores[n] for n in names}, "comment_sha256": audit.sha256_text(row.comment_public),
        "private_sha256": audit.sha256_text(row.comment_private)})
    return row


def start_review(session: Session, actor: str, app_id: int, now: dt.datetime | None = None) -> AccessApplication:
    """screening -> in_review, once enough panel members without a conflict are assigned."""
    app = get_application(session, app_id)
    require_actor(session, actor, app, check_transition(app, "review"))
    rubric = rubric_of(session.get(AccessCall, app.call_id))
    clear = [r for r in _rows(session, app) if r.conflict in (None, ConflictKind.none.value)]
    need = rubric.panel_size(app.tier)
    if len(clear) < need:
        raise Conflict(f"application {app.id} ({app.tier}) needs {need} panel members without a conflict; it has {len(clear)}")
    return move(session, actor, app, "review", now=now, details={"panel": len(clear)})


def _rows(session: Session, app: AccessApplication) -> list[PanelAssignment]:
    return list(session.exec(select(PanelAssignment).where(PanelAssignment.application_id == app.id)
                             .order_by(PanelAssignment.person_id)).all())


@dataclasses.dataclass(frozen=True)
class PanelResult:
    """What the panel's scores add up to for one application."""

    counted: int                 # members who count: no conflict, every criterion scored
    member_means: tuple[float, ...]
    mean: float | None           # mean of the members' weighted means (None: fewer than `quorum`)
    spread: float                # best to worst member mean
    flagged: bool                # spread beyond the rubric's disagreement range
    quorum: int


def weighted_mean(rubric: Rubric, scores: dict[str, int]) -> float:
    total = sum(c.weight for c in rubric.criteria)
    return sum(c.weight * scores[c.name] for c in rubric.criteria) / total


def result(session: Session, app: AccessApplication, rubric: Rubric) -> PanelResult:
    names = {c.name for c in rubric.criteria}
    means = []
    for row in _rows(session, app):
        if row.conflict != ConflictKind.none.value:
            continue
        scores = {s.criterion: s.score for s in session.exec(select(PanelScore).where(
            PanelScore.application_id == app.id, PanelScore.person_id == row.person_id)).all()}
        if set(scores) >= names:
            means.append(weighted_mean(rubric, scores))
    quorum = rubric.min_members
    spread = (max(means) - min(means)) if means else 0.0
    mean = round(sum(means) / len(means), 6) if len(means) >= quorum else None
    return PanelResult(len(means), tuple(round(m, 6) for m in means), mean, round(spread, 6),
                       spread > rubric.disagreement_range, quorum)


def panel_json(session: Session, app: AccessApplication, *, private: bool) -> dict[str, Any]:
    """The panel as operators see it (`private`: names, notes, private comments) or as the
    applicant does (the summary and the comments addressed to them, unattributed)."""
    call = session.get(AccessCall, app.call_id)
    res = result(session, app, rubric_of(call))
    summary = {"counted": res.counted, "mean": res.mean, "spread": res.spread, "flagged": res.flagged}
    rows = _rows(session, app)
    if not private:
        return {**summary, "comments": [r.comment_public for r in rows if r.comment_public and r.scored_at]}
    return {**summary, "members": [{
        "member": session.get(Person, r.person_id).username, "conflict": r.conflict, "note": r.conflict_note,
        "declared_at": iso(r.declared_at), "scored_at": iso(r.scored_at), "comment": r.comment_public,
        "private": r.comment_private} for r in rows]}
