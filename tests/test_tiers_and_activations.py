"""Access tiers and the activations endpoint, from the caller's side: a project gets what its tier
allows and is told which tier it would need; activations come back under TransformerLens's names
and shapes in float16, metered in bytes against the day's budget (a refused call charges nothing),
and every call is audited like any model call."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from sqlmodel import select

from enclave.errors import BadInput
from enclave.gateway import hooks as hook_points
from enclave.registry import audit, grants, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import Grant, ModelCall, UsageDay

from tests.gateway_fixtures import OPERATOR, serve, tiny_model_dir  # noqa: F401  (fixture)

D_MODEL, N_HEAD, D_MLP, N_LAYER = 64, 2, 256, 2


def _decode(item: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(item["data"]), dtype="<f2").reshape(item["shape"])


def _usage(client) -> dict:
    reply = client.get("/v1/usage")
    assert reply.status_code == 200, reply.text
    return reply.json()


# -- tiers ---------------------------------------------------------------------------------------


def _approved_project(s) -> None:
    people.add_person(s, OPERATOR, "sam", "Sam", "sam@example.org")
    projects.create_project(s, OPERATOR, "pt", "P", "sam", "Test tiers.")
    projects.transition(s, OPERATOR, "pt", "approve", until=end_of_day(utcnow().date()))


def test_grants_without_a_tier_get_score_and_a_bad_tier_is_refused_clearly(engine):
    with session_scope(engine) as s:
        _approved_project(s)
        assert grants.set_grant(s, OPERATOR, "pt").tier == "score"
        assert grants.set_grant(s, OPERATOR, "pt", tokens_total=10).tier == "score"  # a change keeps it
        with pytest.raises(BadInput, match="tier must be one of sample, score, internals, finetune, not 'admin'"):
            grants.set_grant(s, OPERATOR, "pt", tier="admin")
        assert grants.set_grant(s, OPERATOR, "pt", tier="internals").tier == "internals"
        assert grants.grant_json(grants.get_grant(s, "pt"))["tier"] == "internals"
        event = audit.head(s)
        assert event.action == "grant.set" and json.loads(event.details)["changes"]["tier"] == {
            "from": "score", "to": "internals"}


def test_grants_made_before_tiers_get_score_when_migrated(tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, "0007")
    with db.begin() as conn:
        conn.exec_driver_sql("INSERT INTO person (id, username, name, email, affiliation, roles, created_at) "
                             "VALUES (1, 'op', 'Op', 'op@x', '', 'operator', '2026-01-01 00:00:00')")
        conn.exec_driver_sql("INSERT INTO project (id, slug, title, purpose, pi_id, terms_version, status, "
                             "status_reason, created_at, created_by, updated_at) VALUES (1, 'old', 'Old', 'x', 1, "
                             "'1', 'approved', '', '2026-01-01 00:00:00', 'op', '2026-01-01 00:00:00')")
        conn.exec_driver_sql("INSERT INTO \"grant\" (project_id, tokens_total, tokens_per_day, requests_per_minute, "
                             "max_tokens_per_request, epsilon, delta, cpu, mem_bytes, session_hours, export_bytes, "
                             "updated_at, updated_by) VALUES (1, 1, 1, 1, 1, 1.0, 0.0, 1.0, 1, 1.0, 1, "
                             "'2026-01-01 00:00:00', 'op')")
    upgrade(db)
    with session_scope(db) as s:
        grant = s.get(Grant, 1)
        assert (grant.tier, grant.activation_bytes_per_day) == ("score", grants.DEFAULTS["activation_bytes_per_day"])
    db.dispose()


def test_the_cli_sets_a_tier_and_an_activation_budget(engine, monkeypatch):
    from enclave.cli import run

    with session_scope(engine) as s:
        _approved_project(s)
    for name in [n for n in os.environ if n.startswith("ENCLAVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DB_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ENCLAVE_OPERATOR", OPERATOR)

    def cli(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
        return code, out.getvalue() + err.getvalue()

    code, text = cli("grant", "set", "pt")
    assert code == 0 and "tier=score" in text
    code, text = cli("grant", "set", "pt", "--tier", "internals", "--activation-bytes-per-day", "2M")
    assert code == 0 and "tier=internals" in text and "activations_per_day=2M" in text
    code, text = cli("grant", "set", "pt", "--tier", "root")
    assert code != 0 and "tier must be one of sample, score, internals, finetune" in text and "Traceback" not in text
    # A tier for one model alone; --model takes --tier and nothing else.
    code, text = cli("grant", "set", "pt", "--model", "gpt2-124m-random", "--tier", "sample")
    assert code == 0 and "tier sample for model gpt2-124m-random" in text
    code, text = cli("grant", "show", "pt")
    assert "model_tiers: {'gpt2-124m-random': 'sample'}" in text and "tier: internals" in text
    code, text = cli("grant", "set", "pt", "--model", "gpt2-124m-random", "--tier", "inherit")
    assert code == 0 and "tier internals for model gpt2-124m-random" in text
    code, text = cli("grant", "set", "pt", "--model", "gpt2-124m-random", "--tier", "score", "--rpm", "5")
    assert code != 0 and "give --tier and nothing else" in text and "Traceback" not in text
    code, text = cli("grant", "set", "pt", "--model", "bad name!", "--tier", "score")
    assert code != 0 and "bad model name" in text


@pytest.fixture
def sample_tier(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir, grant={"tier": "sample"}) as running:
        yield running


def test_an_endpoint_above_the_tier_is_refused_naming_the_tier_it_needs(sample_tier):
    calls = [("/v1/score", {"text": "Hello world"}, "score"),
             ("/v1/next-token", {"prompt": "Hello", "top_k": 2}, "score"),
             ("/v1/activations", {"prompt": "Hello", "hooks": ["blocks.0.hook_resid_pre"]}, "internals")]
    with sample_tier.client() as c:
        before = _usage(c)
        assert before["tier"] == "sample"
        assert c.post("/v1/generate", json={"prompt": "Hello", "max_new_tokens": 3}).status_code == 200
        for path, body, needed in calls:
            reply = c.post(path, json=body)
            assert reply.status_code == 403, reply.text
            error = reply.json()
            assert error["error"] == "tier_required"
            assert f"needs the {needed!r} tier" in error["message"] and "'sample' tier" in error["message"]
            assert f"--tier {needed}" in error["message"]
        after = _usage(c)
    # Refused calls charged nothing (the generate above did).
    assert after["logprob_calls_today"]["used"] == before["logprob_calls_today"]["used"] == 0
    assert after["activation_bytes_today"]["used"] == 0
    with sample_tier.registry() as s:
        assert {c.endpoint for c in s.exec(select(ModelCall)).all()} == {"generate"}


def test_the_score_tier_is_what_grants_had_and_stops_at_activations(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir) as gw, gw.client() as c:
        assert _usage(c)["tier"] == "score"
        assert c.post("/v1/score", json={"text": "Hello world"}).status_code == 200
        assert c.post("/v1/next-token", json={"prompt": "Hello"}).status_code == 200
        reply = c.post("/v1/activations", json={"prompt": "Hello", "hooks": ["blocks.0.hook_resid_pre"]})
        assert reply.status_code == 403 and "needs the 'internals' tier" in reply.json()["message"]
        assert c.get("/v1/hooks").status_code == 200  # the names are no secret; reading them is


# -- activations ---------------------------------------------------------------------------------


@pytest.fixture
def internals(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir, grant={"tier": "internals", "activation_bytes_per_day": 400_000}) as running:
        yield running


def test_activations_have_transformer_lens_names_shapes_and_float16(internals, tiny_model_dir):
    from transformers import GPT2LMHeadModel

    asked = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale", "blocks.0.attn.hook_q",
             "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.1.mlp.hook_post",
             "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    with internals.client() as c:
        listed = c.get("/v1/hooks").json()
        assert listed["hooks"] == hook_points.names(N_LAYER) and listed["d_mlp"] == D_MLP
        assert set(asked) <= set(listed["hooks"]) and not any(h.startswith("unembed") for h in listed["hooks"])
        reply = c.post("/v1/activations", json={"model": listed["model"], "prompt": "The census of 1990 was",
                                                 "hooks": asked})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        t = len(body["tokens"])
        assert body["tokens"][0] == "<|endoftext|>" and body["positions"] == list(range(t))
        arrays = {name: _decode(item) for name, item in body["activations"].items()}
        assert list(arrays) == asked and all(item["dtype"] == "float16" for item in body["activations"].values())
        assert {n: a.shape for n, a in arrays.items()} == {
            "hook_embed": (t, D_MODEL), "blocks.0.hook_resid_pre": (t, D_MODEL), "blocks.0.ln1.hook_scale": (t, 1),
            "blocks.0.attn.hook_q": (t, N_HEAD, D_MODEL // N_HEAD), "blocks.0.attn.hook_pattern": (N_HEAD, t, t),
            "blocks.1.attn.hook_attn_scores": (N_HEAD, t, t), "blocks.1.mlp.hook_post": (t, D_MLP),
            "blocks.1.hook_resid_pre": (t, D_MODEL), "blocks.1.hook_resid_post": (t, D_MODEL),
            "ln_final.hook_normalized": (t, D_MODEL)}
        assert body["bytes"] == sum(a.nbytes for a in arrays.values())
        pattern = arrays["blocks.0.attn.hook_pattern"].astype(np.float32)
        assert np.allclose(pattern.sum(-1), 1, atol=1e-2) and np.all(np.triu(pattern[0], 1) == 0)
        assert np.isneginf(arrays["blocks.1.attn.hook_attn_scores"][0, 0, 1])  # the causal mask, as -inf

        # Positions cut the position axis (query positions for patterns), negative from the end.
        cut = c.post("/v1/activations", json={"prompt": "The census of 1990 was", "positions": [-1, 0],
                                               "hooks": ["blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"]}).json()
        assert cut["positions"] == [t - 1, 0]
        assert _decode(cut["activations"]["blocks.0.attn.hook_pattern"]).shape == (N_HEAD, 2, t)
        assert np.array_equal(_decode(cut["activations"]["blocks.1.mlp.hook_post"]), arrays["blocks.1.mlp.hook_post"][[t - 1, 0]])

        for body, code, words in [
            ({"prompt": "Hi", "hooks": ["blocks.9.hook_resid_pre"]}, "unknown_hook", "unknown hook"),
            ({"prompt": "Hi", "hooks": ["unembed.hook_out"]}, "unknown_hook", "no logit vectors"),
            ({"prompt": "Hi", "hooks": ["blocks.0.hook_resid_pre"], "model": "gpt2-xl"}, "unknown_model", "serves"),
            ({"prompt": "Hi", "hooks": ["blocks.0.hook_resid_pre"], "positions": [7]}, "bad_request", "positions"),
        ]:
            refused = c.post("/v1/activations", json=body)
            assert refused.status_code == 400 and refused.json()["error"] == code, refused.text
            assert words in refused.json()["message"]

    # The same numbers as the model itself (Hugging Face's forward), to float16's precision.
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    ids = [50256, *internals.engine.tokenizer.encode("The census of 1990 was")]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert np.allclose(arrays["blocks.1.hook_resid_pre"], hidden[1][0].numpy(), atol=2e-3, rtol=2e-3)
    assert np.allclose(arrays["blocks.0.hook_resid_pre"], hidden[0][0].numpy(), atol=2e-3, rtol=2e-3)


def test_the_byte_budget_refuses_and_nothing_is_charged_beyond_it(engine, tiny_model_dir, monkeypatch):
    budget = 20_000
    request = {"prompt": "one two three four five", "hooks": ["blocks.0.mlp.hook_post"]}  # 6 x 256 x 2 = 3,072 bytes
    with serve(engine, tiny_model_dir, grant={"tier": "internals", "activation_bytes_per_day": budget}) as gw, \
            gw.client() as c:
        spent, answered = 0, 0
        while True:
            reply = c.post("/v1/activations", json=request)
            if reply.status_code != 200:
                break
            spent += reply.json()["bytes"]
            answered += 1
        assert reply.status_code == 402 and reply.json()["error"] == "quota_exhausted", reply.text
        assert "activation budget" in reply.json()["message"] and int(reply.headers["Retry-After"]) > 0
        assert answered == budget // 3072 and spent == answered * 3072 <= budget
        usage = _usage(c)
        assert usage["activation_bytes_today"] == {"limit": budget, "used": spent, "remaining": budget - spent}
        tokens_before = usage["tokens"]["used"]
        # Refused again and again: nothing more charged, in bytes or tokens, and no call recorded.
        for _ in range(3):
            assert c.post("/v1/activations", json=request).status_code == 402
        after = _usage(c)
        assert after["activation_bytes_today"]["used"] == spent and after["tokens"]["used"] == tokens_before
        # A call that alone exceeds the day's budget is too large, not merely early.
        big = c.post("/v1/activations", json={"prompt": "one " * 60, "hooks": ["blocks.0.mlp.hook_post",
                                                                                "blocks.1.mlp.hook_post"]})
        assert big.status_code == 400 and big.json()["error"] == "request_too_large"
        assert "fewer hooks or positions" in big.json()["message"]
        # Whatever the grant, one call returns at most hooks.MAX_CALL_BYTES (held in memory, sent at once).
        monkeypatch.setattr(hook_points, "MAX_CALL_BYTES", 3071)
        capped = c.post("/v1/activations", json=request)
        assert capped.status_code == 400 and "one call may return at most 3071" in capped.json()["message"]
    with gw.registry() as s:
        assert len(s.exec(select(ModelCall).where(ModelCall.endpoint == "activations")).all()) == answered
        day = s.exec(select(UsageDay)).one()
        assert day.activation_bytes == spent and day.tokens_reserved == 0


def test_activation_calls_are_audited_with_digests_of_what_left(internals):
    with internals.client() as c:
        body = c.post("/v1/activations", json={"prompt": "Hello world", "positions": [1],
                                                "hooks": ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_pre"]}).json()
    with internals.registry() as s:
        call = s.get(ModelCall, body["id"])
        assert call.endpoint == "activations" and call.status == "ok" and call.prompt == "Hello world"
        outputs = json.loads(call.outputs)
        assert outputs["bytes"] == body["bytes"] and outputs["positions"] == [1]
        for name, item in body["activations"].items():
            assert outputs["hooks"][name] == {"shape": item["shape"],
                                              "sha256": hashlib.sha256(base64.b64decode(item["data"])).hexdigest()}
        event = audit.head(s)
        assert (event.seq, event.action, event.actor) == (call.audit_seq, "model.activations", "sam")
        details = json.loads(event.details)
        assert details["activation_bytes"] == body["bytes"] and details["prompt_tokens"] == 3
        assert audit.verify_database(s).ok


def test_usage_publishes_the_extraction_bound_of_each_tier(internals):
    with internals.client() as c:
        bound = _usage(c)["extraction"]
    pairs_needed = D_MLP + 1
    pair_bytes = (D_MLP + D_MODEL) * 2
    assert bound["tier"] == "internals"
    assert bound["mlp_regression"]["pairs_needed"] == pairs_needed
    assert bound["mlp_regression"]["bytes_needed"] == pairs_needed * pair_bytes
    assert bound["mlp_regression"]["pairs_per_day"] == 400_000 // pair_bytes
    assert bound["per_tier"]["internals"]["activation_numbers_per_day"] == 200_000
    assert set(bound["per_tier"]) == set(grants.TIERS)
    assert bound["numbers_per_day"] == bound["per_tier"]["internals"]["numbers_per_day"]
    assert f"needs {pairs_needed} activation pairs" in bound["meaning"]
    assert math.isclose(bound["mlp_regression"]["matrices_per_day"], round((400_000 // pair_bytes) / pairs_needed, 3))
