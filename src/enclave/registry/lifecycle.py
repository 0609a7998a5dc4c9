"""The project lifecycle: one explicit state machine.

    proposed --approve--> approved --suspend--> suspended --reinstate--> approved
    proposed --reject---> rejected
    approved|suspended --revoke--> revoked
    approved|suspended --close---> closed
    approved|suspended --expire--> expired      (by time: see `effective_status`)

Terminal states (rejected, revoked, expired, closed) have no way out: a new project is proposed
instead, so the record of what was allowed when is never rewritten.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from enclave.errors import Conflict, InvalidTransition
from enclave.registry.clock import utcnow
from enclave.registry.models import Project, ProjectStatus as S


@dataclasses.dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[S]
    target: S
    # Who may take it: operators, or the enclave itself when time runs out.
    by_system_only: bool = False
    needs_reason: bool = False


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("approve", frozenset({S.proposed}), S.approved),
        Transition("reject", frozenset({S.proposed}), S.rejected, needs_reason=True),
        Transition("suspend", frozenset({S.approved}), S.suspended),
        Transition("reinstate", frozenset({S.suspended}), S.approved),
        Transition("revoke", frozenset({S.approved, S.suspended}), S.revoked, needs_reason=True),
        Transition("close", frozenset({S.approved, S.suspended}), S.closed),
        Transition("expire", frozenset({S.approved, S.suspended}), S.expired, by_system_only=True),
    )
}

TERMINAL = frozenset({S.rejected, S.revoked, S.expired, S.closed})
# States in which the clock is running: reaching expires_at moves them to expired.
EXPIRABLE = TRANSITIONS["expire"].sources


def check_transition(slug: str, current: S, action: str) -> Transition:
    """The transition `action` from `current`, or an error that says what is allowed instead."""
    transition = TRANSITIONS.get(action)
    if transition is None:
        raise InvalidTransition(f"unknown project action {action!r}")
    if current not in transition.sources:
        allowed = sorted(a for a, t in TRANSITIONS.items() if current in t.sources and not t.by_system_only)
        hint = f"from {current.value} you may: {', '.join(allowed)}" if allowed else f"{current.value} is final"
        raise InvalidTransition(f"cannot {action} project {slug!r}: it is {current.value} ({hint})")
    return transition


def status_of(project: Project, now: dt.datetime | None = None) -> S:
    """The status of `project` that counts now (see `effective_status`)."""
    return effective_status(S(project.status), project.expires_at, now or utcnow())


def require_live(project: Project, doing: str, now: dt.datetime | None = None) -> S:
    """Refuse `doing` on a project whose life is over (rejected, revoked, expired, closed): the one
    guard every change to a project's members, datasets, grant and keys goes through."""
    status = status_of(project, now)
    if status in TERMINAL:
        raise Conflict(f"cannot {doing}: project {project.slug!r} is {status.value}")
    return status


def effective_status(status: S, expires_at: dt.datetime | None, now: dt.datetime) -> S:
    """The status that counts at `now`: an approved or suspended project past its expiry is expired
    even before anyone has recorded that, so access checks never depend on a sweep having run."""
    if status in EXPIRABLE and expires_at is not None and expires_at <= now:
        return S.expired
    return status
