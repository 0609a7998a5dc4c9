"""Self-registrations waiting for an operator: someone asked for an applicant's account on the
access service's public page. Only pending requests live here; confirming one creates the person
(and their hub credential) and refusing one deletes it, the audit chain keeping both decisions.

Nothing in this table gives a role or a login: the hub and every service look people up in
`person`, where a registration appears only once an operator confirms it."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import Column, String
from sqlmodel import Field, SQLModel

from enclave.registry.clock import utcnow


class Registration(SQLModel, table=True):
    __tablename__ = "registration"

    id: Optional[int] = Field(default=None, primary_key=True)
    # One pending request per user name (a refused or confirmed one leaves this table).
    username: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    email: str = Field(sa_column=Column(String(254), nullable=False))
    affiliation: str = Field(default="", sa_column=Column(String(200), nullable=False))
    # The scrypt hash (`enclave.registry.credentials.hash_password`); the password itself is never kept.
    password_hash: str = Field(sa_column=Column(String(256), nullable=False))
    requested_at: dt.datetime = Field(default_factory=utcnow)
