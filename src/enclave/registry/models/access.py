"""Access by competitive application: calls for applications, the applications and their frozen
versions, panel assignments and scores, awards with their tranches, and progress or final reports.

A call copies its rubric, policy and terms into its own row when it opens, so that changing the
shipped files later never changes how a running call is judged."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Optional

from sqlalchemy import BigInteger, Column, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class Tier(str, enum.Enum):
    """What a grant lets a project do with the model, least access first."""

    sample = "sample"
    score = "score"
    internals = "internals"
    finetune = "finetune"


class CallState(str, enum.Enum):
    open = "open"
    closed = "closed"


class ApplicationState(str, enum.Enum):
    draft = "draft"
    submitted = "submitted"
    screening = "screening"
    in_review = "in_review"
    decided = "decided"
    appealed = "appealed"
    withdrawn = "withdrawn"


class Outcome(str, enum.Enum):
    approved = "approved"
    approved_subject_to = "approved_subject_to"
    deferred = "deferred"
    rejected = "rejected"


class ConflictKind(str, enum.Enum):
    none = "none"
    declared = "declared"
    institution = "institution"


class ReportKind(str, enum.Enum):
    progress = "progress"
    final = "final"


class AccessCall(SQLModel, table=True):
    __tablename__ = "access_call"

    id: Optional[int] = Field(default=None, primary_key=True)
    slug: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    title: str
    state: str = Field(default=CallState.open.value, max_length=16)
    opens_at: dt.datetime = Field(default_factory=utcnow)
    closes_at: dt.datetime
    pool_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Sorted, comma-separated Tier values the call offers.
    tiers: str
    # The most one award may get, besides the tier's cap (None: the tier's cap only).
    max_award: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # The rubric file as loaded (canonical JSON), its declared version and the file's SHA-256.
    rubric: str = Field(sa_column=Column(Text, nullable=False))
    rubric_version: str = Field(sa_column=Column(String(64), nullable=False))
    rubric_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    terms: str = Field(sa_column=Column(Text, nullable=False))
    terms_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)
    created_by: str
    closed_at: Optional[dt.datetime] = None
    closed_by: Optional[str] = None


class AccessApplication(SQLModel, table=True):
    __tablename__ = "access_application"

    id: Optional[int] = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="access_call.id", index=True)
    applicant_id: int = Field(foreign_key="person.id", index=True)
    state: str = Field(default=ApplicationState.draft.value, max_length=16)
    outcome: Optional[str] = Field(default=None, max_length=24)
    outcome_reason: str = ""
    # The working copy (canonical JSON of the fields); frozen copies live in access_application_version.
    content: str = Field(sa_column=Column(Text, nullable=False))
    version: int = 1
    tier: str = Field(max_length=16)
    tokens_requested: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Conditions an operator attached during review; an award then is approved_subject_to them.
    conditions: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    submitted_at: Optional[dt.datetime] = None
    decided_at: Optional[dt.datetime] = None
    decided_by: Optional[str] = None


class AccessApplicationVersion(SQLModel, table=True):
    """A submitted application exactly as submitted: never changed, never deleted."""

    __tablename__ = "access_application_version"

    application_id: int = Field(foreign_key="access_application.id", primary_key=True)
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    content: str = Field(sa_column=Column(Text, nullable=False))
    content_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    terms_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    submitted_at: dt.datetime = Field(default_factory=utcnow)
    submitted_by: str


class PanelAssignment(SQLModel, table=True):
    __tablename__ = "panel_assignment"

    application_id: int = Field(foreign_key="access_application.id", primary_key=True)
    person_id: int = Field(foreign_key="person.id", primary_key=True)
    assigned_at: dt.datetime = Field(default_factory=utcnow)
    assigned_by: str
    # None until the member has declared; a member with a conflict neither opens nor scores.
    conflict: Optional[str] = Field(default=None, max_length=16)
    conflict_note: str = ""
    declared_at: Optional[dt.datetime] = None
    comment_public: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    comment_private: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    scored_at: Optional[dt.datetime] = None


class PanelScore(SQLModel, table=True):
    __tablename__ = "panel_score"

    application_id: int = Field(foreign_key="access_application.id", primary_key=True)
    person_id: int = Field(foreign_key="person.id", primary_key=True)
    criterion: str = Field(sa_column=Column(String(64), primary_key=True))
    score: int


class AccessAward(SQLModel, table=True):
    __tablename__ = "access_award"
    __table_args__ = (UniqueConstraint("application_id", name="uq_access_award_application"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="access_call.id", index=True)
    application_id: int = Field(foreign_key="access_application.id")
    # The one project these tokens belong to, for good: there is no column to move them by.
    project_id: int = Field(foreign_key="project.id", unique=True)
    tier: str = Field(max_length=16)
    tokens_awarded: int = Field(sa_column=Column(BigInteger, nullable=False))
    tranche_first: int = Field(sa_column=Column(BigInteger, nullable=False))
    tranche_second: int = Field(sa_column=Column(BigInteger, nullable=False))
    second_released_at: Optional[dt.datetime] = None
    second_released_by: Optional[str] = None
    supplement_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    supplement_at: Optional[dt.datetime] = None
    created_at: dt.datetime = Field(default_factory=utcnow)
    created_by: str


class AwardReport(SQLModel, table=True):
    __tablename__ = "award_report"

    id: Optional[int] = Field(default=None, primary_key=True)
    award_id: int = Field(foreign_key="access_award.id", index=True)
    kind: str = Field(max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    filed_at: dt.datetime = Field(default_factory=utcnow)
    filed_by: str
