"""Metering: reserve a call's worst-case cost atomically, run it, settle what it really cost.

Every check and every increment for one call happens in one transaction holding the project's
account lock (a row lock on `usage_total` on PostgreSQL; SQLite's write lock, taken by BEGIN
IMMEDIATE, on SQLite). Because reservations count against the grant until they settle, any number
of concurrent calls together can never spend more than the grant allows.

A crash must not lock a grant: each gateway process registers as an instance
(`register_instance`), stamps its reservations with it and heartbeats every few seconds
(`heartbeat`); every gateway's periodic `sweep_dead` settles the open reservations of instances
whose heartbeat stopped, charging their worst case (what a killed process produced is not known,
and the reservation is what the grant agreed to). Two gateways sweeping the same dead instance
settle each reservation exactly once: the sweep re-reads the row under the project's account lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import socket

from sqlalchemy import text
from sqlmodel import Session, select

from enclave.errors import BadInput, QuotaExhausted, RateLimited
from enclave.gateway import tiers
from enclave.registry import audit, grants
from enclave.registry.access import Access
from enclave.registry.clock import iso, utcnow
from enclave.registry.db import is_postgres
from enclave.registry.models import GatewayInstance, ModelCall, RateWindow, Reservation, UsageDay, UsageTotal

LOGPROB_ENDPOINTS = frozenset({"score", "next-token"})
# A reservation without a gateway instance (from before instances were recorded) still open after
# this long belongs to a gateway that died mid-call.
STALE_AFTER = dt.timedelta(minutes=15)


class RequestTooLarge(BadInput):
    """One call asks for more tokens than the grant allows per request (HTTP 400)."""

    code = "request_too_large"


class DailyQuotaExhausted(QuotaExhausted):
    """Today's allowance is spent; it renews at midnight UTC, `retry_after` seconds from now."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A granted reservation, handed back to `settle`."""

    id: str
    project_id: int
    person_id: int
    endpoint: str
    tokens_reserved: int
    activation_bytes: int = 0


def _day(now: dt.datetime) -> str:
    return now.date().isoformat()


def _seconds_to_midnight(now: dt.datetime) -> int:
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=now.tzinfo)
    return max(1, int((tomorrow - now).total_seconds()))


def _get_or_create(session: Session, model, key: tuple, **defaults):
    row = session.get(model, key)
    if row is None:
        names = [c.name for c in model.__table__.primary_key.columns]
        row = model(**dict(zip(names, key)), **defaults)
        session.add(row)
        session.flush()
    return row


def _lock_account(session: Session, project_id: int) -> UsageTotal:
    """The project's account row, locked until the transaction ends. Holding it also serialises
    the creation of the day and minute rows below, so they never race."""
    if is_postgres(session):
        session.execute(text("INSERT INTO usage_total (project_id, tokens_used, tokens_reserved, calls) "
                             "VALUES (:p, 0, 0, 0) ON CONFLICT DO NOTHING"), {"p": project_id})
        return session.exec(select(UsageTotal).where(UsageTotal.project_id == project_id)
                            .with_for_update().execution_options(populate_existing=True)).one()
    # SQLite: BEGIN IMMEDIATE already gave this transaction the database's only write lock.
    return _get_or_create(session, UsageTotal, (project_id,), tokens_used=0, tokens_reserved=0, calls=0)


def probability_bearing(endpoint: str, completion_tokens: int, max_new_tokens: int | None = None) -> bool:
    """Whether a call reveals the model's probabilities and so counts against the daily cap on such
    calls: score and next-token, and a one-token generation (with a chosen seed, one sampled token
    answers "is CDF(t) > u", so bisection over seeds recovers probabilities)."""
    if endpoint in LOGPROB_ENDPOINTS:
        return True
    per_sample = max_new_tokens if max_new_tokens is not None else completion_tokens
    return endpoint == "generate" and per_sample == 1


def reserve(session: Session, granted: Access, endpoint: str, worst_case_tokens: int, *,
            completion_tokens: int = 0, max_new_tokens: int | None = None, instance_id: str | None = None,
            activation_bytes: int = 0, model: str | None = None, now: dt.datetime | None = None) -> Ticket:
    """Check the grant and hold `worst_case_tokens` for this call, or refuse it: TierRequired (the
    endpoint is above the grant's tier), RequestTooLarge, RateLimited (with `retry_after`),
    QuotaExhausted (DailyQuotaExhausted, with `retry_after`, for what renews tomorrow).

    `activation_bytes` is what an activations call returns (exact: known from the shapes before it
    runs), charged now against the day's activation budget; `settle` gives it back if the call
    returned nothing.

    `completion_tokens` is the most the call may generate (all samples), checked against the
    per-request cap; `max_new_tokens` the most per sample, when the caller knows it (else
    `completion_tokens` stands for it): a one-token generation is probability-bearing.
    `instance_id` is the gateway instance that will settle the call (`register_instance`);
    `model` the model it runs, whose tier for the project may differ from the grant's.
    """
    now = now or utcnow()
    bears_probabilities = probability_bearing(endpoint, completion_tokens, max_new_tokens)
    grant, project = granted.grant, granted.project
    tiers.require(grants.tier_for(session, grant, model), endpoint, project.slug, model=model)
    if activation_bytes > grant.activation_bytes_per_day:
        raise RequestTooLarge(f"this call returns {activation_bytes} bytes of activations, more than this grant's "
                              f"{grant.activation_bytes_per_day} bytes per day: ask for fewer hooks or positions")
    if completion_tokens > grant.max_tokens_per_request:
        raise RequestTooLarge(f"max_new_tokens x n = {completion_tokens} exceeds this grant's cap of "
                              f"{grant.max_tokens_per_request} tokens per request")
    account = _lock_account(session, project.id)
    day = _get_or_create(session, UsageDay, (project.id, _day(now)), tokens_used=0, tokens_reserved=0, logprob_calls=0)
    minute = int(now.timestamp() // 60)
    window = _get_or_create(session, RateWindow, (project.id, minute), requests=0)
    if window.requests >= grant.requests_per_minute:
        raise RateLimited(f"rate limit: {grant.requests_per_minute} requests per minute for project {project.slug!r}",
                          retry_after=max(1, 60 - int(now.timestamp()) % 60))
    if bears_probabilities and day.logprob_calls >= grant.logprob_calls_per_day:
        raise DailyQuotaExhausted(f"this grant allows {grant.logprob_calls_per_day} probability-bearing calls "
                                  f"(score, next-token, one-token generate) per day; they are used up",
                                  retry_after=_seconds_to_midnight(now))
    committed = account.tokens_used + account.tokens_reserved
    if committed + worst_case_tokens > grant.tokens_total:
        raise QuotaExhausted(f"token quota exhausted: {account.tokens_used} of {grant.tokens_total} used, "
                             f"{account.tokens_reserved} held by calls in flight; this call may need {worst_case_tokens}")
    if day.tokens_used + day.tokens_reserved + worst_case_tokens > grant.tokens_per_day:
        raise DailyQuotaExhausted(f"daily token quota exhausted: {day.tokens_used} of {grant.tokens_per_day} used today; "
                             f"this call may need {worst_case_tokens}", retry_after=_seconds_to_midnight(now))
    if activation_bytes and day.activation_bytes + activation_bytes > grant.activation_bytes_per_day:
        raise DailyQuotaExhausted(f"daily activation budget exhausted: {day.activation_bytes} of "
                                  f"{grant.activation_bytes_per_day} bytes read today; this call needs "
                                  f"{activation_bytes}", retry_after=_seconds_to_midnight(now))
    window.requests += 1
    account.tokens_reserved += worst_case_tokens
    day.tokens_reserved += worst_case_tokens
    if bears_probabilities:
        day.logprob_calls += 1
    day.activation_bytes += activation_bytes
    ticket = Ticket(id=secrets.token_hex(12), project_id=project.id, person_id=granted.person.id,
                    endpoint=endpoint, tokens_reserved=worst_case_tokens, activation_bytes=activation_bytes)
    session.add_all([window, account, day, Reservation(
        id=ticket.id, project_id=project.id, person_id=granted.person.id, endpoint=endpoint, day=day.day,
        tokens_reserved=worst_case_tokens, instance_id=instance_id, created_at=now)])
    session.flush()
    return ticket


@dataclasses.dataclass
class CallRecord:
    """What happened in a call, for the audit log and the model-call record."""

    status: str  # ok | error | cancelled | busy
    prompt: str
    # What the caller was given: generate's texts (a list), or the rounded numbers of score and
    # next-token (an object); stored as JSON and digested in the call's audit event.
    outputs: list[str] | dict
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    # The model that answered (a catalog name, or the default model's), for the audit event.
    model: str | None = None


def settle(session: Session, ticket: Ticket, charged_tokens: int, record: CallRecord, *, actor: str,
           project_slug: str, now: dt.datetime | None = None) -> bool:
    """Replace the reservation by the actual charge and record the call. Idempotent: a ticket that
    was settled already (or swept) changes nothing and returns False."""
    now = now or utcnow()
    account = _lock_account(session, ticket.project_id)
    reservation = session.get(Reservation, ticket.id)
    if reservation is None or reservation.state != "open":
        return False
    # Never charge more than was reserved: the reservation is the promise the grant checked.
    charged = max(0, min(charged_tokens, reservation.tokens_reserved))
    day = _get_or_create(session, UsageDay, (ticket.project_id, reservation.day),
                         tokens_used=0, tokens_reserved=0, logprob_calls=0)
    account.tokens_reserved -= reservation.tokens_reserved
    account.tokens_used += charged
    account.calls += 1
    day.tokens_reserved -= reservation.tokens_reserved
    day.tokens_used += charged
    # Activation bytes were charged at admission; a call that returned nothing gives them back.
    activation_bytes = ticket.activation_bytes if record.status == "ok" else 0
    day.activation_bytes -= ticket.activation_bytes - activation_bytes
    reservation.state, reservation.tokens_charged, reservation.settled_at = "settled", charged, now
    outputs_json = json.dumps(record.outputs, ensure_ascii=False)
    details = {
        "call": ticket.id, "status": record.status, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "charged_tokens": charged, "latency_ms": record.latency_ms,
        **audit.model_call_digests(record.prompt, outputs_json),
    }
    if ticket.activation_bytes:
        details["activation_bytes"] = activation_bytes
    if record.model is not None:
        details["model"] = record.model
    event = audit.append(session, actor=actor, action=f"model.{ticket.endpoint}", subject=f"project:{project_slug}",
                         details=details)
    session.add_all([account, day, reservation, ModelCall(
        id=ticket.id, person_id=ticket.person_id, project_id=ticket.project_id, endpoint=ticket.endpoint,
        status=record.status, prompt=record.prompt, outputs=outputs_json, prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens, latency_ms=record.latency_ms, audit_seq=event.seq, created_at=now)])
    session.flush()
    return True


def _expire(session: Session, reservation_id: str, project_id: int, now: dt.datetime, reason: str) -> bool:
    """Charge an open reservation its worst case, exactly once: under the project's account lock,
    re-read the row (another sweeper or the call's own settle may have got there first) and leave
    it alone unless it is still open."""
    account = _lock_account(session, project_id)
    query = select(Reservation).where(Reservation.id == reservation_id).execution_options(populate_existing=True)
    if is_postgres(session):
        query = query.with_for_update()
    reservation = session.exec(query).one_or_none()
    if reservation is None or reservation.state != "open":
        return False
    day = _get_or_create(session, UsageDay, (reservation.project_id, reservation.day),
                         tokens_used=0, tokens_reserved=0, logprob_calls=0)
    account.tokens_reserved -= reservation.tokens_reserved
    account.tokens_used += reservation.tokens_reserved
    day.tokens_reserved -= reservation.tokens_reserved
    day.tokens_used += reservation.tokens_reserved
    reservation.state, reservation.tokens_charged, reservation.settled_at = "expired", reservation.tokens_reserved, now
    session.add_all([account, day, reservation])
    details = {"tokens": reservation.tokens_reserved, "opened_at": iso(reservation.created_at), "reason": reason}
    if reservation.instance_id:
        details["instance"] = reservation.instance_id
    audit.append(session, actor="system", action="model.charge_abandoned", subject=f"reservation:{reservation.id}",
                 details=details)
    session.flush()
    return True


def _expire_all(session: Session, condition, now: dt.datetime, reason: str) -> int:
    # In one order (project, then id) so that sweepers racing on PostgreSQL take the account locks
    # in the same order and cannot deadlock.
    rows = session.exec(select(Reservation.id, Reservation.project_id).where(Reservation.state == "open", condition)
                        .order_by(Reservation.project_id, Reservation.id)).all()
    return sum(_expire(session, rid, pid, now, reason) for rid, pid in rows)


def sweep_stale(session: Session, now: dt.datetime | None = None, older_than: dt.timedelta = STALE_AFTER) -> int:
    """Charge the worst case for reservations without a gateway instance (opened before instances
    were recorded) that are older than `older_than`: their gateway died before settling them, the
    tokens may have been spent, and a charge must never be dropped. Returns how many it settled."""
    now = now or utcnow()
    return _expire_all(session, Reservation.instance_id.is_(None) & (Reservation.created_at < now - older_than),
                       now, "stale")


def register_instance(session: Session, *, host: str | None = None, pid: int | None = None,
                      now: dt.datetime | None = None) -> str:
    """Record this gateway process as a live instance; returns its id, for `reserve` and `heartbeat`."""
    now = now or utcnow()
    instance = GatewayInstance(id=secrets.token_hex(12), host=(host or socket.gethostname())[:255],
                               pid=os.getpid() if pid is None else pid, started_at=now, heartbeat_at=now)
    session.add(instance)
    session.flush()
    return instance.id


def heartbeat(session: Session, instance_id: str, now: dt.datetime | None = None) -> None:
    """This instance is alive: its open reservations belong to calls still running."""
    now = now or utcnow()
    instance = session.get(GatewayInstance, instance_id)
    if instance is None:  # removed by hand: come back rather than have our calls swept
        instance = GatewayInstance(id=instance_id, host=socket.gethostname()[:255], pid=os.getpid(), started_at=now)
    instance.heartbeat_at = now
    session.add(instance)
    session.flush()


def sweep_dead(session: Session, dead_after: dt.timedelta, now: dt.datetime | None = None) -> int:
    """Charge the worst case for the open reservations of gateway instances whose last heartbeat
    is older than `dead_after`: the process died mid-call (what it had produced died with it), and
    the grant must not stay locked. Safe to run in several gateways at once. Returns how many it
    settled."""
    now = now or utcnow()
    dead = select(GatewayInstance.id).where(GatewayInstance.heartbeat_at < now - dead_after)
    return _expire_all(session, Reservation.instance_id.in_(dead), now, "gateway instance stopped heartbeating")


def usage(session: Session, granted: Access, now: dt.datetime | None = None) -> dict:
    """The caller's allowance and what is left of it."""
    now = now or utcnow()
    grant, project = granted.grant, granted.project
    account = session.get(UsageTotal, project.id) or UsageTotal(project_id=project.id)
    day = session.get(UsageDay, (project.id, _day(now))) or UsageDay(project_id=project.id, day=_day(now))
    window = session.get(RateWindow, (project.id, int(now.timestamp() // 60)))
    return {
        "project": project.slug,
        "expires_at": iso(project.expires_at),
        "tokens": {"limit": grant.tokens_total, "used": account.tokens_used, "reserved": account.tokens_reserved,
                   "remaining": max(0, grant.tokens_total - account.tokens_used - account.tokens_reserved)},
        "tokens_today": {"limit": grant.tokens_per_day, "used": day.tokens_used, "reserved": day.tokens_reserved,
                         "remaining": max(0, grant.tokens_per_day - day.tokens_used - day.tokens_reserved)},
        "requests_this_minute": {"limit": grant.requests_per_minute, "used": window.requests if window else 0},
        "logprob_calls_today": {"limit": grant.logprob_calls_per_day, "used": day.logprob_calls,
                                "remaining": max(0, grant.logprob_calls_per_day - day.logprob_calls)},
        "max_tokens_per_request": grant.max_tokens_per_request,
        "tier": grant.tier,
        # Models for which the project's tier differs from its grant's.
        "model_tiers": grants.model_tiers(session, project.id),
        "activation_bytes_today": {"limit": grant.activation_bytes_per_day, "used": day.activation_bytes,
                                   "remaining": max(0, grant.activation_bytes_per_day - day.activation_bytes)},
    }
