"""The privacy ledger: what each project has spent of its differential-privacy budget.

The budget itself is the grant's (`Grant.epsilon`, `Grant.delta`). Each answered DP query is one
`privacy_spend` row (append-only: a trigger refuses UPDATE and DELETE), written in the same
transaction as its audit event and the running totals in `privacy_account`, whose row is the
project's lock for charging (see `enclave.registry.privacy`)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import Column, Float, Integer, String, Text
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow

# Rows are only ever added; migration 0007 installs the triggers.
PRIVACY_APPEND_ONLY_TABLES = ("privacy_spend",)


class PrivacyAccount(SQLModel, table=True):
    """Running totals of a project's spends (sequential composition: the sums of the spends'
    epsilons and deltas). Locked (`SELECT ... FOR UPDATE`, or SQLite's write lock) while a charge
    is checked and recorded."""

    __tablename__ = "privacy_account"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    epsilon_spent: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    delta_spent: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    spends: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow)


class PrivacySpend(SQLModel, table=True):
    """One answered DP query: who asked, on which dataset, with which mechanism and query, what it
    cost and what was released (the noisy value, which is itself the DP output)."""

    __tablename__ = "privacy_spend"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: int = Field(foreign_key="project.id", index=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    dataset_id: Optional[int] = Field(default=None, foreign_key="dataset.id")
    dataset: str = Field(sa_column=Column(String(128), nullable=False))
    mechanism: str = Field(sa_column=Column(String(64), nullable=False))
    # Canonical JSON of the query (statistic, column, bounds, where, ...).
    query: str = Field(sa_column=Column(Text, nullable=False))
    epsilon: float = Field(sa_column=Column(Float, nullable=False))
    delta: float = Field(sa_column=Column(Float, nullable=False))
    # Canonical JSON of the released value.
    result: str = Field(default="null", sa_column=Column(Text, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)
    audit_seq: int = Field(sa_column=Column(Integer, nullable=False))
