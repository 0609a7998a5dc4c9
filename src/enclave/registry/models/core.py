"""The registry's core tables: people, projects, memberships, datasets, grants, keys,
credentials and the audit chain."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Optional

from sqlalchemy import BigInteger, Column, Float, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class Role(str, enum.Enum):
    scholar = "scholar"
    reviewer = "reviewer"
    operator = "operator"
    # May write applications for access (and nothing else until an award makes them a scholar).
    applicant = "applicant"
    # May sit on the panels that score applications.
    panel = "panel"


class ProjectStatus(str, enum.Enum):
    proposed = "proposed"
    approved = "approved"
    suspended = "suspended"
    revoked = "revoked"
    expired = "expired"
    closed = "closed"
    rejected = "rejected"


class Sensitivity(str, enum.Enum):
    public = "public"
    internal = "internal"
    confidential = "confidential"
    restricted = "restricted"


class Person(SQLModel, table=True):
    __tablename__ = "person"

    id: Optional[int] = Field(default=None, primary_key=True)
    # The JupyterHub user name: the hub's identity and ours are the same string.
    username: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    name: str
    email: str
    affiliation: str = ""
    # Sorted, comma-separated subset of Role values; see `role_set`.
    roles: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)

    @property
    def role_set(self) -> set[str]:
        return {r for r in self.roles.split(",") if r}

    def has_role(self, role: Role) -> bool:
        return role.value in self.role_set


class Project(SQLModel, table=True):
    __tablename__ = "project"

    id: Optional[int] = Field(default=None, primary_key=True)
    slug: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    title: str
    purpose: str = Field(sa_column=Column(Text, nullable=False))
    pi_id: int = Field(foreign_key="person.id")
    # The version of the enclave's terms of use the PI accepted for this project.
    terms_version: str
    status: str = Field(default=ProjectStatus.proposed.value, max_length=16)
    status_reason: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)
    created_by: str
    approved_by: Optional[str] = None
    approved_at: Optional[dt.datetime] = None
    expires_at: Optional[dt.datetime] = None
    updated_at: dt.datetime = Field(default_factory=utcnow)


class Membership(SQLModel, table=True):
    __tablename__ = "membership"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    person_id: int = Field(foreign_key="person.id", primary_key=True)
    added_at: dt.datetime = Field(default_factory=utcnow)
    added_by: str


class Dataset(SQLModel, table=True):
    __tablename__ = "dataset"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(128), unique=True, nullable=False))
    path: str
    sensitivity: str = Field(default=Sensitivity.confidential.value, max_length=16)
    # Comma-separated column names that, combined, can single out a person (ZIP, birth date, sex...).
    quasi_identifiers: str = ""
    # Fingerprint at registration, so a swapped file is noticed (directories: none).
    sha256: Optional[str] = None
    size_bytes: Optional[int] = Field(default=None, sa_column=Column(BigInteger))
    registered_at: dt.datetime = Field(default_factory=utcnow)
    registered_by: str

    @property
    def quasi_identifier_list(self) -> list[str]:
        return [c for c in self.quasi_identifiers.split(",") if c]


class DatasetAccess(SQLModel, table=True):
    __tablename__ = "dataset_access"

    dataset_id: int = Field(foreign_key="dataset.id", primary_key=True)
    project_id: int = Field(foreign_key="project.id", primary_key=True)
    granted_at: dt.datetime = Field(default_factory=utcnow)
    granted_by: str


class Grant(SQLModel, table=True):
    """What a project may consume. One per project; changed only through `grants.set_grant`."""

    __tablename__ = "grant"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    tokens_total: int = Field(sa_column=Column(BigInteger, nullable=False))
    tokens_per_day: int = Field(sa_column=Column(BigInteger, nullable=False))
    requests_per_minute: int
    max_tokens_per_request: int
    epsilon: float = Field(sa_column=Column(Float, nullable=False))
    delta: float = Field(sa_column=Column(Float, nullable=False))
    cpu: float = Field(sa_column=Column(Float, nullable=False))
    mem_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    session_hours: float = Field(sa_column=Column(Float, nullable=False))
    export_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Calls that return probabilities (score, next-token) per UTC day: their own cap, because
    # enough of them reconstruct full logit vectors (the model-stealing attacks of Carlini et al.
    # 2024 need thousands of full vectors; this keeps them out of reach of any one grant).
    logprob_calls_per_day: int = Field(default=2000, sa_column=Column(Integer, nullable=False, server_default="2000"))
    # Bytes the project's notebook servers may send towards browsers per UTC day (counted on the
    # host): the browser is an egress channel around the airlock, so it has a budget of its own.
    view_bytes_per_day: int = Field(default=128 * 1024**2, sa_column=Column(
        BigInteger, nullable=False, server_default=str(128 * 1024**2)))
    # Size limit of each member's work volume for this project.
    work_bytes: int = Field(default=2 * 1024**3, sa_column=Column(BigInteger, nullable=False,
                                                                  server_default=str(2 * 1024**3)))
    # What the model API lets the project do (`enclave.registry.grants.TIERS`, each tier including
    # the ones before it): sample (generate), score (also score and next-token, under the cap
    # above), internals (also activations), finetune (reserved for DP fine-tuning).
    tier: str = Field(default="score", sa_column=Column(String(16), nullable=False, server_default="score"))
    # Bytes of activations (float16) the project may read per UTC day at the internals tier: enough
    # activation pairs recover weight matrices by regression, so they have a budget of their own.
    activation_bytes_per_day: int = Field(default=16 * 1024**2, sa_column=Column(
        BigInteger, nullable=False, server_default=str(16 * 1024**2)))
    updated_at: dt.datetime = Field(default_factory=utcnow)
    updated_by: str



class GrantModelTier(SQLModel, table=True):
    """A project's tier for one model, where it differs from its grant's tier (which applies to
    every other model): e.g. `internals` on a small model, `sample` on a large one. Changed only
    through `grants.set_model_tier`."""

    __tablename__ = "grant_model_tier"
    __table_args__ = (UniqueConstraint("project_id", "model"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    model: str = Field(sa_column=Column(String(200), nullable=False))
    tier: str = Field(sa_column=Column(String(16), nullable=False))
    set_by: str
    set_at: dt.datetime = Field(default_factory=utcnow)

class ApiKey(SQLModel, table=True):
    """A bearer key for the model API. Only a SHA-256 of the secret is kept (keys are 256-bit
    random, so a slow hash buys nothing); the plaintext is shown once at issue."""

    __tablename__ = "api_key"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    person_id: int = Field(foreign_key="person.id")
    project_id: int = Field(foreign_key="project.id")
    secret_sha256: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)
    created_by: str
    expires_at: dt.datetime
    revoked_at: Optional[dt.datetime] = None
    revoked_by: Optional[str] = None


class Credential(SQLModel, table=True):
    """A hub login password for the embedded setup (an upstream authenticator needs none).
    Only a scrypt hash is kept; operators set or reset it from the CLI."""

    __tablename__ = "credential"

    person_id: int = Field(foreign_key="person.id", primary_key=True)
    password_hash: str = Field(sa_column=Column(String(256), nullable=False))
    set_at: dt.datetime = Field(default_factory=utcnow)
    set_by: str


class AuditEvent(SQLModel, table=True):
    """One link of the hash chain. `seq` is assigned by `audit.append` under a lock, never by the
    database, so that it is dense (1, 2, 3, ...) and a gap means a deleted event."""

    __tablename__ = "audit_event"
    __table_args__ = (UniqueConstraint("prev_hash", name="uq_audit_event_prev_hash"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    time: str = Field(sa_column=Column(String(32), nullable=False))
    actor: str = Field(sa_column=Column(String(64), nullable=False))
    # Indexed: the warden, the review service (former members) and operators look events up by them.
    action: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    subject: str = Field(sa_column=Column(String(256), nullable=False, index=True))
    # Canonical JSON text; the hash covers this exact string.
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(sa_column=Column(String(64), nullable=False))
    hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
