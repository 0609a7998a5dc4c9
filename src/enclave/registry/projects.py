"""Projects, their members, and the moves of the project state machine."""

from __future__ import annotations

import datetime as dt
import re

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.registry.clock import iso, last_day, utcnow
from enclave.errors import BadInput, NotFound, Conflict
from enclave.registry.lifecycle import EXPIRABLE, check_transition, require_live, status_of
from enclave.registry.models import Membership, Person, Project, ProjectStatus, Role
from enclave.registry.people import SYSTEM_ACTOR, get_person, require_role
from enclave.registry.volumes import hold_project_volumes

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
# The version of the terms of use a PI accepts when a project is recorded.
CURRENT_TERMS_VERSION = "2026.1"


def get_project(session: Session, slug: str) -> Project:
    project = session.exec(select(Project).where(Project.slug == slug)).first()
    if project is None:
        raise NotFound(f"unknown project {slug!r}")
    return project


def create_project(
    session: Session, actor: str, slug: str, title: str, pi: str, purpose: str,
    terms_version: str = CURRENT_TERMS_VERSION,
) -> Project:
    require_role(session, actor)
    if not SLUG_RE.match(slug or ""):
        raise BadInput(f"bad project slug {slug!r}: use 2-63 lower-case letters, digits and '-'")
    if not title.strip():
        raise BadInput("a project needs a title (--title)")
    if not purpose.strip():
        raise BadInput("a project needs a stated purpose (--purpose)")
    pi_person = get_person(session, pi)
    if not pi_person.has_role(Role.scholar):
        raise BadInput(f"the PI {pi!r} must hold the scholar role")
    if session.exec(select(Project).where(Project.slug == slug)).first():
        raise Conflict(f"project {slug!r} already exists")
    project = Project(
        slug=slug, title=title.strip(), purpose=purpose.strip(), pi_id=pi_person.id,
        terms_version=terms_version, created_by=actor,
    )
    session.add(project)
    session.flush()
    session.add(Membership(project_id=project.id, person_id=pi_person.id, added_by=actor))
    audit.append(
        session, actor=actor, action="project.create", subject=f"project:{slug}",
        details={"title": project.title, "pi": pi, "purpose": project.purpose, "terms_version": terms_version},
    )
    return project


def transition(
    session: Session, actor: str, slug: str, action: str, *,
    reason: str = "", until: dt.datetime | None = None, now: dt.datetime | None = None,
) -> Project:
    """Move a project through the state machine, recording who did it and why."""
    now = now or utcnow()
    project = get_project(session, slug)
    if action == "expire":
        if actor != SYSTEM_ACTOR:
            raise BadInput("projects expire by time; to end one early use close or revoke")
    else:
        require_role(session, actor)
    current = ProjectStatus(project.status)
    if action != "expire" and status_of(project, now) is ProjectStatus.expired and current in EXPIRABLE:
        # Time ran out before anyone recorded it: record it now, then refuse with the truth.
        _apply(session, project, check_transition(slug, current, "expire"), SYSTEM_ACTOR, "expiry date reached", None, now)
        current = ProjectStatus.expired
    step = check_transition(slug, current, action)
    if step.needs_reason and not reason.strip():
        raise BadInput(f"{action} needs a reason (--reason)")
    if action == "approve":
        if until is None:
            raise BadInput("approval needs an end date (--until YYYY-MM-DD)")
        if until <= now:
            raise BadInput(f"the end date {last_day(until)} is not in the future")
    return _apply(session, project, step, actor, reason.strip(), until, now)


def _apply(session, project, step, actor, reason, until, now) -> Project:
    before = project.status
    project.status = step.target.value
    project.status_reason = reason
    project.updated_at = now
    details = {"from": before, "to": step.target.value}
    if reason:
        details["reason"] = reason
    if step.action == "approve":
        project.approved_by, project.approved_at, project.expires_at = actor, now, until
        details["expires_at"] = iso(until)
    session.add(project)
    session.flush()
    audit.append(session, actor=actor, action=f"project.{step.action}", subject=f"project:{project.slug}", details=details)
    if step.target is ProjectStatus.revoked:
        # Copies of the project's data in its members' work volumes stay out of reach, also if
        # the project is ever reinstated, until an operator has looked at them.
        hold_project_volumes(session, actor, project, f"project revoked: {reason}" if reason else "project revoked", now)
    return project


def extend(session: Session, actor: str, slug: str, until: dt.datetime, now: dt.datetime | None = None) -> Project:
    """Move the end date of a live project (renewals happen; expired projects stay expired)."""
    now = now or utcnow()
    require_role(session, actor)
    project = get_project(session, slug)
    status = status_of(project, now)
    if status not in EXPIRABLE:
        raise Conflict(f"cannot extend project {slug!r}: it is {status.value}")
    if until <= now:
        raise BadInput(f"the end date {last_day(until)} is not in the future")
    before = project.expires_at
    project.expires_at, project.updated_at = until, now
    session.add(project)
    audit.append(session, actor=actor, action="project.extend", subject=f"project:{slug}",
                 details={"from": iso(before), "to": iso(until)})
    return project


def expire_due(session: Session, now: dt.datetime | None = None) -> list[str]:
    """Record the expiry of every project whose end date has passed. Safe to run any time."""
    now = now or utcnow()
    due = session.exec(
        select(Project).where(Project.status.in_([s.value for s in EXPIRABLE]), Project.expires_at <= now)
    ).all()
    for project in due:
        transition(session, SYSTEM_ACTOR, project.slug, "expire", reason="expiry date reached", now=now)
    return [p.slug for p in due]


def add_member(session: Session, actor: str, slug: str, username: str, now: dt.datetime | None = None) -> Membership:
    require_role(session, actor)
    project = get_project(session, slug)
    require_live(project, f"add {username!r}", now)
    person = get_person(session, username)
    if not person.has_role(Role.scholar):
        raise BadInput(f"{username!r} must hold the scholar role to join a project")
    if session.get(Membership, (project.id, person.id)):
        raise Conflict(f"{username!r} is already a member of {slug!r}")
    membership = Membership(project_id=project.id, person_id=person.id, added_by=actor)
    session.add(membership)
    session.flush()
    audit.append(session, actor=actor, action="member.add", subject=f"project:{slug}", details={"user": username})
    return membership


def remove_member(session: Session, actor: str, slug: str, username: str) -> None:
    require_role(session, actor)
    project = get_project(session, slug)
    person = get_person(session, username)
    membership = session.get(Membership, (project.id, person.id))
    if membership is None:
        raise NotFound(f"{username!r} is not a member of {slug!r}")
    if person.id == project.pi_id:
        raise Conflict(f"{username!r} is the PI of {slug!r} and cannot be removed")
    session.delete(membership)
    session.flush()
    audit.append(session, actor=actor, action="member.remove", subject=f"project:{slug}", details={"user": username})


def members(session: Session, project: Project) -> list[Person]:
    return list(session.exec(
        select(Person).join(Membership, Membership.person_id == Person.id)
        .where(Membership.project_id == project.id).order_by(Person.username)
    ).all())


def list_projects(session: Session) -> list[Project]:
    return list(session.exec(select(Project).order_by(Project.slug)).all())
