"""Refused gateway calls, counted in memory and written to the audit log once per minute and caller.

A refusal (401 unauthenticated, 402 quota, 403 access denied, 429 rate limit: the `Unauthenticated`
and `Refused` families) writes no event of its own: a flood of bad tokens must not become a flood
of audit events, nor a way to hold the registry's write lock. Instead `RefusalTally` counts them
per group, (UTC minute, caller, reason, status), with how often each endpoint was hit, and the
gateway's heartbeat thread writes one `gateway.refused` event per group once its minute is over
(`GatewayState.flush_refusals`); at shutdown every group is written, so a clean stop loses none.

The caller is the person when the token was identified (`person:<name>`), else a digest of the
presented token (`token:<16 hex digits of its SHA-256>`: tokens are random, and the digest names
the same bad token across minutes without keeping it), else the client's address
(`address:<host>`). Memory is bounded: past `max_groups` groups, further refusals are counted in one
`other` group (with its statuses and endpoints) until the next write.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Iterable

from fastapi import Request

from enclave.errors import Refused, Unauthenticated, UserError
from enclave.registry import audit
from enclave.registry.clock import iso, utcnow
from enclave.web.hub_auth import bearer_token

ACTION = "gateway.refused"
MAX_GROUPS = 512
OTHER = "other"
_CALLER_ATTRIBUTE = "enclave_caller"


def is_refusal(exc: UserError) -> bool:
    """Whether an error is a refusal of the caller (tallied), not bad input or a busy engine."""
    return isinstance(exc, (Unauthenticated, Refused))


def note_caller(request: Request, username: str) -> None:
    """Remember who this request's token belongs to, so a refusal after that names the person."""
    setattr(request.state, _CALLER_ATTRIBUTE, username)


def caller_of(request: Request) -> str:
    """Who a refused request came from: the person, else the token's digest, else the address."""
    username = getattr(request.state, _CALLER_ATTRIBUTE, None)
    if username:
        return f"person:{username}"
    try:
        token = bearer_token(request.headers.get("authorization"))
    except UserError:
        token = None
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"address:{request.client.host if request.client else 'unknown'}"


def endpoint_of(request: Request) -> str:
    """The route's path template (never the raw path, which the caller chooses)."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def minute_of(now: dt.datetime) -> int:
    return int(now.timestamp() // 60)


@dataclasses.dataclass(frozen=True)
class GroupKey:
    minute: int  # minutes since the epoch, UTC
    caller: str
    reason: str
    status: int


@dataclasses.dataclass
class Group:
    """The refusals of one key; for the `other` group also the minutes and statuses it spans."""

    key: GroupKey
    count: int = 0
    endpoints: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    until: int = 0  # the last minute it counts (the `other` group may span several)

    def absorb(self, other: "Group") -> None:
        self.count += other.count
        self.endpoints.update(other.endpoints)
        self.statuses.update(other.statuses or {other.key.status: other.count})
        self.until = max(self.until, other.until, other.key.minute)

    def details(self) -> dict:
        def at(minute: int) -> str:
            return iso(dt.datetime.fromtimestamp(minute * 60, dt.timezone.utc))

        details = {"minute": at(self.key.minute), "caller": self.key.caller, "reason": self.key.reason,
                   "status": self.key.status, "count": self.count, "endpoints": dict(sorted(self.endpoints.items()))}
        if self.key.caller == OTHER:
            details["until"] = at(max(self.until, self.key.minute))
            details["statuses"] = {str(s): n for s, n in sorted(self.statuses.items())}
        return details


class RefusalTally:
    """Refusals counted per group until they are written; safe to use from any thread."""

    def __init__(self, max_groups: int = MAX_GROUPS, clock: Callable[[], dt.datetime] = utcnow):
        if max_groups < 1:
            raise ValueError("max_groups must be at least 1")
        self.max_groups, self.clock = max_groups, clock
        self._lock = threading.Lock()
        self._groups: dict[GroupKey, Group] = {}
        self._other: Group | None = None

    def add(self, caller: str, reason: str, status: int, endpoint: str) -> None:
        key = GroupKey(minute_of(self.clock()), caller, reason, status)
        one = Group(key, 1, collections.Counter({endpoint: 1}))
        with self._lock:
            self._merge(one)

    def _merge(self, group: Group) -> None:
        """Count `group` in its own group, or in `other` when there is no room for another."""
        known = self._groups.get(group.key)
        if known is not None:
            known.count += group.count
            known.endpoints.update(group.endpoints)
        elif len(self._groups) < self.max_groups:
            self._groups[group.key] = Group(group.key, group.count, collections.Counter(group.endpoints))
        else:
            self._count_in_other(group)

    def _count_in_other(self, group: Group) -> None:
        """Count `group` in the one `other` group, which starts at the earliest minute it counts."""
        first = group.key.minute
        if self._other is None:
            self._other = Group(GroupKey(first, OTHER, OTHER, 0), until=first)
        elif first < self._other.key.minute:  # a group put back after a failed write
            self._other.key = GroupKey(first, OTHER, OTHER, 0)
        self._other.absorb(group)

    def take(self, everything: bool = False) -> list[Group]:
        """Remove and return the groups whose minute is over (all of them when `everything`). The
        `other` group goes once the minute it started in is over."""
        current = minute_of(self.clock())
        with self._lock:
            done = [g for k, g in self._groups.items() if everything or k.minute < current]
            for group in done:
                del self._groups[group.key]
            if self._other is not None and (everything or self._other.key.minute < current):
                done.append(self._other)
                self._other = None
        return sorted(done, key=lambda g: (g.key.minute, g.key.caller == OTHER, g.key.caller, g.key.reason, g.key.status))

    def put_back(self, groups: Iterable[Group]) -> None:
        """Groups whose write failed: counted again, to be written with the next flush."""
        with self._lock:
            for group in groups:
                if group.key.caller == OTHER:
                    self._count_in_other(group)
                else:
                    self._merge(group)

    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(g.count for g in self._groups.values()) + (self._other.count if self._other else 0)


def write(session, groups: Iterable[Group]) -> int:
    """One `gateway.refused` audit event per group, in the caller's transaction."""
    count = 0
    for group in groups:
        audit.append(session, actor="system", action=ACTION, subject=group.key.caller, details=group.details())
        count += 1
    return count
