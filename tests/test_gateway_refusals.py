"""Refused gateway calls leave a trace on the audit log, one event per minute and caller however
many calls there were, and nothing is tokenised for a caller the registry would refuse. Runs on
SQLite and on PostgreSQL where the registry is involved."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import json
import threading
import time

import httpx
import pytest
from sqlmodel import select

from enclave.gateway import refusals
from enclave.gateway.deps import GatewayState
from enclave.gateway.settings import GatewaySettings
from enclave.registry import audit
from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent, ModelCall
from enclave.web.hub_auth import HubIdentity

from tests.gateway_fixtures import SCHOLAR, serve, tiny_model_dir  # noqa: F401  (fixture)

BODIES = {"/v1/generate": {"prompt": "hi"}, "/v1/score": {"text": "hi"}, "/v1/next-token": {"prompt": "hi"}}
LONG_PROMPT = "lorem ipsum dolor sit amet " * 7_400  # just under the 200,000 characters a prompt may have


def _refusal_events(db) -> list[dict]:
    with session_scope(db) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.action == refusals.ACTION).order_by(AuditEvent.seq)).all()
        return [{"subject": e.subject, "actor": e.actor, **json.loads(e.details)} for e in rows]


def _token_caller(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _minute(iso_text: str) -> dt.datetime:
    return dt.datetime.strptime(iso_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def test_a_burst_of_refusals_is_one_event_per_minute_and_caller(engine, tiny_model_dir):
    """Attack: flood the gateway with bad tokens and over-quota calls. Each refusal is counted; the
    audit log gets one event per (minute, caller, reason), with the count, not one per call; a
    clean shutdown writes the minute still running."""
    calls = {("bad-token-one", "/v1/generate"): 30, ("bad-token-two", "/v1/score"): 20,
             ("bad-token-two", "/v1/usage"): 5, (None, "/v1/next-token"): 7}
    started = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    with serve(engine, tiny_model_dir, grant={"tokens_total": 20}) as gw:
        for (token, path), n in calls.items():
            with gw.client(key=token) as c:
                for _ in range(n):
                    reply = c.get(path) if path == "/v1/usage" else c.post(path, json=BODIES[path])
                    assert reply.status_code == 401, reply.text
        with gw.client() as c:  # the scholar over quota: 12 refusals of one person
            for _ in range(12):
                reply = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 60})
                assert reply.status_code == 402, reply.text
            assert c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
    ended = dt.datetime.now(dt.timezone.utc)
    events = _refusal_events(engine)
    totals: collections.Counter = collections.Counter()
    endpoints: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    minutes: dict[tuple, list] = collections.defaultdict(list)
    for e in events:
        group = (e["caller"], e["reason"], e["status"])
        totals[group] += e["count"]
        endpoints[group].update(e["endpoints"])
        minutes[group].append(e["minute"])
        assert e["subject"] == e["caller"] and e["actor"] == "system"
        assert started <= _minute(e["minute"]) <= ended and _minute(e["minute"]).second == 0
    assert totals == {
        (_token_caller("bad-token-one"), "unauthenticated", 401): 30,
        (_token_caller("bad-token-two"), "unauthenticated", 401): 25,
        ("address:127.0.0.1", "unauthenticated", 401): 7,
        (f"person:{SCHOLAR}", "quota_exhausted", 402): 12,
    }
    assert endpoints[(_token_caller("bad-token-two"), "unauthenticated", 401)] == {"/v1/score": 20, "/v1/usage": 5}
    # One event per minute per group: 74 refusals make four events (a few more only if the
    # burst straddled a minute boundary).
    for group, seen in minutes.items():
        assert len(seen) == len(set(seen)) <= 2, (group, seen)
    assert len(events) <= 8
    with session_scope(engine) as s:
        assert audit.verify_database(s).ok
        assert len(s.exec(select(ModelCall)).all()) == 1  # refusals are no model calls


def test_refusals_after_identification_name_the_person(engine, tiny_model_dir):
    """A refused scholar (wrong project, rate limit) is named, not their token's digest."""
    with serve(engine, tiny_model_dir, grant={"requests_per_minute": 1}) as gw, gw.client() as c:
        for _ in range(3):
            assert c.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Enclave-Project": "other"}).status_code == 403
        replies = [c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 1}) for _ in range(3)]
        limited = sum(r.status_code == 429 for r in replies)
        assert limited >= 1
    counted = collections.Counter()
    for e in _refusal_events(engine):
        counted[(e["caller"], e["reason"], e["status"])] += e["count"]
    assert counted == {(f"person:{SCHOLAR}", "wrong_project", 403): 3, (f"person:{SCHOLAR}", "rate_limited", 429): limited}


class Clock:
    """A UTC clock the test moves by hand."""

    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _state(engine, tally: refusals.RefusalTally) -> GatewayState:
    settings = GatewaySettings(model_dir="unused", db_url=str(engine.url), heartbeat_s=1, dead_after_s=2)
    return GatewayState(settings=settings, db=engine, engine=None, identity=HubIdentity(None, "gateway"),
                        refusal_tally=tally)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_heartbeat_writes_a_minute_once_it_is_over(engine):
    clock = Clock(dt.datetime(2027, 3, 1, 12, 30, 10, tzinfo=dt.timezone.utc))
    state = _state(engine, refusals.RefusalTally(clock=clock))
    try:
        for _ in range(5):
            state.refusal_tally.add("token:abc", "unauthenticated", 401, "/v1/generate")
        time.sleep(2.5)  # two heartbeats within the minute: nothing written yet, the minute may grow
        assert _refusal_events(engine) == []
        state.refusal_tally.add("token:abc", "unauthenticated", 401, "/v1/score")
        clock.now += dt.timedelta(minutes=1)
        state.refusal_tally.add("token:abc", "unauthenticated", 401, "/v1/score")  # the next minute
        assert _wait_for(lambda: len(_refusal_events(engine)) == 1)
        first = _refusal_events(engine)[0]
        assert (first["minute"], first["count"], first["endpoints"]) == (
            "2027-03-01T12:30:00.000000Z", 6, {"/v1/generate": 5, "/v1/score": 1})
        assert state.refusal_tally.pending() == 1
    finally:
        state.close()  # shutdown writes the minute still running
    events = _refusal_events(engine)
    assert [(e["minute"], e["count"]) for e in events] == [("2027-03-01T12:30:00.000000Z", 6),
                                                          ("2027-03-01T12:31:00.000000Z", 1)]
    assert state.refusal_tally.pending() == 0


def test_memory_is_bounded_by_an_other_group():
    """Attack: a flood of distinct random tokens would make one group each; past the cap they are
    counted together in one `other` group, with their statuses and endpoints."""
    clock = Clock(dt.datetime(2027, 3, 1, 12, 30, tzinfo=dt.timezone.utc))
    tally = refusals.RefusalTally(max_groups=3, clock=clock)
    for i in range(1000):
        tally.add(f"token:{i:016x}", "unauthenticated", 401, "/v1/generate")
    clock.now += dt.timedelta(seconds=70)
    for i in range(10):
        tally.add(f"person:p{i}", "rate_limited", 429, "/v1/score")
    assert len(tally._groups) == 3 and tally.pending() == 1010
    groups = tally.take()  # the first minute is over: its groups and the `other` group it started
    assert [g.count for g in groups] == [1, 1, 1, 1007]
    other = groups[-1].details()
    assert (other["caller"], other["reason"], other["count"]) == ("other", "other", 1007)
    assert other["statuses"] == {"401": 997, "429": 10}
    assert other["endpoints"] == {"/v1/generate": 997, "/v1/score": 10}
    assert (other["minute"], other["until"]) == ("2027-03-01T12:30:00.000000Z", "2027-03-01T12:31:00.000000Z")
    assert tally.pending() == 0
    # A write that failed puts them back while new refusals come in: nothing lost, still bounded.
    for i in range(5):
        tally.add(f"token:new{i}", "unauthenticated", 401, "/v1/usage")
    tally.put_back(groups)
    assert tally.pending() == 1015 and len(tally._groups) == 3
    again = tally.take(everything=True)
    assert sum(g.count for g in again) == 1015 and len(again) == 4
    merged = next(g for g in again if g.key.caller == "other").details()
    assert merged["count"] == 1012
    assert (merged["minute"], merged["until"]) == ("2027-03-01T12:30:00.000000Z", "2027-03-01T12:31:00.000000Z")
    assert merged["statuses"] == {"401": 1002, "429": 10}


def test_a_registry_outage_keeps_the_refusals_for_the_next_beat(engine, tmp_path):
    clock = Clock(dt.datetime(2027, 3, 1, 12, 30, tzinfo=dt.timezone.utc))
    state = _state(engine, refusals.RefusalTally(clock=clock))
    state.close()  # no heartbeat: this test drives the flushes
    state.refusal_tally.add("token:abc", "unauthenticated", 401, "/v1/generate")
    clock.now += dt.timedelta(minutes=1)
    healthy = state.db
    from enclave.registry.db import make_engine

    state.db = make_engine(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}")  # cannot be opened
    assert state.flush_refusals() == 0 and state.refusal_tally.pending() == 1
    state.db = healthy
    assert state.flush_refusals() == 1 and state.refusal_tally.pending() == 0
    assert [e["count"] for e in _refusal_events(engine)] == [1]


# -- tokenising after authentication, off the event loop ----------------------------------------


class TokeniserSpy:
    """Counts the real tokenizer's `encode` calls and whether each ran on an event loop's thread."""

    def __init__(self, tokenizer):
        self.real = tokenizer.encode
        self.calls = 0
        self.on_loop = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        with self.lock:
            self.calls += 1
            self.on_loop += on_loop
        return self.real(*args, **kwargs)


@pytest.fixture
def spied(engine, tiny_model_dir, monkeypatch):
    with serve(engine, tiny_model_dir) as gw:
        spy = TokeniserSpy(gw.engine.tokenizer)
        monkeypatch.setattr(gw.engine.tokenizer, "encode", spy)
        yield gw, spy


@pytest.mark.parametrize("path, field", [("/v1/generate", "prompt"), ("/v1/score", "text"),
                                         ("/v1/next-token", "prompt")])
def test_an_unauthenticated_huge_prompt_is_refused_without_tokenising(spied, path, field):
    gw, spy = spied
    for key, headers, status in [(None, {}, 401), ("garbage-token", {}, 401), ("enk_abc_def", {}, 401),
                                 ("default", {"X-Enclave-Project": "not-mine"}, 403)]:
        with gw.client(key=key, **headers) as c:
            reply = c.post(path, json={field: LONG_PROMPT})
        assert reply.status_code == status, reply.text
    assert spy.calls == 0
    with gw.client() as c:  # the scholar: tokenised (too long for the context, so refused unpaid)
        reply = c.post(path, json={field: LONG_PROMPT})
    assert (reply.status_code, reply.json()["error"]) == (400, "context_exceeded")
    assert spy.calls == 1 and spy.on_loop == 0


def test_long_prompts_do_not_stall_the_event_loop(spied):
    """While scholars' 200,000-character prompts are tokenised, the gateway still answers others
    at once: the tokeniser runs on worker threads, not on the event loop."""
    gw, spy = spied
    stop = threading.Event()
    waits: list[float] = []

    def ping():
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            while not stop.is_set():
                began = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                waits.append(time.perf_counter() - began)
                time.sleep(0.01)

    def long_call():
        with gw.client() as c:
            assert c.post("/v1/score", json={"text": LONG_PROMPT}).status_code == 400

    pinger = threading.Thread(target=ping)
    pinger.start()
    time.sleep(0.3)
    callers = [threading.Thread(target=long_call) for _ in range(24)]
    began = time.perf_counter()
    for t in callers:
        t.start()
    for t in callers:
        t.join(120)
    busy = time.perf_counter() - began
    stop.set()
    pinger.join(30)
    assert spy.calls == 24 and spy.on_loop == 0
    # 24 tokenisations take a tenth of a second of CPU each; on the event loop a ping waited for
    # many of them in a row (2 s here); on worker threads it waits about 0.2 s.
    assert max(waits) < 0.75, (max(waits), busy)
