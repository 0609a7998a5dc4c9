"""The export request lifecycle: one explicit state machine (the idea of OpenSAFELY Airlock's).

    submitted --check--> checking --checked--> awaiting_review
    awaiting_review --add_approval--> awaiting_review     (an approval, more are needed)
    awaiting_review --approve--> approved --release--> released
    awaiting_review --request_changes--> changes_requested --resubmit--> submitted
    awaiting_review --reject--> rejected
    submitted|checking|awaiting_review|changes_requested --withdraw--> withdrawn

Who may move a request is part of each transition: its *author* (the scholar who submitted it),
an *independent reviewer* (holds the reviewer role, did not submit it, and has not been a member
of its project at any time since it was submitted), or the *system* (the check worker; release). Terminal states (rejected, released,
withdrawn) have no way out: a new request is made instead, so the record is never rewritten.
"""

from __future__ import annotations

import dataclasses
import enum

from enclave.errors import Forbidden, InvalidTransition
from enclave.registry.models import Person, Role
from enclave.registry.models import ExportState as S


class Actor(str, enum.Enum):
    author = "author"
    reviewer = "reviewer"
    system = "system"


@dataclasses.dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[S]
    target: S
    by: frozenset[Actor]
    needs_reason: bool = False


_LIVE = frozenset({S.submitted, S.checking, S.awaiting_review, S.changes_requested})

TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        # "checking" is a source too: a worker that died mid-check leaves it there, and a restarted
        # service checks again.
        Transition("check", frozenset({S.submitted, S.checking}), S.checking, frozenset({Actor.system})),
        Transition("checked", frozenset({S.checking}), S.awaiting_review, frozenset({Actor.system})),
        Transition("add_approval", frozenset({S.awaiting_review}), S.awaiting_review, frozenset({Actor.reviewer})),
        Transition("approve", frozenset({S.awaiting_review}), S.approved, frozenset({Actor.reviewer})),
        Transition("request_changes", frozenset({S.awaiting_review}), S.changes_requested, frozenset({Actor.reviewer}),
                   needs_reason=True),
        Transition("reject", frozenset({S.awaiting_review}), S.rejected, frozenset({Actor.reviewer}), needs_reason=True),
        Transition("resubmit", frozenset({S.changes_requested}), S.submitted, frozenset({Actor.author})),
        Transition("withdraw", _LIVE, S.withdrawn, frozenset({Actor.author})),
        # Release normally follows the last approval at once (by the system); a reviewer may retry
        # one that failed (a full disk, say) from the CLI.
        Transition("release", frozenset({S.approved}), S.released, frozenset({Actor.system, Actor.reviewer})),
    )
}

TERMINAL = frozenset({S.rejected, S.released, S.withdrawn})
# Actions a person (not the system) may take, for hints and for the UI's buttons.
PERSON_ACTIONS = {a for a, t in TRANSITIONS.items() if t.by != frozenset({Actor.system})}


def check_transition(request_id: str, current: S, action: str, actor: Actor) -> Transition:
    """The transition `action` from `current` by `actor`, or an error that says why not."""
    transition = TRANSITIONS.get(action)
    if transition is None:
        raise InvalidTransition(f"unknown export action {action!r}")
    if actor not in transition.by:
        who = " or ".join(sorted(a.value for a in transition.by))
        if actor is Actor.author and Actor.reviewer in transition.by:
            raise Forbidden(f"you submitted export {request_id}: a reviewer never reviews their own export")
        raise Forbidden(f"only the {who} may {action.replace('_', ' ')} export {request_id}")
    if current not in transition.sources:
        allowed = sorted(a for a, t in TRANSITIONS.items()
                         if current in t.sources and actor in t.by and a != "add_approval")
        hint = f"it is {current.value}"
        if current in TERMINAL:
            hint += ", which is final"
        elif allowed:
            hint += f"; you may: {', '.join(allowed)}"
        raise InvalidTransition(f"cannot {action.replace('_', ' ')} export {request_id}: {hint}")
    return transition


def actor_for(person: Person, author_id: int, project_member_ids: set[int],
              former_member_ids: frozenset[int] | set[int] = frozenset()) -> Actor:
    """How `person` stands towards a request: its author, an independent reviewer, or neither.

    A reviewer who belongs to the request's project is not independent (they could approve their
    co-authors' exports), so they are refused like anyone else without the role. So is one who
    belonged to it at any time since the request was submitted (`former_member_ids`): leaving the
    project for a day must not turn a co-author into a reviewer of the export.
    """
    if person.id == author_id:
        return Actor.author
    if not person.has_role(Role.reviewer):
        raise Forbidden(f"{person.username!r} does not hold the reviewer role")
    if person.id in project_member_ids:
        raise Forbidden(f"{person.username!r} is a member of this export's project and so cannot review it")
    if person.id in former_member_ids:
        raise Forbidden(f"{person.username!r} was a member of this export's project while the export was open "
                        "and so cannot review it")
    return Actor.reviewer


def approvals_needed(severities: set[str], always_two: bool) -> int:
    """The two-person rule: two independent approvals when any finding is block or warn (or the
    policy says always), otherwise one."""
    return 2 if always_two or severities & {"block", "warn"} else 1
