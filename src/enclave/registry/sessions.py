"""Notebook sessions on the record: started and stopped by the hub's spawner, their browser egress
counted by the warden from the host firewall, and the project a session's requests are bound to.

Browser egress is charged per project and UTC day against the grant's `view_bytes_per_day`: the
browser is a way out of the enclave around the airlock (contents API, kernel output), so it is
metered like the model is."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.registry.clock import iso, utcnow
from enclave.errors import NotFound
from enclave.registry.sizes import human_size
from enclave.registry.models import EgressDay, Grant, NotebookSession, Person, Project
from enclave.registry.people import SYSTEM_ACTOR, get_person
from enclave.registry.projects import get_project

# The audit chain gets a `session.egress` event whenever a session's total grows by this much since
# the last one (and a final total when the session stops): a record per session, not per packet.
AUDIT_STEP_BYTES = 1024**2


def day_of(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).date().isoformat()


def open_session(session: Session, *, username: str, project: str, mode: str, server_name: str = "",
                 container_id: str = "", container_ip: str = "", token_sha256: str = "", image: str = "",
                 work_volume: str = "", spec: dict[str, Any] | None = None) -> NotebookSession:
    """Record a started notebook server. An earlier session of the same server still open (its hub
    died before it could record the stop) is closed first."""
    person = get_person(session, username)
    proj = get_project(session, project)
    for stale in session.exec(select(NotebookSession).where(
            NotebookSession.person_id == person.id, NotebookSession.server_name == server_name,
            NotebookSession.stopped_at.is_(None))).all():
        close_session(session, stale.id, "superseded by a new start of the same server")
    record = NotebookSession(
        id=uuid.uuid4().hex, person_id=person.id, project_id=proj.id, server_name=server_name, mode=mode,
        container_id=container_id, container_ip=container_ip, token_sha256=token_sha256, image=image,
        work_volume=work_volume, spec=audit.canonical_json(spec or {}))
    session.add(record)
    session.flush()
    audit.append(session, actor=SYSTEM_ACTOR, action="session.started", subject=f"person:{username}", details={
        "session": record.id, "project": project, "server": server_name, "mode": mode, "image": image,
        "container": container_id, "address": container_ip, "work_volume": work_volume, **(spec or {})})
    return record


def get_session(session: Session, session_id: str) -> NotebookSession:
    record = session.get(NotebookSession, session_id)
    if record is None:
        matches = session.exec(select(NotebookSession).where(NotebookSession.id.startswith(session_id))).all() \
            if len(session_id) >= 6 else []
        if len(matches) != 1:
            raise NotFound(f"no notebook session {session_id!r}")
        record = matches[0]
    return record


def live_session_of(session: Session, username: str, server_name: str = "") -> NotebookSession | None:
    person = session.exec(select(Person).where(Person.username == username)).first()
    if person is None:
        return None
    return session.exec(select(NotebookSession).where(
        NotebookSession.person_id == person.id, NotebookSession.server_name == server_name,
        NotebookSession.stopped_at.is_(None)).order_by(NotebookSession.started_at.desc())).first()


def live_sessions(session: Session) -> list[NotebookSession]:
    return list(session.exec(select(NotebookSession).where(NotebookSession.stopped_at.is_(None))
                             .order_by(NotebookSession.started_at)).all())


def set_stop_reason(session: Session, session_id: str, reason: str) -> None:
    """Say why a session is about to be stopped (the warden, before it asks the hub to stop it), so
    that the spawner's record of the stop carries the reason."""
    record = session.get(NotebookSession, session_id)
    if record is not None and record.stopped_at is None:
        record.stop_reason = reason
        session.add(record)


def close_session(session: Session, session_id: str, reason: str = "", *, now: dt.datetime | None = None,
                  ) -> NotebookSession | None:
    """Record the stop (idempotent: a closed session stays as it was)."""
    record = session.get(NotebookSession, session_id)
    if record is None or record.stopped_at is not None:
        return record
    record.stopped_at = now or utcnow()
    record.stop_reason = record.stop_reason or reason or "stopped"
    session.add(record)
    person, project = session.get(Person, record.person_id), session.get(Project, record.project_id)
    audit.append(session, actor=SYSTEM_ACTOR, action="session.stopped", subject=f"person:{person.username}", details={
        "session": record.id, "project": project.slug, "server": record.server_name, "reason": record.stop_reason,
        "egress_bytes": record.egress_bytes})
    record.egress_audited = record.egress_bytes
    return record


def record_egress(session: Session, record: NotebookSession, counter: int, *, now: dt.datetime | None = None) -> int:
    """Take a new reading of the session's host byte counter; returns the bytes added. A reading
    below the last one means the counter started again (its rule was re-created): all of it is new."""
    now = now or utcnow()
    counter = max(0, int(counter))
    delta = counter - record.egress_counter if counter >= record.egress_counter else counter
    record.egress_counter = counter
    if delta <= 0:
        session.add(record)
        return 0
    record.egress_bytes += delta
    day = session.get(EgressDay, (record.project_id, day_of(now)))
    if day is None:
        day = EgressDay(project_id=record.project_id, day=day_of(now), bytes=0)
    day.bytes += delta
    session.add_all([record, day])
    if record.egress_bytes - record.egress_audited >= AUDIT_STEP_BYTES:
        _audit_egress(session, record)
    return delta


def restart_counter(session: Session, record: NotebookSession) -> None:
    """The session's counting rule was (re)installed at zero."""
    record.egress_counter = 0
    session.add(record)


def _audit_egress(session: Session, record: NotebookSession) -> None:
    person, project = session.get(Person, record.person_id), session.get(Project, record.project_id)
    audit.append(session, actor=SYSTEM_ACTOR, action="session.egress", subject=f"person:{person.username}", details={
        "session": record.id, "project": project.slug, "bytes": record.egress_bytes - record.egress_audited,
        "total_bytes": record.egress_bytes})
    record.egress_audited = record.egress_bytes
    session.add(record)


def egress_spent(session: Session, project_id: int, now: dt.datetime | None = None) -> int:
    day = session.get(EgressDay, (project_id, day_of(now or utcnow())))
    return day.bytes if day else 0


def view_budget_refusal(session: Session, project: Project, grant: Grant, now: dt.datetime | None = None) -> str | None:
    """Why no session of `project` may run now because of browser egress, or None."""
    spent = egress_spent(session, project.id, now)
    if spent < grant.view_bytes_per_day:
        return None
    return (f"project {project.slug!r} has spent today's browser egress budget ({human_size(spent)} of "
            f"{human_size(grant.view_bytes_per_day)} per day sent to browsers); it renews at 00:00 UTC")


def bound_session(session: Session, *, token_sha256: str | None = None, address: str | None = None,
                  ) -> NotebookSession | None:
    """The live session a request belongs to: the one whose hub token it carries, or the one whose
    container it comes from. Requests from a session act for that session's project only."""
    if token_sha256:
        found = session.exec(select(NotebookSession).where(
            NotebookSession.token_sha256 == token_sha256, NotebookSession.stopped_at.is_(None))).first()
        if found is not None:
            return found
    if address:
        return session.exec(select(NotebookSession).where(
            NotebookSession.container_ip == address, NotebookSession.mode == "docker",
            NotebookSession.stopped_at.is_(None))).first()
    return None


def list_sessions(session: Session, *, live_only: bool = False, project: str | None = None,
                  username: str | None = None, limit: int = 200) -> list[NotebookSession]:
    query = select(NotebookSession)
    if live_only:
        query = query.where(NotebookSession.stopped_at.is_(None))
    if project:
        query = query.where(NotebookSession.project_id == get_project(session, project).id)
    if username:
        query = query.where(NotebookSession.person_id == get_person(session, username).id)
    return list(session.exec(query.order_by(NotebookSession.started_at.desc()).limit(limit)).all())


def session_json(session: Session, record: NotebookSession) -> dict[str, Any]:
    person, project = session.get(Person, record.person_id), session.get(Project, record.project_id)
    return {
        "id": record.id, "user": person.username, "project": project.slug, "server": record.server_name,
        "mode": record.mode, "state": "live" if record.stopped_at is None else "stopped",
        "started_at": iso(record.started_at), "stopped_at": iso(record.stopped_at), "stop_reason": record.stop_reason,
        "egress_bytes": record.egress_bytes, "egress": human_size(record.egress_bytes),
        "container": record.container_id[:12], "address": record.container_ip, "image": record.image,
        "work_volume": record.work_volume, "spec": json.loads(record.spec or "{}"),
    }
