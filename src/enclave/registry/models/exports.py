"""The output-review tables: export requests, their files, findings, reviews, comments, releases.

They live in the registry database (migration 0004) so that a request, its audit event and the
registry's access decision commit in one transaction. Files, findings, reviews and comments are
append-only (database triggers refuse UPDATE and DELETE): a resubmission adds a new *version* of
the request's files instead of rewriting the old ones, so the history a reviewer saw is never lost.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Optional

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class ExportState(str, enum.Enum):
    submitted = "submitted"  # files in quarantine, checks not started
    checking = "checking"  # the automated checks are running
    awaiting_review = "awaiting_review"  # findings recorded; reviewers decide
    changes_requested = "changes_requested"  # back with the author, who may resubmit
    rejected = "rejected"
    approved = "approved"  # enough independent approvals; release pending
    released = "released"  # copied to the release store with a signed manifest
    withdrawn = "withdrawn"


class Decision(str, enum.Enum):
    approve = "approve"
    request_changes = "request_changes"
    reject = "reject"


class Visibility(str, enum.Enum):
    public = "public"  # the author sees it
    private = "private"  # reviewers only


# Tables that only ever grow (the migration installs the triggers).
APPEND_ONLY_TABLES = ("export_file", "export_finding", "export_review", "export_comment")


class ExportRequest(SQLModel, table=True):
    __tablename__ = "export_request"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: int = Field(sa_column=Column(Integer, ForeignKey("project.id"), nullable=False, index=True))
    author_id: int = Field(sa_column=Column(Integer, ForeignKey("person.id"), nullable=False, index=True))
    state: str = Field(sa_column=Column(String(24), nullable=False, index=True))
    # Resubmission round: 1 at submission, +1 for each resubmission after changes were requested.
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    justification: str = Field(sa_column=Column(Text, nullable=False))
    context: str = Field(default="", sa_column=Column(Text, nullable=False))
    total_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Filled in by the checks of the current version.
    verdict: Optional[str] = Field(default=None, sa_column=Column(String(16), nullable=True))
    approvals_needed: Optional[int] = Field(default=None, sa_column=Column(Integer, nullable=True))
    policy_version: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    policy_sha256: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)


class ExportFile(SQLModel, table=True):
    """One file of one version of a request. The bytes live in the quarantine under `sha256`."""

    __tablename__ = "export_file"
    __table_args__ = (UniqueConstraint("request_id", "version", "name", name="uq_export_file_name"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(32), ForeignKey("export_request.id"), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)


class ExportFinding(SQLModel, table=True):
    """A finding of the automated checks on one version (`review.findings.Finding`, stored)."""

    __tablename__ = "export_finding"

    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(32), ForeignKey("export_request.id"), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    check: str = Field(sa_column=Column(String(64), nullable=False))
    severity: str = Field(sa_column=Column(String(8), nullable=False))
    file: str = Field(sa_column=Column(Text, nullable=False))
    location: str = Field(sa_column=Column(Text, nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))
    # Canonical JSON of Finding.evidence: reviewers only (it may quote protected records).
    evidence: str = Field(sa_column=Column(Text, nullable=False))


class ExportReview(SQLModel, table=True):
    """A reviewer's decision. An approval is recorded once per file it covers, with the file's
    hash, so that changing a file (and only that file) takes its approvals away."""

    __tablename__ = "export_review"

    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(32), ForeignKey("export_request.id"), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    reviewer_id: int = Field(sa_column=Column(Integer, ForeignKey("person.id"), nullable=False))
    decision: str = Field(sa_column=Column(String(24), nullable=False))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    file_name: Optional[str] = Field(default=None, sa_column=Column(String(255), nullable=True))
    file_sha256: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    created_at: dt.datetime = Field(default_factory=utcnow)


class ExportComment(SQLModel, table=True):
    __tablename__ = "export_comment"

    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(32), ForeignKey("export_request.id"), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    author_id: int = Field(sa_column=Column(Integer, ForeignKey("person.id"), nullable=False))
    visibility: str = Field(sa_column=Column(String(8), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)


class ExportRelease(SQLModel, table=True):
    """Where a released request went and the digest of its signed manifest."""

    __tablename__ = "export_release"

    request_id: str = Field(sa_column=Column(String(32), ForeignKey("export_request.id"), primary_key=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    path: str = Field(sa_column=Column(Text, nullable=False))
    manifest_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    key_id: str = Field(sa_column=Column(String(80), nullable=False))
    released_by: str = Field(sa_column=Column(String(64), nullable=False))
    released_at: dt.datetime = Field(default_factory=utcnow)
