"""`enclave.client`, as a notebook uses it: configured from the environment, HTTP only, against a
real review service (uvicorn) and a real gateway; refusals arrive as EnclaveError with the reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enclave import client
from enclave.client import Config, EnclaveError

from tests.gateway_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from tests.review_stack import AUTHOR, LAB, OTHER_SCHOLAR, REVIEWERS, FakeIdentity, fake_scanner, seed, serve_review, settings_for

TOKENS = {"tok-sofia": AUTHOR, "tok-bob": OTHER_SCHOLAR, "tok-rita": REVIEWERS[0]}


def test_the_client_imports_nothing_heavy_and_nothing_else_of_ours():
    code = ("import sys, enclave.client as c; "
            "ours = sorted(m for m in sys.modules if m.startswith('enclave.') and not m.startswith('enclave.client')); "
            "heavy = sorted(m for m in ('torch', 'numpy', 'sqlmodel', 'sqlalchemy', 'fastapi', 'transformers') if m in sys.modules); "
            "print(ours, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[] []"


@pytest.fixture
def review(engine, tmp_path, monkeypatch):
    seed(engine)
    settings = settings_for(tmp_path, engine, max_file_bytes=2048, max_request_bytes=4096)
    with serve_review(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS)) as (url, app):
        for name in ("JUPYTERHUB_API_TOKEN", "ENCLAVE_GATEWAY_URL", "ENCLAVE_PROJECT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ENCLAVE_REVIEW_URL", url)  # direct, without the proxy's prefix, as notebooks do
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "tok-sofia")
        yield app


def test_export_from_a_notebook_and_follow_it(review, tmp_path, monkeypatch):
    table = tmp_path / "table2.csv"
    table.write_text("group,count\na,12\nb,30\n")
    notes = tmp_path / "notes.md"
    notes.write_text("How table 2 was made.\n")
    receipt = client.export([table, str(notes)], justification="Table 2 of the paper", context="cohort of 42")
    assert receipt["state"] == "submitted" and [f["name"] for f in receipt["files"]] == ["table2.csv", "notes.md"]
    review.state.review.worker.drain()
    status = client.export_status(receipt["id"])
    assert (status["state"], status["verdict"], status["context"]) == ("awaiting_review", "pass", "cohort of 42")
    client.comment(receipt["id"], "Ask me anything.")
    assert [e["id"] for e in client.exports()] == [receipt["id"]]
    assert client.withdraw(receipt["id"])["state"] == "withdrawn"
    # The project header travels when set (and the registry checks it).
    monkeypatch.setenv("ENCLAVE_PROJECT", LAB)
    assert client.export(table, justification="again")["state"] == "submitted"


def test_client_refusals_are_clear(review, tmp_path, monkeypatch):
    small = tmp_path / "small.txt"
    small.write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "small.txt").write_text("y")
    big = tmp_path / "big.bin"
    big.write_bytes(b"0" * 3000)
    cases = [
        (lambda: client.export(tmp_path / "missing.txt", justification="x"), "does not exist"),
        (lambda: client.export(tmp_path / "sub", justification="x"), "is a directory"),
        (lambda: client.export([small, tmp_path / "sub" / "small.txt"], justification="x"), "two files are named"),
        (lambda: client.export([], justification="x"), "at least one file"),
        (lambda: client.export(small, justification=" "), "justification"),
        (lambda: client.export(big, justification="x"), "at most 2048 bytes"),
        (lambda: client.export_status("exp-aaaaaaaaaaaa"), "no export"),
    ]
    for action, message in cases:
        with pytest.raises(EnclaveError, match=message):
            action()
    monkeypatch.setenv("ENCLAVE_PROJECT", "other")
    with pytest.raises(EnclaveError, match="not a member") as refused:
        client.export(small, justification="x")
    assert (refused.value.status, refused.value.code) == (403, "not_member")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "tok-forged")
    with pytest.raises(EnclaveError, match="does not recognise") as forged:
        client.export(small, justification="x")
    assert forged.value.status == 401
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    with pytest.raises(EnclaveError, match="JUPYTERHUB_API_TOKEN is not set"):
        client.export(small, justification="x")
    with pytest.raises(EnclaveError, match="ENCLAVE_GATEWAY_URL is not set"):
        client.usage(config=Config(token="t"))
    with pytest.raises(EnclaveError, match="cannot reach the review"):
        client.exports(config=Config(token="t", review_url="http://127.0.0.1:9"))


@pytest.mark.slow
def test_gateway_helpers_against_a_real_gateway(engine, tiny_model_dir, monkeypatch):
    from tests.gateway_fixtures import serve

    with serve(engine, tiny_model_dir) as gateway:
        monkeypatch.setenv("ENCLAVE_GATEWAY_URL", gateway.url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", gateway.key)  # the gateway takes API keys in the same header
        reply = client.generate("Hello world", max_new_tokens=4, seed=1, n=2)
        assert len(reply["choices"]) == 2 and reply["usage"]["prompt_tokens"] == 2
        assert client.complete("Hello world", max_new_tokens=4, seed=1) == reply["choices"][0]["text"]
        scored = client.score("Hello world")
        assert len(scored["tokens"]) == 2 and scored["perplexity"] > 0
        top = client.next_token("Hello", top_k=3)
        assert len(top) == 3 and all(0 <= p <= 1 for _, p in top)
        assert client.usage()["tokens"]["used"] > 0
        with pytest.raises(EnclaveError, match="top_k") as refused:
            client.next_token("Hello", top_k=50)
        assert refused.value.status == 422
        # The default tier (score) reads no activations, and says which tier would.
        with pytest.raises(EnclaveError, match="needs the 'internals' tier") as refused:
            client.activations("Hello", ["blocks.0.hook_resid_pre"])
        assert (refused.value.status, refused.value.code) == (403, "tier_required")


@pytest.mark.slow
def test_results_are_typed_readable_and_still_dicts(engine, tiny_model_dir, monkeypatch):
    import json

    import numpy as np

    from tests.gateway_fixtures import serve

    with serve(engine, tiny_model_dir, grant={"tier": "internals"}) as gateway:
        monkeypatch.setenv("ENCLAVE_GATEWAY_URL", gateway.url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", gateway.key)
        reply = client.generate("Hello", max_new_tokens=3, seed=2)
        assert reply.text == reply.choices[0].text == reply["choices"][0]["text"]
        assert reply.usage.completion_tokens == reply["usage"]["completion_tokens"] == 3
        shown = repr(reply)
        assert shown.startswith("Generation(text=") and "usage=Usage(prompt=1, completion=3, total=4)" in shown
        assert "{" not in shown  # not a nested dict
        assert json.loads(json.dumps(reply)) == reply.to_dict()  # still the service's JSON

        scored = client.score("Hello world")
        assert scored.logprobs == [t["logprob"] for t in scored["tokens"]] and scored.perplexity > 0
        assert repr(scored).startswith("Scores(tokens=2, total_logprob=")

        top = client.next_token("Hello", top_k=2)
        assert len(top) == 2 and top[0] == (top[0][0], top[0][1]) and top.usage.prompt_tokens == 1
        assert repr(top).startswith("NextTokens(")

        usage = client.usage()
        assert usage.tier == "internals" and usage["tokens"]["used"] > 0
        assert repr(usage).startswith("UsageReport(project='lab', tier='internals', tokens=")
        assert usage.extraction["mlp_regression"]["pairs_needed"] == 257

        listed = client.hooks()
        acts = client.activations("Hello world", ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"],
                                  positions=[-1], model=client.model().name)
        assert set(acts) == {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"} <= set(listed.hooks)
        resid = acts["blocks.0.hook_resid_pre"]
        assert isinstance(resid, np.ndarray) and resid.dtype == np.float16 and resid.shape == (1, 64)
        assert acts["blocks.1.attn.hook_pattern"].shape == (2, 1, 3)
        assert acts.tokens == ["<|endoftext|>", "Hello", " world"] and acts.positions == [2]
        assert acts.bytes == resid.nbytes + acts["blocks.1.attn.hook_pattern"].nbytes
        assert repr(acts) == ("Activations({'blocks.0.hook_resid_pre': (1, 64), 'blocks.1.attn.hook_pattern': "
                              f"(2, 1, 3)}}, dtype=float16, tokens=3, bytes={acts.bytes})")

