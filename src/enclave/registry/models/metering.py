"""Metering tables: the token accounts, rate windows and reservations the gateway charges
against, the gateway instances that hold reservations, and the model calls it records for review's
provenance check."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import BigInteger, Column, ForeignKey, String, Text
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class UsageTotal(SQLModel, table=True):
    """A project's running token account. `tokens_reserved` holds the worst case of calls in
    flight, so that concurrent calls can never together spend more than the grant."""

    __tablename__ = "usage_total"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    tokens_used: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    tokens_reserved: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    calls: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class UsageDay(SQLModel, table=True):
    """Per UTC day: tokens (used and reserved), probability-bearing calls and activation bytes."""

    __tablename__ = "usage_day"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    day: str = Field(sa_column=Column(String(10), primary_key=True))
    tokens_used: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    tokens_reserved: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    logprob_calls: int = Field(default=0)
    # Activation bytes charged today (reserved at admission, where the size is exact; given back
    # when the call returned nothing).
    activation_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class RateWindow(SQLModel, table=True):
    """Requests started in one clock minute (a fixed window: simple, and exact under concurrency)."""

    __tablename__ = "rate_window"

    project_id: int = Field(foreign_key="project.id", primary_key=True)
    minute: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    requests: int = Field(default=0)


class GatewayInstance(SQLModel, table=True):
    """One running gateway process. It registers at start-up and stamps `heartbeat_at` every few
    seconds; the open reservations of an instance whose heartbeat stopped belong to calls that died
    with it, and any gateway's periodic sweep settles them."""

    __tablename__ = "gateway_instance"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    host: str = Field(max_length=255)
    pid: int
    started_at: dt.datetime = Field(default_factory=utcnow)
    heartbeat_at: dt.datetime = Field(default_factory=utcnow)


class Reservation(SQLModel, table=True):
    """One metered call from reservation to settlement. Settling twice is a no-op, so a charge is
    never counted twice; a reservation left open by a crash is charged its worst case by the sweep
    (promptly when its gateway instance's heartbeat stops; `instance_id` is empty on rows from
    before instances were recorded, which the start-up sweep settles after a while)."""

    __tablename__ = "reservation"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: int = Field(foreign_key="project.id", index=True)
    person_id: int = Field(foreign_key="person.id")
    endpoint: str = Field(max_length=32)
    day: str = Field(sa_column=Column(String(10), nullable=False))
    tokens_reserved: int = Field(sa_column=Column(BigInteger, nullable=False))
    tokens_charged: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    state: str = Field(default="open", max_length=16, index=True)
    instance_id: Optional[str] = Field(default=None, sa_column=Column(
        String(32), ForeignKey("gateway_instance.id"), nullable=True, index=True))
    created_at: dt.datetime = Field(default_factory=utcnow)
    settled_at: Optional[dt.datetime] = None


class ModelCall(SQLModel, table=True):
    """What a scholar asked the model and what it answered. Kept inside the enclave so the review
    airlock can trace exported text back to the calls that produced it; the audit event of the
    call carries SHA-256 digests of both texts, so the chain covers them (`enclave audit verify`
    checks each row against them)."""

    __tablename__ = "model_call"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    person_id: int = Field(foreign_key="person.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    endpoint: str = Field(max_length=32)
    status: str = Field(max_length=16)
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    # What the caller was given, as JSON: generate's texts (a list, several when n > 1; empty when
    # the call did not finish), score's rounded log-probabilities ({"tokens": [{"token", "logprob"}],
    # "total_logprob", "perplexity"}) or next-token's rounded probabilities ({"top": [{"token",
    # "probability"}]}). The audit event's outputs_sha256 is the digest of exactly this text.
    outputs: str = Field(sa_column=Column(Text, nullable=False))
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    audit_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow)
