"""Metering from the attacker's side: concurrent calls never overspend a grant, on SQLite and on
PostgreSQL; refusals carry the right status and Retry-After; a charge is never dropped or counted
twice."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
from sqlmodel import select

from enclave.gateway import quota
from enclave.registry import access, audit, grants
from enclave.registry.db import session_scope
from enclave.registry.models import ModelCall, Reservation, UsageDay, UsageTotal
from enclave.web.errors import refusal

from tests.gateway_fixtures import serve, tiny_model_dir  # noqa: F401  (fixture)
from tests.helpers import OPERATOR, approved_project


def _setup(engine, **grant):
    approved_project(engine, "metered", "sam")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "metered", **grant)


def _reserve(engine, tokens, endpoint="generate", now=None, completion=0):
    with session_scope(engine) as s:
        granted = access.resolve(s, "sam", "metered")
        return quota.reserve(s, granted, endpoint, tokens, completion_tokens=completion, now=now)


def _settle(engine, ticket, charged):
    record = quota.CallRecord(status="ok", prompt="p", outputs=["o"], prompt_tokens=1,
                              completion_tokens=max(0, charged - 1), latency_ms=1)
    with session_scope(engine) as s:
        return quota.settle(s, ticket, charged, record, actor="sam", project_slug="metered")


def _account(engine):
    with session_scope(engine) as s:
        return s.get(UsageTotal, access.resolve(s, "sam", "metered").project.id)


def test_two_hundred_concurrent_calls_never_overspend(engine):
    _setup(engine, tokens_total=1000, tokens_per_day=1000, requests_per_minute=100_000)
    start = threading.Barrier(200)
    outcomes: list[tuple[str, int]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        start.wait()
        try:
            ticket = _reserve(engine, 10)
        except quota.QuotaExhausted:
            with lock:
                outcomes.append(("refused", 0))
            return
        charged = random.Random(i).randint(1, 10)
        assert _settle(engine, ticket, charged)
        with lock:
            outcomes.append(("ok", charged))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ok = [c for kind, c in outcomes if kind == "ok"]
    assert len(outcomes) == 200
    # Worst case 10 each against 1,000: at most 100 may be admitted at once; because settled calls
    # give back what they did not use, more may be admitted later, but never beyond the grant.
    assert len(ok) >= 100
    account = _account(engine)
    assert account.tokens_reserved == 0
    assert account.tokens_used == sum(ok) <= 1000
    assert account.calls == len(ok)
    with session_scope(engine) as s:
        assert len(s.exec(select(ModelCall)).all()) == len(ok)
        assert audit.verify_database(s).ok


def test_rate_limit_answers_429_with_retry_after(engine):
    _setup(engine, requests_per_minute=3)
    now = dt.datetime(2027, 1, 1, 12, 0, 45, tzinfo=dt.timezone.utc)
    for _ in range(3):
        _reserve(engine, 1, now=now)
    with pytest.raises(quota.RateLimited) as refused:
        _reserve(engine, 1, now=now)
    answer = refusal(refused.value)
    assert (answer.status, answer.code, answer.headers) == (429, "rate_limited", {"Retry-After": "15"})
    assert refused.value.retry_after == 15
    _reserve(engine, 1, now=now + dt.timedelta(seconds=20))  # the next minute


def test_per_request_cap_and_daily_quota(engine):
    _setup(engine, tokens_total=10_000, tokens_per_day=100, max_tokens_per_request=50)
    with pytest.raises(quota.RequestTooLarge) as too_big:
        _reserve(engine, 60, completion=60)
    assert (refusal(too_big.value).status, refusal(too_big.value).code) == (400, "request_too_large")
    now = dt.datetime(2027, 1, 1, 23, 0, tzinfo=dt.timezone.utc)
    _settle(engine, _reserve(engine, 90, now=now), 90)
    with pytest.raises(quota.QuotaExhausted, match="daily") as daily:
        _reserve(engine, 20, now=now)
    answer = refusal(daily.value)
    assert (answer.status, answer.code, answer.headers) == (402, "quota_exhausted", {"Retry-After": "3600"})
    assert daily.value.retry_after == 3600
    _reserve(engine, 20, now=now + dt.timedelta(hours=2))  # a new day


def test_probability_calls_have_their_own_cap(engine):
    _setup(engine, logprob_calls_per_day=2)
    for endpoint in ("score", "next-token"):
        _reserve(engine, 1, endpoint=endpoint)
    with pytest.raises(quota.QuotaExhausted, match="probability-bearing"):
        _reserve(engine, 1, endpoint="score")
    _reserve(engine, 1, endpoint="generate")  # generation is not capped by it


def test_settling_twice_changes_nothing(engine):
    _setup(engine, tokens_total=100)
    ticket = _reserve(engine, 30)
    assert _settle(engine, ticket, 20) is True
    assert _settle(engine, ticket, 20) is False
    account = _account(engine)
    assert (account.tokens_used, account.tokens_reserved, account.calls) == (20, 0, 1)


def test_charge_never_exceeds_the_reservation(engine):
    _setup(engine, tokens_total=100)
    _settle(engine, _reserve(engine, 30), 500)
    assert _account(engine).tokens_used == 30


def test_abandoned_reservations_are_charged_in_full(engine):
    _setup(engine, tokens_total=100)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    ticket = _reserve(engine, 40, now=old)
    with session_scope(engine) as s:
        assert quota.sweep_stale(s) == 1
    account = _account(engine)
    assert (account.tokens_used, account.tokens_reserved) == (40, 0)
    assert _settle(engine, ticket, 5) is False  # the late settle of a swept call is ignored
    with session_scope(engine) as s:
        assert s.get(Reservation, ticket.id).state == "expired"
        day = s.exec(select(UsageDay)).one()
        assert (day.tokens_used, day.tokens_reserved) == (40, 0)
        assert audit.head(s).action == "model.charge_abandoned"


def test_usage_report(engine):
    _setup(engine, tokens_total=500, tokens_per_day=200)
    _settle(engine, _reserve(engine, 50), 25)
    with session_scope(engine) as s:
        report = quota.usage(s, access.resolve(s, "sam", "metered"))
    assert report["tokens"] == {"limit": 500, "used": 25, "reserved": 0, "remaining": 475}
    assert report["tokens_today"]["remaining"] == 175
    assert report["requests_this_minute"]["used"] == 1


def test_one_token_generations_count_against_the_probability_cap(engine):
    """Attack: `generate` with max_new_tokens=1 and a chosen seed answers "is CDF(t) > u", so it is a
    probability-bearing call; it must use up the same daily allowance as score and next-token."""
    _setup(engine, logprob_calls_per_day=3)
    _reserve(engine, 6, endpoint="generate", completion=1)
    _reserve(engine, 1, endpoint="score")
    _reserve(engine, 6, endpoint="generate", completion=1)
    with pytest.raises(quota.QuotaExhausted, match="probability-bearing") as refused:
        _reserve(engine, 6, endpoint="generate", completion=1)
    assert refusal(refused.value).status == 402
    with pytest.raises(quota.QuotaExhausted, match="probability-bearing"):
        _reserve(engine, 1, endpoint="score")
    _reserve(engine, 10, endpoint="generate", completion=5)  # longer generations are not capped by it
    with session_scope(engine) as s:
        assert s.exec(select(UsageDay)).one().logprob_calls == 3


def test_one_token_samples_are_probability_bearing_whatever_their_number(engine):
    """n one-token samples of one prompt are n draws from its next-token distribution: still a
    probability-bearing call when the caller says how many tokens each sample may have."""
    _setup(engine, logprob_calls_per_day=1)
    with session_scope(engine) as s:
        quota.reserve(s, access.resolve(s, "sam", "metered"), "generate", 8, completion_tokens=4, max_new_tokens=1)
    with pytest.raises(quota.QuotaExhausted, match="probability-bearing"), session_scope(engine) as s:
        quota.reserve(s, access.resolve(s, "sam", "metered"), "generate", 8, completion_tokens=4, max_new_tokens=1)
    with session_scope(engine) as s:  # two tokens each, two samples: an ordinary generation
        quota.reserve(s, access.resolve(s, "sam", "metered"), "generate", 8, completion_tokens=4, max_new_tokens=2)


def test_one_token_generate_through_the_gateway_uses_up_the_probability_cap(engine, tiny_model_dir):  # noqa: F811
    """The same attack over HTTP: seeded one-token generations are refused once the day's
    probability-bearing calls are spent, and they spend the allowance score needs too."""
    with serve(engine, tiny_model_dir, grant={"logprob_calls_per_day": 2}) as gw, gw.client() as c:
        for seed in (1, 2):
            assert c.post("/v1/generate", json={"prompt": "The", "max_new_tokens": 1, "seed": seed}).status_code == 200
        for path, body in [("/v1/generate", {"prompt": "The", "max_new_tokens": 1, "seed": 3}),
                           ("/v1/score", {"text": "The end"})]:
            refused = c.post(path, json=body)
            assert refused.status_code == 402 and "probability-bearing" in refused.json()["message"], refused.text
        assert c.post("/v1/generate", json={"prompt": "The", "max_new_tokens": 3, "seed": 4}).status_code == 200
