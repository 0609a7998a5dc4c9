"""Notebook sessions, their browser egress and the scholars' work volumes.

A session row is written by the hub's spawner when a notebook container starts and closed when it
stops, so the record of who worked where, with what, and how many bytes went to their browser
survives the container (which is removed at stop). The byte counts are read on the host, from the
firewall's per-container counters, where notebook code cannot reach them."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import BigInteger, Column, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class NotebookSession(SQLModel, table=True):
    __tablename__ = "notebook_session"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    person_id: int = Field(foreign_key="person.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    server_name: str = Field(default="", max_length=255)
    mode: str = Field(default="docker", max_length=16)  # docker, or unisolated (developer mode)
    container_id: str = Field(default="", max_length=80)
    # The container's address on the enclave network: services bind requests from it to this
    # session's project, whatever token they carry.
    container_ip: str = Field(default="", sa_column=Column(String(64), nullable=False, index=True, server_default=""))
    # SHA-256 of the server's hub API token: that token acts for this session's project only.
    token_sha256: str = Field(default="", sa_column=Column(String(64), nullable=False, index=True, server_default=""))
    image: str = Field(default="", max_length=128)
    work_volume: str = Field(default="", max_length=255)
    # JSON: mounts and limits as started (also in the session.started audit event).
    spec: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    started_at: dt.datetime = Field(default_factory=utcnow)
    stopped_at: Optional[dt.datetime] = None
    stop_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    # Bytes the notebook server sent towards browsers, summed over the counter's readings
    # (`egress_counter` is the last raw reading, so a counter reset is noticed and not lost).
    egress_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    egress_counter: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    # The egress total last written to the audit chain.
    egress_audited: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    # Docker log timestamp up to which the lock-down extension's read log was collected.
    log_cursor: str = Field(default="", sa_column=Column(String(40), nullable=False, server_default=""))


class EgressDay(SQLModel, table=True):
    """Browser egress per project and UTC day: what the grant's view budget is charged against."""

    __tablename__ = "egress_day"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    day: str = Field(sa_column=Column(String(10), primary_key=True))
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class WorkVolumeState:
    open = "open"
    held = "held"  # the project was revoked or lost a dataset: no session may mount it
    destroyed = "destroyed"


class WorkVolume(SQLModel, table=True):
    """A scholar's writable ~/work for one project (a Docker volume). Held volumes stay out of
    reach until an operator releases or destroys them."""

    __tablename__ = "work_volume"
    __table_args__ = (UniqueConstraint("person_id", "project_id", name="uq_work_volume_person_project"),)

    name: str = Field(sa_column=Column(String(255), primary_key=True))
    person_id: int = Field(foreign_key="person.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    state: str = Field(default=WorkVolumeState.open, max_length=16)
    state_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    state_changed_at: dt.datetime = Field(default_factory=utcnow)
    created_at: dt.datetime = Field(default_factory=utcnow)
    # Last measured size (the warden measures it on the host).
    size_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
