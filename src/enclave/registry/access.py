"""May this person use the enclave for this project right now? One function answers, for the
gateway, the hub and the review service alike, and it reads the registry every time so that a
revocation bites on the very next request."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlmodel import Session, select

from enclave.registry.clock import iso, utcnow
from enclave.errors import AccessDenied
from enclave.registry.lifecycle import status_of
from enclave.registry.models import Grant, Membership, Person, Project, ProjectStatus, Role


@dataclasses.dataclass(frozen=True)
class Access:
    person: Person
    project: Project
    grant: Grant


_REFUSALS = {
    ProjectStatus.proposed: ("is not approved yet", "not_approved"),
    ProjectStatus.rejected: ("was rejected", "rejected"),
    ProjectStatus.suspended: ("is suspended", "suspended"),
    ProjectStatus.revoked: ("was revoked", "revoked"),
    ProjectStatus.closed: ("is closed", "closed"),
}


def resolve(session: Session, username: str, slug: str | None = None, now: dt.datetime | None = None) -> Access:
    """The person's access through `slug` (or through their only live project), or AccessDenied."""
    now = now or utcnow()
    person = session.exec(select(Person).where(Person.username == username)).first()
    if person is None:
        raise AccessDenied(f"{username!r} is not registered in the enclave", "unknown_user")
    if not person.has_role(Role.scholar):
        raise AccessDenied(f"{username!r} does not hold the scholar role", "not_scholar")
    projects = session.exec(
        select(Project).join(Membership, Membership.project_id == Project.id).where(Membership.person_id == person.id)
    ).all()
    if slug is not None:
        project = next((p for p in projects if p.slug == slug), None)
        if project is None:
            raise AccessDenied(f"{username!r} is not a member of a project {slug!r}", "not_member")
    else:
        live = [p for p in projects if status_of(p, now) is ProjectStatus.approved]
        if not projects:
            raise AccessDenied(f"{username!r} is not a member of any project", "no_project")
        if len(projects) == 1:
            live = list(projects)  # one project: let its own state give the reason below
        if not live:
            states = ", ".join(sorted(f"{p.slug}: {status_of(p, now).value}" for p in projects))
            raise AccessDenied(f"{username!r} has no approved project ({states})", "no_project")
        if len(live) > 1:
            names = ", ".join(sorted(p.slug for p in live))
            raise AccessDenied(f"{username!r} is in several projects ({names}): say which one", "project_ambiguous")
        project = live[0]
    status = status_of(project, now)
    if status is ProjectStatus.expired:
        raise AccessDenied(f"project {project.slug!r} expired at {iso(project.expires_at)}", "expired")
    if status is not ProjectStatus.approved:
        words, reason = _REFUSALS[status]
        suffix = f": {project.status_reason}" if project.status_reason else ""
        raise AccessDenied(f"project {project.slug!r} {words}{suffix}", reason)
    grant = session.get(Grant, project.id)
    if grant is None:
        raise AccessDenied(f"project {project.slug!r} has no grant", "no_grant")
    return Access(person=person, project=project, grant=grant)
