"""Fine-tune jobs: DP fine-tunes of the project's GPT-2 on one of its datasets (issue 12).

A job is queued (from a notebook, through the privacy service) or started at once (`enclave
finetune`), runs, and ends done or failed. Its privacy cost is charged to the project's ledger in
the same transaction that moves it from queued to running (`spend_id` then names the
`privacy_spend` row), so a job never runs uncharged and is never charged twice. The row carries its
progress (step of total, loss, epsilon spent so far by the accountant) and, once done, the model it
produced and the audit reports (canary exposure, membership inference) as JSON.

Mutable (status and progress change), unlike the ledger; every transition writes an audit event.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Optional

from sqlalchemy import Boolean, Column, Float, Integer, String, Text
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class FinetuneStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class FinetuneJob(SQLModel, table=True):
    __tablename__ = "finetune_job"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: int = Field(foreign_key="project.id", index=True)
    dataset_id: Optional[int] = Field(default=None, foreign_key="dataset.id")
    dataset: str = Field(sa_column=Column(String(128), nullable=False))
    base_model: str = Field(sa_column=Column(String(256), nullable=False))
    # The privacy target; None with non_private.
    epsilon: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    delta: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    non_private: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    # The operator who allowed a non-private fine-tune.
    override_by: Optional[str] = Field(default=None, sa_column=Column(String(64), nullable=True))
    # JSON of the training parameters (epochs, batch size, learning rate, accountant, ...).
    params: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    # The examples the job trains on (the n of delta < 1/n).
    examples: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    status: str = Field(default=FinetuneStatus.queued.value, sa_column=Column(String(16), nullable=False, index=True))
    step: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    total_steps: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    loss: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    epsilon_spent: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    message: str = Field(default="", sa_column=Column(Text, nullable=False))
    spend_id: Optional[str] = Field(default=None, sa_column=Column(String(32), nullable=True))
    model_name: Optional[str] = Field(default=None, sa_column=Column(String(128), nullable=True))
    model_dir: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    exposure_report: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    membership_report: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    # Who asked, and how: "cli" (an operator, `enclave finetune`) or "service" (a scholar's notebook).
    requested_by: str = Field(sa_column=Column(String(64), nullable=False))
    via: str = Field(default="cli", sa_column=Column(String(16), nullable=False))
    # Which process runs it ("host:pid"), so a restarted service can tell its own orphans.
    worker: Optional[str] = Field(default=None, sa_column=Column(String(128), nullable=True))
    created_at: dt.datetime = Field(default_factory=utcnow)
    started_at: Optional[dt.datetime] = None
    updated_at: dt.datetime = Field(default_factory=utcnow)
    finished_at: Optional[dt.datetime] = None
