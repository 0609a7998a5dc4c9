"""Scholars' work volumes: one writable ~/work per person and project, so that copies made for one
project never follow the scholar into another.

A volume is *held* when its project is revoked or loses a dataset (it may hold copies of data the
project may no longer see): no session mounts it until an operator releases it (the copies were
checked, or may stay) or destroys it. Both are on the record. The Docker volume itself is created
by the spawner and removed by `enclave volume destroy`; this module keeps the registry's side."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.registry.clock import iso, utcnow
from enclave.errors import AccessDenied, BadInput, Conflict, NotFound
from enclave.registry.sizes import human_size
from enclave.registry.models import Person, Project, WorkVolume, WorkVolumeState
from enclave.registry.people import SYSTEM_ACTOR, require_role



def volume_name(template: str, username: str, project: str) -> str:
    """The Docker volume for `username`'s work in `project`. The template must name both, or two
    projects (or two people) would share one volume."""
    if "{username}" not in template or "{project}" not in template:
        raise BadInput(f"the work volume template {template!r} must contain both {{username}} and {{project}}")
    return template.format(username=username, project=project)


def volume_for_session(session: Session, person: Person, project: Project, name: str,
                       now: dt.datetime | None = None) -> WorkVolume:
    """The volume a new session of `person` in `project` mounts (recorded on first use), or
    AccessDenied while it is held."""
    volume = session.exec(select(WorkVolume).where(WorkVolume.person_id == person.id,
                                                   WorkVolume.project_id == project.id)).first()
    if volume is None:
        volume = WorkVolume(name=name, person_id=person.id, project_id=project.id)
        session.add(volume)
        session.flush()
        audit.append(session, actor=SYSTEM_ACTOR, action="volume.created", subject=f"volume:{name}",
                     details={"user": person.username, "project": project.slug})
        return volume
    if volume.state == WorkVolumeState.held:
        raise AccessDenied(f"your work volume for project {project.slug!r} is held since {iso(volume.state_changed_at)} "
                           f"({volume.state_reason}); an operator must release or destroy it before a new session "
                           "can start", "volume_held")
    if volume.state == WorkVolumeState.destroyed:
        _set_state(session, volume, SYSTEM_ACTOR, WorkVolumeState.open, "a new session after its destruction",
                   "volume.recreated", now)
    return volume


def hold_project_volumes(session: Session, actor: str, project: Project, reason: str,
                         now: dt.datetime | None = None) -> list[WorkVolume]:
    """Hold every open volume of `project` (called in the transaction of the revocation or the
    dataset withdrawal that makes it necessary)."""
    held = []
    for volume in session.exec(select(WorkVolume).where(WorkVolume.project_id == project.id,
                                                        WorkVolume.state == WorkVolumeState.open)).all():
        _set_state(session, volume, actor, WorkVolumeState.held, reason, "volume.held", now)
        held.append(volume)
    return held


def get_volume(session: Session, name: str) -> WorkVolume:
    volume = session.get(WorkVolume, name)
    if volume is None:
        raise NotFound(f"no work volume {name!r} (see `enclave volume list`)")
    return volume


def release(session: Session, actor: str, name: str, reason: str) -> WorkVolume:
    require_role(session, actor)
    if not reason.strip():
        raise BadInput("releasing a held volume needs a reason (--reason): say what was checked")
    volume = get_volume(session, name)
    if volume.state != WorkVolumeState.held:
        raise Conflict(f"work volume {name!r} is {volume.state}, not held")
    _set_state(session, volume, actor, WorkVolumeState.open, reason.strip(), "volume.released")
    return volume


def destroy(session: Session, actor: str, name: str, reason: str) -> WorkVolume:
    """Record the destruction (the caller removes the Docker volume in the same step)."""
    require_role(session, actor)
    if not reason.strip():
        raise BadInput("destroying a work volume needs a reason (--reason)")
    volume = get_volume(session, name)
    if volume.state == WorkVolumeState.destroyed:
        raise Conflict(f"work volume {name!r} is already destroyed")
    _set_state(session, volume, actor, WorkVolumeState.destroyed, reason.strip(), "volume.destroyed")
    return volume


def record_size(session: Session, name: str, size_bytes: int) -> None:
    volume = session.get(WorkVolume, name)
    if volume is not None and volume.size_bytes != size_bytes:
        volume.size_bytes = size_bytes
        session.add(volume)


def _set_state(session: Session, volume: WorkVolume, actor: str, state: str, reason: str, action: str,
               now: dt.datetime | None = None) -> None:
    before = volume.state
    volume.state, volume.state_reason, volume.state_changed_at = state, reason, now or utcnow()
    session.add(volume)
    session.flush()
    audit.append(session, actor=actor, action=action, subject=f"volume:{volume.name}",
                 details={"from": before, "to": state, "reason": reason})


def list_volumes(session: Session, project: Project | None = None) -> list[WorkVolume]:
    query = select(WorkVolume)
    if project is not None:
        query = query.where(WorkVolume.project_id == project.id)
    return list(session.exec(query.order_by(WorkVolume.name)).all())


def volume_json(session: Session, volume: WorkVolume) -> dict[str, Any]:
    person, project = session.get(Person, volume.person_id), session.get(Project, volume.project_id)
    return {"name": volume.name, "user": person.username, "project": project.slug, "state": volume.state,
            "reason": volume.state_reason, "since": iso(volume.state_changed_at), "size_bytes": volume.size_bytes,
            "size": human_size(volume.size_bytes)}
