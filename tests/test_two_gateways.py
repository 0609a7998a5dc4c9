"""Horizontal scale (issue 15, item 3): two real gateway processes sharing one PostgreSQL registry,
hammered at once for the same project, as an operator would run them behind a load balancer.

- A small grant is never overspent: together the two gateways admit exactly as many calls as fit,
  every refusal is a 402 with a reason, and what callers were charged adds up to the registry's
  account, its model-call records and its audit chain.
- The per-minute rate limit is one limit across both gateways, not one per process.
- A revocation reaches both at once: every request sent after the revoking transaction commits is
  refused 403 `revoked`, on either gateway, while calls admitted before it settle normally.
- With a shared sampling secret, a seed gives the same text whichever gateway answers.
- Aggregate throughput of two gateways against one on the same workload is measured and printed
  (a benchmark line, never a timed assertion; `bench/gateway.py --gateways 2` does it at scale).

The gateways run as `python -m enclave.cli serve gateway` subprocesses (tests/test_gateway_crash.py's
`GatewayProcess`), so each has its own engine, heartbeat and connection pool: nothing is shared but
the database."""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time

import httpx
import pytest
from sqlmodel import select

from enclave.registry import audit, grants, keys, people, projects
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import ModelCall, Project, RateWindow, UsageTotal

from tests import pg
from tests.gateway_fixtures import build_tiny_model
from tests.helpers import OPERATOR, approved_project
from tests import test_gateway_crash as crash

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCHOLAR = "sam"
NEW_TOKENS = 16
PROMPT = "The census of the village recorded"


@pytest.fixture(scope="module")
def registry(pg_server):
    """A migrated registry on the shared PostgreSQL server, with one operator."""
    url = pg.create_database(pg_server)
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"], bootstrap=True)
    try:
        yield engine
    finally:
        engine.dispose()
        pg.drop_database(pg_server, url)


@pytest.fixture(scope="module")
def gateways(registry, tmp_path_factory):
    """Two gateway processes on one registry, one sampling secret (as an operator deploys them:
    the secret file is provisioned before either starts; see docs/operators.md)."""
    home = tmp_path_factory.mktemp("two-gateways")
    # A model whose next-token distributions are nearly flat, so a sampled text depends on the seed.
    model_dir = build_tiny_model(home / "flat-gpt2", sharpen=1)
    secret = home / "gateway" / "sampling-secret"
    secret.parent.mkdir()
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    db_url = registry.url.render_as_string(hide_password=False)
    with pytest.MonkeyPatch.context() as patch:
        # The deployment's heartbeat timings, not the crash test's short ones: on a loaded machine a
        # live gateway silent for 4 s would have its calls swept by the other (charged, unrecorded).
        patch.setattr(crash, "HEARTBEAT_S", 5)
        patch.setattr(crash, "DEAD_AFTER_S", 30)
        pair = [crash.GatewayProcess(db_url, model_dir, home, f"gateway-{i}") for i in (1, 2)]
    try:
        for gateway in pair:
            gateway.wait()
        yield [g.url for g in pair]
    finally:
        for gateway in pair:
            gateway.stop()


def _project(engine, slug: str, **grant) -> str:
    """An approved project of SCHOLAR with `grant`; returns an API key for it."""
    approved_project(engine, slug, SCHOLAR)
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, slug, **({"tokens_total": 10**9, "tokens_per_day": 10**9,
                                                  "requests_per_minute": 100_000, "max_tokens_per_request": 512} | grant))
        _, key = keys.issue(s, OPERATOR, SCHOLAR, slug)
    return key


def _project_id(engine, slug: str) -> int:
    with session_scope(engine) as s:
        return s.exec(select(Project).where(Project.slug == slug)).one().id


@dataclasses.dataclass(frozen=True)
class Reply:
    gateway: int
    sent: float  # time.monotonic() just before the request left
    status: int
    body: dict
    retry_after: str | None


def _ask(http: httpx.Client, gateway: int, body: dict) -> Reply:
    sent = time.monotonic()
    answer = http.post("/v1/generate", json=body)
    try:
        payload = answer.json()
    except ValueError:  # not JSON: kept, so that the assertions below show it
        payload = {"error": None, "raw": answer.text[:500]}
    return Reply(gateway, sent, answer.status_code, payload, answer.headers.get("Retry-After"))


def _call(n: int, **extra) -> dict:
    return {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, "seed": n} | extra


def hammer(urls: list[str], key: str, *, clients_per_gateway: int, keep_going, stop: threading.Event | None = None,
           body=_call, replies: list[Reply] | None = None) -> list[Reply]:
    """`clients_per_gateway` threads per gateway, each sending generate calls one after another
    while `keep_going(its own replies)` holds and `stop` is not set; every reply, in any order
    (also appended to `replies` as they come, for a caller watching from another thread)."""
    replies = [] if replies is None else replies
    failures: list[BaseException] = []
    stop = stop or threading.Event()

    def client(gateway: int, seed: int) -> None:
        mine: list[Reply] = []
        try:
            with httpx.Client(base_url=urls[gateway], headers={"Authorization": f"token {key}"}, timeout=60) as http:
                while keep_going(mine) and not stop.is_set():
                    mine.append(_ask(http, gateway, body(seed * 1000 + len(mine))))
                    replies.append(mine[-1])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(g, g * 100 + i), daemon=True)
               for g in range(len(urls)) for i in range(clients_per_gateway)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads), "a client hung"
    return replies


def test_two_gateways_never_overspend_one_grant(registry, gateways):
    grant_tokens = 1500
    key = _project(registry, "shared", tokens_total=grant_tokens)
    # Each thread goes on until it has been refused three times: the grant is spent many times over.
    replies = hammer(gateways, key, clients_per_gateway=8,
                     keep_going=lambda mine: sum(r.status != 200 for r in mine) < 3)

    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert {r.gateway for r in served} == {0, 1}, "both gateways must have admitted calls"
    assert {r.gateway for r in refused} == {0, 1}
    for r in refused:
        assert r.status == 402 and r.body["error"] == "quota_exhausted" and "quota" in r.body["message"], r
    # ignore_eos: every admitted call produced its worst case, so each was charged the same.
    cost = {r.body["usage"]["total_tokens"] for r in served}
    assert len(cost) == 1, cost
    [per_call] = cost
    charged = sum(r.body["usage"]["total_tokens"] for r in served)

    project_id = _project_id(registry, "shared")
    with session_scope(registry) as s:
        account = s.get(UsageTotal, project_id)
        calls = s.exec(select(ModelCall).where(ModelCall.project_id == project_id)).all()
        assert audit.verify_database(s).ok
    assert account.tokens_reserved == 0
    assert account.tokens_used == charged <= grant_tokens  # never overspent
    assert grant_tokens - charged < per_call  # and nothing admissible was refused: exactly what fits
    assert account.calls == len(served) == len(calls) == grant_tokens // per_call
    assert sum(c.prompt_tokens + c.completion_tokens for c in calls) == charged
    assert {c.id for c in calls} == {r.body["id"] for r in served}


def test_the_rate_limit_is_one_limit_across_both(registry, gateways):
    rpm = 20
    key = _project(registry, "paced", requests_per_minute=rpm)
    replies = hammer(gateways, key, clients_per_gateway=4, keep_going=lambda mine: len(mine) < 8)

    served = [r for r in replies if r.status == 200]
    limited = [r for r in replies if r.status != 200]
    assert len(replies) == 64 and limited
    for r in limited:
        assert r.status == 429 and r.body["error"] == "rate_limited" and r.body["message"], r
        assert 1 <= int(r.retry_after) <= 60
    with session_scope(registry) as s:
        windows = s.exec(select(RateWindow).where(RateWindow.project_id == _project_id(registry, "paced"))).all()
    assert all(w.requests <= rpm for w in windows), [w.requests for w in windows]
    assert sum(w.requests for w in windows) == len(served) <= rpm * len(windows)  # not rpm per gateway
    if len(windows) == 1:  # the run did not cross a minute boundary
        assert len(served) == rpm


def test_a_revocation_reaches_both_gateways_at_once(registry, gateways):
    key = _project(registry, "doomed")
    stop = threading.Event()
    replies: list[Reply] = []
    broken: list[BaseException] = []

    def keep_hammering() -> None:
        try:
            hammer(gateways, key, clients_per_gateway=3, keep_going=lambda mine: True, stop=stop, replies=replies)
        except BaseException as exc:  # noqa: BLE001 - reported below
            broken.append(exc)

    background = threading.Thread(target=keep_hammering, daemon=True)
    background.start()
    probes: list[Reply] = []
    try:
        deadline = time.monotonic() + 60
        while not {p.gateway for p in probes if p.status == 200} >= {0, 1}:  # both are serving it
            assert time.monotonic() < deadline, "the gateways did not serve the project"
            probes += [_one(gateways, key, g) for g in (0, 1)]
        with session_scope(registry) as s:
            projects.transition(s, OPERATOR, "doomed", "revoke", reason="breach of terms")
        revoked_at = time.monotonic()  # the transaction has committed

        # The very next request on each gateway is refused, with the reason.
        for g in (0, 1):
            first = _one(gateways, key, g)
            assert (first.status, first.body["error"]) == (403, "revoked"), first
            assert "breach of terms" in first.body["message"]
        # The hammer goes on until each gateway has answered several of its calls sent afterwards.
        while min(sum(r.gateway == g and r.sent > revoked_at for r in list(replies)) for g in (0, 1)) < 5:
            assert time.monotonic() < deadline + 60, "the hammer stopped sending"
            time.sleep(0.1)
    finally:
        stop.set()
        background.join(120)
    assert not background.is_alive() and not broken, broken

    after = [r for r in replies if r.sent > revoked_at]
    assert {r.gateway for r in after} == {0, 1}
    assert all((r.status, r.body["error"]) == (403, "revoked") for r in after), \
        sorted({(r.gateway, r.status) for r in after})
    # Calls admitted before it ran to the end and were settled; nothing is left held.
    assert {r.status for r in replies + probes} <= {200, 403}
    with session_scope(registry) as s:
        account = s.get(UsageTotal, _project_id(registry, "doomed"))
        assert audit.verify_database(s).ok
    assert account.tokens_reserved == 0
    assert account.tokens_used == sum(r.body["usage"]["total_tokens"] for r in replies + probes if r.status == 200)


def _one(urls: list[str], key: str, gateway: int) -> Reply:
    with httpx.Client(base_url=urls[gateway], headers={"Authorization": f"token {key}"}, timeout=60) as http:
        return _ask(http, gateway, _call(gateway))


def test_a_seed_gives_the_same_text_on_either_gateway(registry, gateways):
    key = _project(registry, "seeded")
    texts = {}
    for seed in range(4):
        for g, url in enumerate(gateways):
            with httpx.Client(base_url=url, headers={"Authorization": f"token {key}"}, timeout=60) as http:
                reply = _ask(http, g, {"prompt": PROMPT, "max_new_tokens": 12, "temperature": 1.0, "seed": seed})
            assert reply.status == 200, reply
            texts[seed, g] = reply.body["choices"][0]["text"]
        assert texts[seed, 0] == texts[seed, 1], seed
    assert len({texts[seed, 0] for seed in range(4)}) > 1, "the seed made no difference: nothing was shown"


def _throughput(urls: list[str], key: str, requests: int, clients: int) -> tuple[float, int]:
    """Closed loop: `clients` threads, client i on gateway i % len(urls), each sending the next of
    `requests` generate calls as soon as its last returns. Tokens generated per second, and how many."""
    queue = list(range(requests))
    lock = threading.Lock()
    produced: list[int] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], headers={"Authorization": f"token {key}"}, timeout=120) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    n = queue.pop()
                reply = http.post("/v1/generate", json=_call(n, prompt=f"{PROMPT} {n} times", max_new_tokens=32))
                assert reply.status_code == 200, reply.text
                produced.append(reply.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    seconds = time.perf_counter() - started
    assert len(produced) == requests
    return sum(produced) / seconds, sum(produced)


def test_aggregate_throughput_of_two_gateways_against_one(registry, gateways, capsys):
    key = _project(registry, "bench")
    requests, clients = 96, 16
    _throughput(gateways, key, clients, clients)  # warm-up, both
    one, tokens_one = _throughput(gateways[:1], key, requests, clients)
    two, tokens_two = _throughput(gateways, key, requests, clients)
    assert tokens_one == tokens_two == requests * 32
    with capsys.disabled():
        print(f"\nbench two gateways, one PostgreSQL ({os.cpu_count()} CPUs, tiny model, {clients} clients, "
              f"{requests} x 32 tokens): one gateway {one:.0f} tokens/s, two {two:.0f} tokens/s, ratio {two / one:.2f}x")
