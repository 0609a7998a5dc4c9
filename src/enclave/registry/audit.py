"""The hash-chained audit log.

Each event's hash is SHA-256 over the canonical JSON of all its fields, `prev_hash` included, so
changing, removing, inserting or reordering any event breaks every later link (the idea behind
Certificate Transparency logs). Canonical JSON here means: an object of exactly the keys in
`HASHED_FIELDS`, keys sorted, no whitespace (`,` and `:`), UTF-8, non-ASCII characters unescaped.
Only strings and integers appear (`details` is itself stored as canonical JSON *text* and hashed
as that string), so any language's JSON library reproduces the bytes; `scripts/verify_audit.py` is
a dependency-free verifier for exported logs.

A chain alone cannot stop someone with write access to the database from rewriting it from some
point onwards and recomputing every later hash. Operators defeat that by publishing the head
(`enclave audit head`) somewhere we do not control and later checking that the chain still passes
through it (`enclave audit verify --anchor SEQ:HASH`).

The model calls (`model_call`: what was asked and answered, kept for review's provenance check) sit
outside the chain, but each call's audit event carries SHA-256 digests of its prompt and outputs
(`model_call_digests`). `verify_model_calls` checks every row against its event and every model
call event against its row, so a prompt or an answer edited or deleted in the database is found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, select

from enclave.registry.clock import iso, utcnow
from enclave.registry.db import is_postgres
from enclave.errors import BadInput
from enclave.registry.models import AuditEvent, ModelCall

GENESIS_HASH = "0" * 64
HASHED_FIELDS = ("seq", "time", "actor", "action", "subject", "details", "prev_hash")
# The events that record a model call, one per `model_call` row (`action` is "model.<endpoint>").
MODEL_CALL_ACTIONS = frozenset({"model.generate", "model.score", "model.next-token"})
# Problems named one by one before the rest are only counted.
MAX_PROBLEMS_NAMED = 20
# Any fixed 64-bit number: the key of PostgreSQL's transaction-scoped advisory lock for appends.
_PG_CHAIN_LOCK_KEY = 0x656E636C61766501


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compute_hash(fields: Mapping[str, Any]) -> str:
    payload = {name: fields[name] for name in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def append(session: Session, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction.

    The event commits or rolls back with the change it records. Appends are serialised (advisory
    lock on PostgreSQL, the write lock taken by BEGIN IMMEDIATE on SQLite), and the unique
    constraints on `seq` and `prev_hash` make a fork impossible even if that ever failed.
    """
    if is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK_KEY})
    head = session.exec(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
    fields = {
        "seq": head.seq + 1 if head else 1,
        "time": iso(utcnow()),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": canonical_json(dict(details or {})),
        "prev_hash": head.hash if head else GENESIS_HASH,
    }
    event = AuditEvent(**fields, hash=compute_hash(fields))
    session.add(event)
    session.flush()
    return event


def sha256_text(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def model_call_digests(prompt: str, outputs_json: str) -> dict[str, str]:
    """The digests a model call's audit event carries: of the prompt and of the outputs exactly as
    stored (the JSON text of the `outputs` column)."""
    return {"prompt_sha256": sha256_text(prompt), "outputs_sha256": sha256_text(outputs_json)}


def event_record(event: AuditEvent) -> dict[str, Any]:
    """The exported form of an event: every hashed field plus the hash, nothing else."""
    return {name: getattr(event, name) for name in (*HASHED_FIELDS, "hash")}


@dataclasses.dataclass
class Verification:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.count} events, head seq {self.head_seq} {self.head_hash}"
        return f"audit chain broken at seq {self.bad_seq}: {self.problem}"


def verify_records(records: Iterable[Mapping[str, Any]], anchors: Mapping[int, str] | None = None) -> Verification:
    """Check a sequence of exported records, in the order given, from seq 1.

    Pure: works the same on database rows and on an auditor's JSON-lines file. Stops at the first
    broken link and names the sequence number where the chain stops being trustworthy.
    """
    anchors = dict(anchors or {})
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    for record in records:
        seq = record.get("seq")
        missing = [f for f in (*HASHED_FIELDS, "hash") if f not in record]
        if missing:
            return _broken(count, expected_seq, prev_hash, f"record lacks {', '.join(missing)}")
        if not isinstance(seq, int) or seq != expected_seq:
            if isinstance(seq, int) and seq > expected_seq:
                problem = f"events {expected_seq}..{seq - 1} are missing" if seq > expected_seq + 1 else f"event {expected_seq} is missing"
            else:
                problem = f"found seq {seq!r} where {expected_seq} belongs (inserted or reordered)"
            return _broken(count, expected_seq, prev_hash, problem)
        if record["prev_hash"] != prev_hash:
            return _broken(count, seq, prev_hash, "prev_hash does not match the previous event's hash")
        if compute_hash(record) != record["hash"]:
            return _broken(count, seq, prev_hash, "hash does not match the event's contents (altered)")
        if seq in anchors and anchors.pop(seq) != record["hash"]:
            return _broken(count, seq, prev_hash, "hash differs from the published anchor (chain rewritten)")
        prev_hash, expected_seq, count = record["hash"], seq + 1, count + 1
    if anchors:
        first = min(anchors)
        return _broken(count, first, prev_hash, f"anchored event {first} is gone (chain truncated)")
    return Verification(ok=True, count=count, head_seq=expected_seq - 1, head_hash=prev_hash)


def _broken(count: int, seq: int, prev_hash: str, problem: str) -> Verification:
    return Verification(ok=False, count=count, head_seq=seq - 1, head_hash=prev_hash, bad_seq=seq, problem=problem)


def iter_events(session: Session, since: int = 1, batch: int = 1000) -> Iterator[AuditEvent]:
    """Events in seq order, fetched in batches so a long log never sits in memory at once."""
    last = since - 1
    while True:
        rows = session.exec(select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def verify_database(session: Session, anchors: Mapping[int, str] | None = None) -> Verification:
    return verify_records((event_record(e) for e in iter_events(session)), anchors)


def head(session: Session) -> AuditEvent | None:
    return session.exec(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()


def tail(session: Session, n: int) -> list[AuditEvent]:
    rows = session.exec(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(n)).all()
    return list(reversed(rows))


def read_jsonl(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"line {number} of the export is not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise BadInput(f"line {number} of the export is not a JSON object")
        yield record


def parse_anchor(text_value: str) -> tuple[int, str]:
    seq_text, sep, hash_value = text_value.partition(":")
    if not sep or not seq_text.isdigit() or len(hash_value) != 64 or any(c not in "0123456789abcdef" for c in hash_value):
        raise BadInput(f"bad anchor {text_value!r}: expected SEQ:HASH with a 64-hex-digit SHA-256")
    return int(seq_text), hash_value


@dataclasses.dataclass
class CallVerification:
    """The model calls against their audit events: how many rows were checked, and what is wrong."""

    checked: int
    bad: int
    problems: list[str]  # the first MAX_PROBLEMS_NAMED, each naming the call and the event's seq

    @property
    def ok(self) -> bool:
        return self.bad == 0

    def summary(self) -> str:
        if self.ok:
            return f"model calls match their audit events: {self.checked} calls"
        more = f"\n  ... and {self.bad - len(self.problems)} more" if self.bad > len(self.problems) else ""
        return (f"model calls do not match their audit events: {self.bad} problems in {self.checked} calls\n  "
                + "\n  ".join(self.problems) + more)


def _call_problem(call: ModelCall, event: AuditEvent | None) -> str | None:
    """What is wrong with one model call and the event it points at, or None."""
    where = f"model call {call.id} (audit event seq {call.audit_seq})"
    if event is None:
        return f"{where}: the audit event is missing"
    if event.action != f"model.{call.endpoint}":
        return f"{where}: the event is {event.action!r}, not a model.{call.endpoint} call"
    try:
        details = json.loads(event.details)
    except ValueError:
        details = None
    if not isinstance(details, dict) or details.get("call") != call.id:
        recorded = details.get("call") if isinstance(details, dict) else None
        return f"{where}: the event records call {recorded!r}, not this one"
    digests = model_call_digests(call.prompt, call.outputs)
    for field, what in (("prompt_sha256", "prompt"), ("outputs_sha256", "outputs")):
        if details.get(field) != digests[field]:
            return f"{where}: its {what} does not match the {field} in the event (edited in the database)"
    for field in ("status", "prompt_tokens", "completion_tokens"):
        if details.get(field) != getattr(call, field):
            return f"{where}: its {field} {getattr(call, field)!r} differs from the event's {details.get(field)!r}"
    return None


def verify_model_calls(session: Session, batch: int = 1000) -> CallVerification:
    """Check every `model_call` row against the audit event it points at (`audit_seq`): the event
    exists, records this call of this endpoint, and its digests of the prompt and the outputs, its
    status and its token counts match the row. Then check that every model call event still has
    its row (a deleted call hides what was asked from review). Meaningful when the chain itself
    verifies (`verify_database`): only then are the events' digests the ones written at the time."""
    problems: list[str] = []
    checked = bad = 0

    def found(problem: str) -> None:
        nonlocal bad
        bad += 1
        if len(problems) < MAX_PROBLEMS_NAMED:
            problems.append(problem)

    last: tuple[int, str] = (0, "")
    while True:  # rows in (audit_seq, id) order, a batch at a time
        rows = session.exec(select(ModelCall).where(
            (ModelCall.audit_seq > last[0]) | ((ModelCall.audit_seq == last[0]) & (ModelCall.id > last[1])))
            .order_by(ModelCall.audit_seq, ModelCall.id).limit(batch)).all()
        if not rows:
            break
        events = {e.seq: e for e in session.exec(select(AuditEvent).where(
            AuditEvent.seq.in_({r.audit_seq for r in rows}))).all()}
        for call in rows:
            checked += 1
            problem = _call_problem(call, events.get(call.audit_seq))
            if problem:
                found(problem)
        last = (rows[-1].audit_seq, rows[-1].id)

    last_seq = 0
    while True:  # model call events in seq order, a batch at a time
        events = session.exec(select(AuditEvent).where(AuditEvent.seq > last_seq,
                                                       AuditEvent.action.in_(MODEL_CALL_ACTIONS))
                              .order_by(AuditEvent.seq).limit(batch)).all()
        if not events:
            break
        recorded = {}
        for event in events:
            try:
                details = json.loads(event.details)
            except ValueError:
                details = None
            recorded[event.seq] = details.get("call") if isinstance(details, dict) else None
        present = set(session.exec(select(ModelCall.id).where(
            ModelCall.id.in_({c for c in recorded.values() if isinstance(c, str)}))).all())
        for seq, call_id in recorded.items():
            if call_id not in present:
                found(f"audit event seq {seq} records model call {call_id!r}, which is not in the model_call table "
                      "(deleted)")
        last_seq = events[-1].seq
    return CallVerification(checked=checked, bad=bad, problems=problems)
