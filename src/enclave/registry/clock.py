"""One notion of time for the registry.

Every timestamp is an aware datetime in UTC. SQLModel's column type stores them as UTC and hands
them back aware on both SQLite and PostgreSQL, so comparisons never mix aware and naive values.
Tests move time by passing `now=` explicitly rather than patching the clock.
"""

from __future__ import annotations

import datetime as dt

from enclave.errors import BadInput

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(ts: dt.datetime | None) -> str | None:
    """ISO 8601 with an explicit Z, microseconds kept (the audit hash covers them)."""
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_day(text: str, what: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise BadInput(f"bad {what} {text!r}: expected YYYY-MM-DD") from None


def end_of_day(day: dt.date) -> dt.datetime:
    """`--until 2027-03-31` means usable through that whole day (UTC): expiry at the next midnight."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=UTC)


def last_day(expires_at: dt.datetime | None) -> str | None:
    """The last whole UTC day of access before `expires_at`, as people write it (YYYY-MM-DD)."""
    if expires_at is None:
        return None
    return (expires_at.astimezone(UTC) - dt.timedelta(microseconds=1)).date().isoformat()
