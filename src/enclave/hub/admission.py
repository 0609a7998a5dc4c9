"""The registry's answers to the hub's questions: may this person log in, may they spawn, and
with what (project, grant, datasets). Kept apart from the JupyterHub classes so that the
authenticator, the spawner and the warden ask exactly the same questions."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlmodel import Session

from enclave.registry.access import Access, resolve
from enclave.registry.datasets import datasets_for
from enclave.errors import AccessDenied
from enclave.registry.models import Membership, Project, ProjectStatus, Role
from enclave.registry.people import find_person
from enclave.registry.lifecycle import status_of
from enclave.registry.sessions import view_budget_refusal
from enclave.registry.volumes import volume_for_session, volume_name

# Who may log in to the hub at all: scholars to work, reviewers to reach the review UI through
# hub OAuth, operators for the admin page, applicants and panel members to reach the access pages.
LOGIN_ROLES = frozenset({Role.scholar.value, Role.reviewer.value, Role.operator.value, Role.applicant.value,
                         Role.panel.value})


@dataclasses.dataclass(frozen=True)
class LoginDecision:
    allowed: bool
    admin: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class DatasetMount:
    name: str
    host_path: Path
    is_dir: bool


@dataclasses.dataclass(frozen=True)
class SessionPlan:
    """What one notebook session gets: the project it works for and the grant's limits."""

    username: str
    project: str
    cpu: float
    mem_bytes: int
    session_hours: float
    datasets: tuple[DatasetMount, ...]
    work_volume: str = ""  # the Docker volume of ~/work ("" in developer mode)
    work_bytes: int = 0
    view_bytes_per_day: int = 0

    def spec(self) -> dict:
        """What the session is started with, for its record and audit event."""
        return {"mounts": [{"dataset": m.name, "path": str(m.host_path)} for m in self.datasets],
                "limits": {"cpu": self.cpu, "mem_bytes": self.mem_bytes, "session_hours": self.session_hours,
                           "work_bytes": self.work_bytes, "view_bytes_per_day": self.view_bytes_per_day}}


def login_decision(session: Session, username: str, roles: frozenset[str] = LOGIN_ROLES) -> LoginDecision:
    person = find_person(session, username)
    if person is None:
        return LoginDecision(False, False, f"{username!r} is not registered in the enclave")
    held = person.role_set & set(roles)
    if not held:
        return LoginDecision(False, False, f"{username!r} holds none of the roles that may log in ({', '.join(sorted(roles))})")
    return LoginDecision(True, person.has_role(Role.operator), "ok")


def live_projects(session: Session, username: str) -> list[str]:
    """Slugs of the approved, unexpired projects the person belongs to (for the spawn form)."""
    from sqlmodel import select

    person = find_person(session, username)
    if person is None:
        return []
    projects = session.exec(
        select(Project).join(Membership, Membership.project_id == Project.id).where(Membership.person_id == person.id)
    ).all()
    return sorted(p.slug for p in projects if status_of(p) is ProjectStatus.approved)


def session_plan(session: Session, username: str, project: str | None, volume_template: str = "") -> SessionPlan:
    """The plan for a spawn, or AccessDenied with the registry's reason. With a volume template,
    the scholar's work volume for the project is recorded (and refused while it is held)."""
    access: Access = resolve(session, username, project)
    spent = view_budget_refusal(session, access.project, access.grant)
    if spent:
        raise AccessDenied(spent, "view_budget")
    volume = ""
    if volume_template:
        volume = volume_for_session(session, access.person, access.project,
                                    volume_name(volume_template, username, access.project.slug)).name
    mounts = []
    for dataset in datasets_for(session, access.project):
        path = Path(dataset.path)
        if not path.exists():
            # A registered dataset that vanished is an operator's problem; the scholar is told.
            raise AccessDenied(f"dataset {dataset.name!r} is missing on the host ({path})", "dataset_missing")
        mounts.append(DatasetMount(dataset.name, path.resolve(), path.is_dir()))
    grant = access.grant
    return SessionPlan(username=username, project=access.project.slug, cpu=grant.cpu, mem_bytes=grant.mem_bytes,
                       session_hours=grant.session_hours, datasets=tuple(mounts), work_volume=volume,
                       work_bytes=grant.work_bytes, view_bytes_per_day=grant.view_bytes_per_day)
