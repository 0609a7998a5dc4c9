"""The model catalog: the models the gateway may serve, each at a release stage, with its card,
its risk checklist, the history of its stage steps, pending promotions and recorded incidents.

A catalog model (`owner_project_id` NULL) is visible to every project whose tier allows its stage
(`enclave.registry.catalog.STAGE_TIERS`); a project-owned model (a DP fine-tune) only to its
project. Stage steps and incidents are only ever added (migration 0011 installs the triggers);
the current stage on `model_entry` is a convenience copy changed in the same transaction as the
step that explains it.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import BigInteger, Boolean, Column, Float, String, Text
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow

# Rows are only ever added; migration 0011 installs the triggers.
CATALOG_APPEND_ONLY_TABLES = ("model_stage_step", "model_incident")


class ModelEntry(SQLModel, table=True):
    """One servable model: where its weights are, their fingerprint, its stage and its card."""

    __tablename__ = "model_entry"

    id: Optional[int] = Field(default=None, primary_key=True)
    # What callers put in `model`; unique across catalog and project-owned models alike.
    name: str = Field(sa_column=Column(String(128), unique=True, nullable=False))
    directory: str = Field(sa_column=Column(Text, nullable=False))
    # SHA-256 over the weight files' names and digests (`catalog.weights_digest`), so a swapped
    # file is noticed and the review's weight checks know what to look for.
    weights_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    parameters: int = Field(sa_column=Column(BigInteger, nullable=False))
    stage: str = Field(sa_column=Column(String(16), nullable=False))
    stage_since: dt.datetime = Field(default_factory=utcnow)
    # The model card as given (Markdown with YAML front matter), its parsed metadata (JSON) and the
    # one-paragraph summary `GET /v1/models` shows.
    card: str = Field(default="", sa_column=Column(Text, nullable=False))
    card_meta: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))
    # The Madaio et al. risk checklist, answered (JSON), and who signed it off when.
    checklist: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    checklist_signed_by: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    checklist_signed_at: Optional[dt.datetime] = None
    base_model: Optional[str] = Field(default=None, sa_column=Column(String(256), nullable=True))
    # NULL: a catalog model. Set: a project's own model (a fine-tune), served to that project only.
    owner_project_id: Optional[int] = Field(default=None, foreign_key="project.id", index=True)
    # A fine-tune trained without differential privacy (the operator said so explicitly).
    non_private: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="0"))
    dp_epsilon: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    dp_delta: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    # A fine-tune's training and exposure summary (JSON), as its job reported it.
    report: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    onboarded_by: str = Field(sa_column=Column(String(64), nullable=False))
    onboarded_at: dt.datetime = Field(default_factory=utcnow)
    # Taken out of service by an operator (any model, a project's own fine-tune too): served to no
    # one until restored. The steps are in the stage history and on the audit chain.
    withdrawn_at: Optional[dt.datetime] = None
    withdrawn_by: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    withdrawn_reason: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))


class ModelStageStep(SQLModel, table=True):
    """One step of a model's release history (append-only): onboarding, a promotion (who proposed,
    who signed, on what evidence) or a demotion (who, why)."""

    __tablename__ = "model_stage_step"

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model_entry.id", index=True)
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # onboard, promote, demote, withdraw, restore
    from_stage: Optional[str] = Field(default=None, sa_column=Column(String(16), nullable=True))
    to_stage: str = Field(sa_column=Column(String(16), nullable=False))
    actor: str = Field(sa_column=Column(String(64), nullable=False))
    # The second operator of a promotion (the one who signed).
    signed_by: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    promotion_id: Optional[int] = Field(default=None, foreign_key="model_promotion.id")
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    at: dt.datetime = Field(default_factory=utcnow)


class ModelPromotion(SQLModel, table=True):
    """A proposed promotion by one step, with its evidence, waiting for a second operator.

    `state`: pending, signed (the stage changed), or cancelled (a demotion or a newer proposal
    overtook it)."""

    __tablename__ = "model_promotion"

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model_entry.id", index=True)
    from_stage: str = Field(sa_column=Column(String(16), nullable=False))
    to_stage: str = Field(sa_column=Column(String(16), nullable=False))
    state: str = Field(default="pending", sa_column=Column(String(16), nullable=False))
    proposed_by: str = Field(sa_column=Column(String(64), nullable=False))
    proposed_at: dt.datetime = Field(default_factory=utcnow)
    # The evaluation report: its file name, SHA-256 and text, kept as the second operator saw it.
    evidence_name: str = Field(sa_column=Column(String(255), nullable=False))
    evidence_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    evidence: str = Field(sa_column=Column(Text, nullable=False))
    # The incidents recorded at the current stage when proposed (JSON list), and the days spent there.
    incidents: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    days_at_stage: float = Field(sa_column=Column(Float, nullable=False))
    signed_by: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    signed_at: Optional[dt.datetime] = None
    closed_reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class ModelIncident(SQLModel, table=True):
    """Something that went wrong with a model at a stage (misuse found, a bad output reported):
    part of the evidence of the next promotion proposed from that stage. Append-only."""

    __tablename__ = "model_incident"

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model_entry.id", index=True)
    stage: str = Field(sa_column=Column(String(16), nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    reported_by: str = Field(sa_column=Column(String(64), nullable=False))
    at: dt.datetime = Field(default_factory=utcnow)
