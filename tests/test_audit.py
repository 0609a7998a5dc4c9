"""The audit chain: intact when built by the registry, broken visibly by any tampering, never
forked by concurrent appenders. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from enclave.registry import audit, people
from enclave.registry.db import make_engine, session_scope

from tests.helpers import OPERATOR, tamper

ROOT = Path(__file__).resolve().parents[1]


def _fill(engine, n: int = 10, prefix: str = "user") -> None:
    """On a fresh registry (the operator is seq 1), n events in all: n-1 scholars."""
    for i in range(n - 1):
        with session_scope(engine) as s:
            people.add_person(s, OPERATOR, f"{prefix}{i}", f"User {i}", f"u{i}@example.org")


def _verify(engine, anchors=None) -> audit.Verification:
    with session_scope(engine) as s:
        return audit.verify_database(s, anchors)


def _export(engine) -> list[dict]:
    with session_scope(engine) as s:
        return [audit.event_record(e) for e in audit.iter_events(s)]


def test_registry_changes_build_an_intact_chain(engine):
    _fill(engine, 10)
    result = _verify(engine)
    assert result.ok, result.summary()
    assert (result.count, result.head_seq) == (10, 10)
    records = _export(engine)
    assert records[0]["prev_hash"] == audit.GENESIS_HASH
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(records, records[1:]))
    assert json.loads(records[1]["details"])["email"] == "u0@example.org"


def test_hash_covers_every_field():
    base = {"seq": 3, "time": "2026-01-01T00:00:00.000000Z", "actor": "op", "action": "a", "subject": "s",
            "details": "{}", "prev_hash": "0" * 64}
    seen = {audit.compute_hash(base)}
    for field, other in [("seq", 4), ("time", "2026-01-01T00:00:00.000001Z"), ("actor", "op2"), ("action", "b"),
                         ("subject", "t"), ("details", '{"x":1}'), ("prev_hash", "1" * 64)]:
        seen.add(audit.compute_hash({**base, field: other}))
    assert len(seen) == 8


def test_database_refuses_update_and_delete_of_events(engine):
    _fill(engine, 3)
    for statement in ("UPDATE audit_event SET actor = 'mallory' WHERE seq = 2", "DELETE FROM audit_event WHERE seq = 2"):
        with pytest.raises(DatabaseError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    assert _verify(engine).ok


@pytest.mark.parametrize("attack, bad_seq", [
    ("edit_details", 5),
    ("edit_actor", 5),
    ("delete_middle", 5),
    ("swap_two", 4),
    ("insert_forged", 6),
    ("rewrite_with_recomputed_hash", 6),
])
def test_tampering_is_detected_and_located(engine, attack, bad_seq):
    _fill(engine, 10)
    with tamper(engine) as conn:
        if attack == "edit_details":
            conn.execute(text("UPDATE audit_event SET details = '{\"email\":\"x@evil.example\"}' WHERE seq = 5"))
        elif attack == "edit_actor":
            conn.execute(text("UPDATE audit_event SET actor = 'someone-else' WHERE seq = 5"))
        elif attack == "delete_middle":
            conn.execute(text("DELETE FROM audit_event WHERE seq = 5"))
        elif attack == "swap_two":
            # Reorder: events 4 and 6 trade places (their seq numbers swap).
            conn.execute(text("UPDATE audit_event SET seq = -4 WHERE seq = 4"))
            conn.execute(text("UPDATE audit_event SET seq = 4 WHERE seq = 6"))
            conn.execute(text("UPDATE audit_event SET seq = 6 WHERE seq = -4"))
        elif attack == "insert_forged":
            # Make room at seq 5 and insert an event whose hash is right for its own fields, relinking
            # the next event to it (the unique prev_hash constraint forbids a plain fork).
            for seq in range(10, 4, -1):
                conn.execute(text("UPDATE audit_event SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq})
            prev = conn.execute(text("SELECT hash FROM audit_event WHERE seq = 4")).scalar_one()
            fields = {"seq": 5, "time": "2026-01-01T00:00:00.000000Z", "actor": OPERATOR, "action": "person.add",
                      "subject": "person:ghost", "details": "{}", "prev_hash": prev}
            forged = audit.compute_hash(fields)
            conn.execute(text("UPDATE audit_event SET prev_hash = :h WHERE seq = 6"), {"h": forged})
            conn.execute(text("INSERT INTO audit_event (seq, time, actor, action, subject, details, prev_hash, hash) "
                              "VALUES (:seq, :time, :actor, :action, :subject, :details, :prev_hash, :hash)"),
                         {**fields, "hash": forged})
        elif attack == "rewrite_with_recomputed_hash":
            # The attacker recomputes the edited event's own hash; the next link still breaks.
            row = dict(conn.execute(text("SELECT * FROM audit_event WHERE seq = 5")).mappings().one())
            row["actor"] = "someone-else"
            conn.execute(text("UPDATE audit_event SET actor = :actor, hash = :hash WHERE seq = 5"),
                         {"actor": row["actor"], "hash": audit.compute_hash(row)})
    result = _verify(engine)
    assert not result.ok
    assert result.bad_seq == bad_seq, result.summary()


def test_a_fully_rewritten_tail_is_caught_by_a_published_anchor(engine):
    _fill(engine, 6)
    with session_scope(engine) as s:
        anchor = (audit.head(s).seq, audit.head(s).hash)
    _fill(engine, 5, prefix="later")  # four more events after the anchor was published
    # The strongest attacker rewrites event 4 and recomputes every later hash: the bare chain is
    # consistent again, but it no longer passes through the published head.
    with tamper(engine) as conn:
        rows = [dict(r) for r in conn.execute(text("SELECT * FROM audit_event ORDER BY seq")).mappings()]
        prev = rows[2]["hash"]
        for row in rows[3:]:
            if row["seq"] == 4:
                row["actor"] = "someone-else"
            row["prev_hash"] = prev
            row["hash"] = prev = audit.compute_hash(row)
            conn.execute(text("UPDATE audit_event SET actor = :actor, prev_hash = :prev_hash, hash = :hash WHERE seq = :seq"), row)
    assert _verify(engine).ok
    result = _verify(engine, {anchor[0]: anchor[1]})
    assert not result.ok and result.bad_seq == anchor[0]


def test_truncation_is_caught_by_an_anchor(engine):
    _fill(engine, 8)
    with session_scope(engine) as s:
        anchor = {audit.head(s).seq: audit.head(s).hash}
    with tamper(engine) as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq >= 7"))
    assert _verify(engine).ok  # a shorter chain is still a chain...
    result = _verify(engine, anchor)
    assert not result.ok and result.bad_seq == 8 and "truncated" in result.problem


def test_twenty_concurrent_appenders_leave_one_valid_chain(engine):
    start = threading.Barrier(20)
    errors: list[BaseException] = []

    def appender(i: int) -> None:
        try:
            start.wait()
            with session_scope(engine) as s:
                people.add_person(s, OPERATOR, f"racer{i}", f"Racer {i}", f"r{i}@example.org")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    result = _verify(engine)
    assert result.ok, result.summary()
    assert result.count == 21
    records = _export(engine)
    assert [r["seq"] for r in records] == list(range(1, 22))
    assert len({r["prev_hash"] for r in records}) == 21  # no fork: every link has one successor


def test_concurrent_appenders_in_separate_processes(db_url, engine):
    """Real operators run separate `enclave` processes; they too must queue, not fork."""
    code = (
        "import sys\n"
        "from enclave.registry import people\n"
        "from enclave.registry.db import make_engine, session_scope\n"
        "e = make_engine(sys.argv[1])\n"
        "with session_scope(e) as s:\n"
        "    people.add_person(s, 'op', sys.argv[2], 'P', sys.argv[2] + '@example.org')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url, f"proc{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    failures = [p.stderr.read() for p in procs if p.wait(180) != 0]
    assert not failures, failures[0]
    result = _verify(engine)
    assert result.ok and result.count == 21, result.summary()


def test_export_verifies_without_the_database(engine, tmp_path):
    _fill(engine, 5)
    records = _export(engine)
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert audit.verify_records(audit.read_jsonl(path.read_text().splitlines())).ok
    # The dependency-free verifier an auditor would run agrees, both ways.
    script = ROOT / "scripts" / "verify_audit.py"
    ok = subprocess.run([sys.executable, "-I", str(script), str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "5 events" in ok.stdout
    records[2]["subject"] = "person:nobody"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = subprocess.run([sys.executable, "-I", str(script), str(path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "seq 3" in bad.stderr
    assert audit.verify_records(records).bad_seq == 3


def test_verify_records_reports_malformed_input():
    assert audit.verify_records([{"seq": 1}]).problem.startswith("record lacks")
    assert audit.verify_records([]).ok


# -- model calls against the digests in their events ------------------------------------------------


def _model_calls(engine, n: int = 3) -> list[tuple[str, int]]:
    """n settled model calls through the gateway's real metering (reserve, settle): (call id, seq)."""
    from enclave.gateway import quota
    from enclave.registry import access, grants
    from enclave.registry.models import ModelCall
    from tests.helpers import approved_project

    approved_project(engine, "calls", "sam")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "calls", requests_per_minute=1000)
    made = []
    for i in range(n):
        with session_scope(engine) as s:
            granted = access.resolve(s, "sam", "calls")
            ticket = quota.reserve(s, granted, "generate" if i % 2 == 0 else "score", 10)
            outputs = [f"answer {i}"] if i % 2 == 0 else {"tokens": [{"token": "x", "logprob": -1.5}],
                                                         "total_logprob": -1.5, "perplexity": 4.482}
            record = quota.CallRecord(status="ok", prompt=f"question {i}", outputs=outputs, prompt_tokens=2,
                                      completion_tokens=3 if i % 2 == 0 else 0, latency_ms=1)
            quota.settle(s, ticket, 5, record, actor="sam", project_slug="calls")
            made.append((ticket.id, s.get(ModelCall, ticket.id).audit_seq))
    return made


def _verify_calls(engine) -> audit.CallVerification:
    with session_scope(engine) as s:
        return audit.verify_model_calls(s)


@pytest.mark.parametrize("attack, expected", [
    ("edit_prompt", "its prompt does not match the prompt_sha256"),
    ("edit_outputs", "its outputs does not match the outputs_sha256"),
    ("edit_tokens", "its completion_tokens 0 differs from the event's 3"),
    ("point_at_another_call", "the event records call"),
    ("point_at_another_event", "the event is 'person.add', not a model.generate call"),
    ("point_at_nothing", "the audit event is missing"),
    ("delete_row", "which is not in the model_call table (deleted)"),
])
def test_a_tampered_model_call_is_named_with_its_event(engine, attack, expected):
    """Attack: someone with write access to the database rewrites what a scholar asked or was
    answered (to hide it from review's provenance check), or removes the call. The chain itself
    stays intact; the digests in the call's event give it away."""
    calls = _model_calls(engine)
    assert _verify_calls(engine).ok and _verify_calls(engine).checked == 3
    (victim, seq), (_, other_seq) = calls[0], calls[2]  # two generate calls
    statements = {
        "edit_prompt": "UPDATE model_call SET prompt = 'an innocent question' WHERE id = :id",
        "edit_outputs": "UPDATE model_call SET outputs = '[\"an innocent answer\"]' WHERE id = :id",
        "edit_tokens": "UPDATE model_call SET completion_tokens = 0 WHERE id = :id",
        "point_at_another_call": f"UPDATE model_call SET audit_seq = {other_seq} WHERE id = :id",
        "point_at_another_event": "UPDATE model_call SET audit_seq = 1 WHERE id = :id",
        "point_at_nothing": "UPDATE model_call SET audit_seq = 999999 WHERE id = :id",
        "delete_row": "DELETE FROM model_call WHERE id = :id",
    }
    with tamper(engine) as conn:
        conn.execute(text(statements[attack]), {"id": victim})
    assert _verify(engine).ok  # the chain cannot see it...
    result = _verify_calls(engine)  # ...the model-call check does
    assert not result.ok and result.bad == 1, result.summary()
    # The event named: the call's own, or the one its row was repointed at.
    named = {"point_at_another_call": other_seq, "point_at_another_event": 1, "point_at_nothing": 999999}.get(attack, seq)
    assert expected in result.problems[0] and f"seq {named}" in result.problems[0], result.problems
    if attack != "delete_row":
        assert f"model call {victim}" in result.problems[0]
    else:
        assert repr(victim) in result.problems[0]


def test_audit_verify_fails_on_a_tampered_model_call(engine, db_url):
    """`enclave audit verify`, as an operator runs it: exit 0 while the calls match, 1 with a line
    naming the call and its event once a prompt was edited in the database."""
    (victim, seq), *_ = _model_calls(engine)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}, "ENCLAVE_DB_URL": db_url}

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "enclave.cli", "audit", "verify"], env=env,
                              capture_output=True, text=True, timeout=120)

    intact = verify()
    assert intact.returncode == 0, intact.stderr
    assert "audit chain intact" in intact.stdout and "model calls match their audit events: 3 calls" in intact.stdout
    with tamper(engine) as conn:
        conn.execute(text("UPDATE model_call SET prompt = 'an innocent question' WHERE id = :id"), {"id": victim})
    broken = verify()
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "audit chain intact" in broken.stdout
    assert f"model call {victim} (audit event seq {seq}): its prompt does not match" in broken.stderr, broken.stderr


def test_many_bad_calls_are_counted_past_the_ones_named(engine):
    calls = _model_calls(engine, n=audit.MAX_PROBLEMS_NAMED + 5)
    with tamper(engine) as conn:
        conn.execute(text("UPDATE model_call SET prompt = 'x'"))
    result = _verify_calls(engine)
    assert (result.bad, len(result.problems), result.checked) == (len(calls), audit.MAX_PROBLEMS_NAMED, len(calls))
    assert "and 5 more" in result.summary()
