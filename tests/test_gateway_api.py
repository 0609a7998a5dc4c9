"""The model API over real HTTP: what scholars get, what they are charged, and what attackers and
careless callers are refused. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import threading
import time

import httpx
import pytest
from sqlmodel import select

from enclave.registry import audit, grants, keys, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import ModelCall, Reservation

from tests.gateway_fixtures import (  # noqa: F401  (fixtures)
    OPERATOR, PROJECT, full_size_model_dir, long_model_dir, serve, tiny_model_dir,
)


@pytest.fixture
def gw(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir, grant={"max_tokens_per_request": 125}) as running:
        yield running


def _usage(client) -> dict:
    reply = client.get("/v1/usage")
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_model_info_says_nothing_more(gw):
    info = gw.client(key=None).get("/v1/model").json()
    assert set(info) == {"name", "parameters", "context_length"}
    assert info["context_length"] == 128 and info["parameters"] > 0


def test_generate_is_charged_audited_and_recorded(gw):
    with gw.client() as c:
        before = _usage(c)["tokens"]["used"]
        reply = c.post("/v1/generate", json={"prompt": "The census of 1990", "max_new_tokens": 12, "temperature": 0})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        usage = body["usage"]
        assert usage["completion_tokens"] == body["choices"][0]["tokens"] <= 12
        after = _usage(c)
    assert after["tokens"]["used"] - before == usage["total_tokens"]
    assert after["tokens"]["reserved"] == 0
    with gw.registry() as s:
        call = s.get(ModelCall, body["id"])
        assert call.prompt == "The census of 1990" and json.loads(call.outputs) == [body["choices"][0]["text"]]
        event = audit.head(s)
        assert event.seq == call.audit_seq and event.action == "model.generate" and event.actor == "sam"
        details = json.loads(event.details)
        assert details["completion_tokens"] == usage["completion_tokens"] and len(details["prompt_sha256"]) == 64
        assert audit.verify_database(s).ok


def test_same_seed_same_output_and_n_samples(gw):
    request = {"prompt": "Once upon a time", "max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 7, "n": 3}
    with gw.client() as c:
        first = c.post("/v1/generate", json=request).json()
        second = c.post("/v1/generate", json=request).json()
    assert [ch["text"] for ch in first["choices"]] == [ch["text"] for ch in second["choices"]]
    assert len(first["choices"]) == 3


def test_score_and_next_token(gw):
    with gw.client() as c:
        scored = c.post("/v1/score", json={"text": "Hello world"}).json()
        assert [t["token"] for t in scored["tokens"]] == ["Hello", " world"]
        assert scored["total_logprob"] == pytest.approx(sum(t["logprob"] for t in scored["tokens"]), abs=2e-3)
        assert scored["perplexity"] > 1
        answered = c.post("/v1/next-token", json={"prompt": "Hello", "top_k": 5}).json()
    top = answered["top"]
    assert len(top) == 5
    for entry in top:
        p = entry["probability"]
        assert 0 <= p <= 1 and round(p, 3) == p  # rounded to 3 decimals, like every returned probability
    assert top[0]["probability"] > 0
    assert [e["probability"] for e in top] == sorted((e["probability"] for e in top), reverse=True)
    # What the caller got (the same rounded numbers) is recorded with the call and digested in its
    # audit event, as generate's texts are.
    with gw.registry() as s:
        for reply, kept in [(scored, ("tokens", "total_logprob", "perplexity")), (answered, ("top",))]:
            call = s.get(ModelCall, reply["id"])
            assert json.loads(call.outputs) == {k: reply[k] for k in kept}
            event = s.get(audit.AuditEvent, call.audit_seq)
            assert json.loads(event.details)["outputs_sha256"] == hashlib.sha256(call.outputs.encode()).hexdigest()
        assert audit.verify_model_calls(s).ok


def test_a_seed_reproduces_a_text_only_in_its_project_and_under_the_kept_secret(engine, tiny_model_dir, tmp_path):
    """The seed is keyed with the server's sampling secret (kept 0600 across restarts) and the
    project: the same call in another project, or under another secret, draws differently."""
    secret_file = tmp_path / "gateway" / "sampling-secret"
    requests = [{"prompt": "Once upon a time", "max_new_tokens": 8, "temperature": 2.0, "seed": seed}
                for seed in range(6)]

    def texts(client) -> list[str]:
        replies = [client.post("/v1/generate", json=request) for request in requests]
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json()["choices"][0]["text"] for r in replies]

    with serve(engine, tiny_model_dir, sampling_secret_file=secret_file) as gw:
        with gw.registry() as s:
            projects.create_project(s, OPERATOR, "lab2", "Lab 2", "sam", "Another project.")
            projects.transition(s, OPERATOR, "lab2", "approve",
                                until=end_of_day((utcnow() + dt.timedelta(days=30)).date()))
            grants.set_grant(s, OPERATOR, "lab2", requests_per_minute=100_000, max_tokens_per_request=512)
            _, other_key = keys.issue(s, OPERATOR, "sam", "lab2")
        with gw.client() as c, gw.client(key=other_key) as other:
            first, again, elsewhere = texts(c), texts(c), texts(other)
    assert again == first and elsewhere != first
    assert secret_file.stat().st_mode & 0o777 == 0o600 and len(secret_file.read_bytes()) == 32
    # Another gateway (a fresh engine, a registry with a project of the same name) under the kept
    # secret draws the same; under another secret, not.
    with serve(_fresh_registry(tmp_path / "again.db"), tiny_model_dir, sampling_secret_file=secret_file) as gw, \
            gw.client() as c:
        assert texts(c) == first
    secret_file.write_bytes(b"x" * 32)
    with serve(_fresh_registry(tmp_path / "other.db"), tiny_model_dir, sampling_secret_file=secret_file) as gw, \
            gw.client() as c:
        assert texts(c) != first


def _fresh_registry(path):
    db = make_engine(f"sqlite:///{path}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    return db


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/generate", {"prompt": ""}, 422, "invalid_request"),
    ("/v1/generate", {"prompt": "hi", "temperature": 5}, 422, "invalid_request"),
    ("/v1/generate", {"prompt": "hi", "n": 1000}, 422, "invalid_request"),
    ("/v1/generate", {"prompt": "hi", "logit_bias": {"50256": -100}}, 422, "invalid_request"),
    ("/v1/generate", {"prompt": "hi", "max_new_tokens": 126}, 400, "request_too_large"),
    ("/v1/generate", {"prompt": "word " * 200, "max_new_tokens": 8}, 400, "context_exceeded"),
    ("/v1/generate", {"prompt": "hi", "max_new_tokens": 100, "n": 2}, 400, "request_too_large"),
    ("/v1/next-token", {"prompt": "hi", "top_k": 6}, 422, "invalid_request"),
    ("/v1/next-token", {"prompt": "hi", "logprobs": True}, 422, "invalid_request"),
    ("/v1/score", {"text": "word " * 200}, 400, "context_exceeded"),
    ("/v1/score", {}, 422, "invalid_request"),
])
def test_bad_input_gets_a_4xx_with_a_reason(gw, path, body, status, code):
    with gw.client() as c:
        reply = c.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == code and reply.json()["message"]


def test_malformed_json_and_unknown_project(gw):
    with gw.client() as c:
        reply = c.post("/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"})
        assert reply.status_code == 422 and reply.json()["message"]
        wrong = c.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Enclave-Project": "other"})
        assert wrong.status_code == 403 and wrong.json()["error"] == "wrong_project"


def test_authentication_is_required_and_checked(gw):
    for key, status in [(None, 401), ("enk_abc_def", 401), ("garbage-token", 401)]:
        with gw.client(key=key) as c:
            reply = c.post("/v1/generate", json={"prompt": "hi"})
        assert reply.status_code == status and reply.json()["error"] == "unauthenticated"
        assert reply.headers.get("WWW-Authenticate") == "token"


def test_revocation_bites_on_the_next_request(gw):
    with gw.client() as c:
        assert c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
        with gw.registry() as s:
            projects.transition(s, OPERATOR, PROJECT, "suspend", reason="audit")
        suspended = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2})
        assert (suspended.status_code, suspended.json()["error"]) == (403, "suspended")
        with gw.registry() as s:
            projects.transition(s, OPERATOR, PROJECT, "reinstate")
        assert c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
        with gw.registry() as s:
            projects.transition(s, OPERATOR, PROJECT, "revoke", reason="breach")
        revoked = c.post("/v1/score", json={"text": "hi"})
        assert (revoked.status_code, revoked.json()["error"]) == (403, "revoked")


def test_a_call_from_a_notebook_session_acts_for_that_sessions_project_only(gw):
    """Sam works in two projects and has a notebook session for the other one. The gateway sees the
    session's container as the peer address (here loopback stands for it): neither the header nor
    Sam's API key for the first project makes a call from there act for it."""
    from enclave.registry import sessions
    from tests.gateway_fixtures import SCHOLAR

    with gw.registry() as s:
        projects.create_project(s, OPERATOR, "other", "Other", SCHOLAR, "Another study.")
        projects.transition(s, OPERATOR, "other", "approve", until=end_of_day((utcnow() + dt.timedelta(days=30)).date()))
        grants.set_grant(s, OPERATOR, "other")
        sid = sessions.open_session(s, username=SCHOLAR, project="other", mode="docker", container_ip="127.0.0.1").id
    body = {"prompt": "hi", "max_new_tokens": 2}
    with gw.client(**{"X-Enclave-Project": PROJECT}) as c:
        named = c.post("/v1/generate", json=body)
    assert named.status_code == 403 and named.json()["error"] == "wrong_project", named.text
    assert "works for project 'other', not" in named.json()["message"]
    with gw.client() as c:
        by_key = c.post("/v1/generate", json=body)  # the key is bound to the first project
    assert by_key.status_code == 403 and by_key.json()["error"] == "wrong_project", by_key.text
    with gw.registry() as s:
        sessions.close_session(s, sid, "test over")
    with gw.client() as c:
        assert c.post("/v1/generate", json=body).status_code == 200  # outside a session: the key decides


def test_revoked_key_is_refused_at_once(gw):
    key_id = gw.key.split("_")[1]
    with gw.registry() as s:
        keys.revoke(s, OPERATOR, key_id)
    with gw.client() as c:
        reply = c.get("/v1/usage")
    assert reply.status_code == 401 and "revoked" in reply.json()["message"]


def test_rate_and_quota_refusals(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir, grant={"requests_per_minute": 2, "tokens_total": 40}) as gw, gw.client() as c:
        assert c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 4}).status_code == 200
        too_much = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 60})
        assert too_much.status_code == 402 and "quota" in too_much.json()["message"]
        # Two requests per clock minute: within a few more calls one must be refused (more than
        # three only if a minute boundary passes in between).
        replies = []
        while len(replies) < 5 and (not replies or replies[-1].status_code != 429):
            replies.append(c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 1}))
        limited = replies[-1]
        assert {r.status_code for r in replies[:-1]} <= {200}
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60


def test_full_queue_answers_503_with_retry_after(engine, long_model_dir):
    # Generations of seconds each, so the six callers surely overlap even on a slow machine.
    with serve(engine, long_model_dir, grant={"max_tokens_per_request": 1000}, max_batch=1, max_queue=1) as gw:
        results: list[httpx.Response] = []

        def call():
            with gw.client() as c:
                results.append(c.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 1000, "ignore_eos": True}))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(r.status_code for r in results)
        assert 200 in statuses and 503 in statuses, statuses
        busy = next(r for r in results if r.status_code == 503)
        assert busy.json()["error"] == "busy" and int(busy.headers["Retry-After"]) >= 1
        with gw.client() as c:
            assert _usage(c)["tokens"]["reserved"] == 0  # refused calls gave their reservation back


def test_a_client_that_disconnects_frees_its_slot(engine, long_model_dir):
    with serve(engine, long_model_dir, grant={"max_tokens_per_request": 1000}) as gw:
        _disconnect_mid_generation(gw)


def test_a_cancelled_generation_is_charged_for_what_it_produced(engine, long_model_dir):
    """A client that hangs up mid-generation is charged its prompt and the tokens the engine made
    for it until it left: not nothing (else hanging up just before the end would be free), and not
    the worst case it reserved."""
    with serve(engine, long_model_dir, grant={"max_tokens_per_request": 1000}) as gw:
        _disconnect_mid_generation(gw, linger=0.3)
        with gw.registry() as s:
            call = s.exec(select(ModelCall)).one()
            reservation = s.exec(select(Reservation)).one()
            details = json.loads(s.get(audit.AuditEvent, call.audit_seq).details)
        assert call.status == "cancelled" and 0 < call.completion_tokens < 1000
        assert reservation.tokens_charged == call.prompt_tokens + call.completion_tokens < reservation.tokens_reserved
        assert (details["charged_tokens"], details["completion_tokens"]) == (reservation.tokens_charged,
                                                                             call.completion_tokens)
        with gw.client() as c:
            assert _usage(c)["tokens"]["used"] == reservation.tokens_charged


def _disconnect_mid_generation(gw, linger: float = 0.0):
    body = json.dumps({"prompt": "x", "max_new_tokens": 1000, "ignore_eos": True}).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: token {gw.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.time() + 10
        while gw.engine.stats()["running"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert gw.engine.stats()["running"] == 1
        time.sleep(linger)  # let the engine make some tokens first
    deadline = time.time() + 10
    while gw.engine.stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert gw.engine.stats()["running"] == 0
    time.sleep(0.5)
    with gw.registry() as s:
        call = s.exec(select(ModelCall)).one()
        assert call.status == "cancelled"
        assert s.exec(select(Reservation)).one().state == "settled"


def test_two_hundred_concurrent_requests_never_overspend(engine, tiny_model_dir):
    # Each call may cost at most 1 + 8 tokens; 200 of them against a grant of 600.
    with serve(engine, tiny_model_dir, grant={"tokens_total": 600, "tokens_per_day": 600}, max_batch=16,
               max_queue=400) as gw:
        results: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(200)

        def call(i):
            with gw.client() as c:
                start.wait()
                reply = c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 8, "seed": i})
                with lock:
                    results.append(reply.status_code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(results) == 200 and set(results) <= {200, 402}, sorted(set(results))
        with gw.client() as c:
            tokens = _usage(c)["tokens"]
        assert tokens["reserved"] == 0 and tokens["used"] <= 600
        with gw.registry() as s:
            calls = s.exec(select(ModelCall)).all()
            assert len(calls) == results.count(200)
            assert tokens["used"] == sum(c.prompt_tokens + c.completion_tokens for c in calls)
            assert audit.verify_database(s).ok


def test_a_full_size_gpt2_directory_serves(tmp_path, full_size_model_dir):
    from enclave.registry import people
    from enclave.registry.db import make_engine, session_scope as scope, upgrade

    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    with serve(db, full_size_model_dir) as gw, gw.client() as c:
        info = c.get("/v1/model").json()
        assert (info["parameters"], info["context_length"]) == (124_439_808, 1024)
        generated = c.post("/v1/generate", json={"prompt": "The enclave", "max_new_tokens": 8, "seed": 1})
        assert generated.status_code == 200 and generated.json()["usage"]["completion_tokens"] >= 1
        assert c.post("/v1/score", json={"text": "The enclave"}).status_code == 200
        assert len(c.post("/v1/next-token", json={"prompt": "The", "top_k": 5}).json()["top"]) == 5


def test_the_sampling_secret_file_comes_from_the_environment(monkeypatch, tmp_path):
    from enclave.gateway.settings import GatewaySettings

    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENCLAVE_GATEWAY_SEED_SECRET_FILE", raising=False)
    default = GatewaySettings.from_env(model_dir="unused").sampling_secret_file
    assert default == (tmp_path / "home" / "gateway" / "sampling-secret").resolve()
    monkeypatch.setenv("ENCLAVE_GATEWAY_SEED_SECRET_FILE", str(tmp_path / "elsewhere"))
    assert GatewaySettings.from_env(model_dir="unused").sampling_secret_file == tmp_path / "elsewhere"


def test_a_short_sampling_secret_is_a_clear_start_up_error(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from enclave.errors import SettingsError
    from enclave.gateway.app import create_app
    from enclave.gateway.settings import GatewaySettings

    (tmp_path / "secret").write_bytes(b"too short")
    _fresh_registry(tmp_path / "enclave.db")
    settings = GatewaySettings(model_dir=str(tiny_model_dir), db_url=f"sqlite:///{tmp_path / 'enclave.db'}",
                               sampling_secret_file=tmp_path / "secret")
    with pytest.raises(SettingsError, match="sampling secret .* shorter than 32 bytes"):
        with TestClient(create_app(settings)):
            pass
