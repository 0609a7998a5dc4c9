"""Several models behind one gateway, from the caller's side: each call names its model (or gets the
default), a project sees a catalog model only when its tier allows the model's stage, a demotion
bites on the very next call, a project's own fine-tune is served to it alone (registered after the
gateway started, without a restart), and a model whose weights changed since onboarding is not
served."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from sqlmodel import select

from enclave.demo.seed import MODEL_CARDS, demo_model_cards
from enclave.registry import catalog, grants, keys, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent

from tests.gateway_fixtures import OPERATOR, PROJECT, build_tiny_model, serve, tiny_model_dir  # noqa: F401

CARD = demo_model_cards({"final_loss": 0.5, "n_parameters": 1, "steps": 1},
                        {"eval_loss": 10.8, "eval_perplexity": 49000.0, "n_parameters": 1})["demo-gpt2"]
CHECKLIST = (MODEL_CARDS / "checklist.toml").read_text(encoding="utf-8")
DEEP = "deep"  # a second project, at the internals tier
WIDE = 96  # the second model's width (the default tiny model is 64 wide)


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("wide-gpt2"), n_embd=WIDE, seed=1)


def _onboard(db, name, directory, stage):
    with session_scope(db) as s:
        catalog.onboard(s, actor=OPERATOR, name=name, directory=directory, card=CARD, checklist=CHECKLIST,
                        stage=stage, cosigned_by=None if stage == "internal" else people.SYSTEM_ACTOR)


def _second_project(gw, tier: str) -> str:
    with gw.registry() as s:
        people.add_person(s, OPERATOR, "dora", "Dora", "dora@example.org")
        projects.create_project(s, OPERATOR, DEEP, "Deep", "dora", "Read internals.")
        projects.transition(s, OPERATOR, DEEP, "approve", until=end_of_day((utcnow() + dt.timedelta(days=30)).date()))
        grants.set_grant(s, OPERATOR, DEEP, tier=tier, requests_per_minute=100_000, logprob_calls_per_day=100_000)
        _, key = keys.issue(s, OPERATOR, "dora", DEEP)
    return key


def _generate(client, model=None):
    body = {"prompt": "The census", "max_new_tokens": 3, "temperature": 0}
    return client.post("/v1/generate", json=body | ({"model": model} if model else {}))


def _model_events(db) -> list[str]:
    with session_scope(db) as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action.like("model.%"))).all()
        return [json.loads(e.details).get("model") for e in events if e.action in ("model.generate", "model.score",
                                                                                     "model.activations")]


def test_two_models_at_two_stages_for_two_tiers_and_a_demotion_bites_next_call(engine, tiny_model_dir, wide_model_dir):
    _onboard(engine, "small", tiny_model_dir, "general")  # the gateway's default model, in the catalog
    _onboard(engine, "wide", wide_model_dir, "partner")
    with serve(engine, tiny_model_dir, grant={"tier": "score"}) as gw:
        deep_key = _second_project(gw, "internals")
        with gw.client() as lab, gw.client(deep_key) as deep:
            listed = lab.get("/v1/models").json()
            assert (listed["project"], listed["tier"]) == (PROJECT, "score")
            assert [(m["name"], m["stage"], m["default"]) for m in listed["models"]] == [("small", "general", True)]
            assert listed["models"][0]["summary"].startswith("A small GPT-2")
            assert [m["name"] for m in deep.get("/v1/models").json()["models"]] == ["small", "wide"]

            # The score tier sees general (and gated) models, not partner ones; the refusal says why.
            assert _generate(lab).status_code == 200 and _generate(lab, "small").status_code == 200
            refused = _generate(lab, "wide")
            assert refused.status_code == 403 and refused.json()["error"] == "model_not_released"
            assert "'partner' release stage, which needs the 'internals' tier" in refused.json()["message"]
            unknown = _generate(lab, "gpt2-xl")
            assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_model"
            assert "this gateway serves it small" in unknown.json()["message"]

            # The internals tier gets the wide model, loaded on first use, with its own dimensions.
            assert _generate(deep, "wide").status_code == 200
            hooks = deep.get("/v1/hooks", params={"model": "wide"}).json()
            assert (hooks["model"], hooks["d_model"]) == ("wide", WIDE)
            assert deep.get("/v1/hooks").json()["d_model"] == 64
            got = deep.post("/v1/activations", json={"model": "wide", "prompt": "Hi there",
                                                      "hooks": ["blocks.0.hook_resid_pre"]})
            assert got.status_code == 200 and got.json()["model"] == "wide"
            assert got.json()["activations"]["blocks.0.hook_resid_pre"]["shape"][-1] == WIDE
            scored = deep.post("/v1/score", json={"model": "wide", "text": "Hello world"})
            assert scored.status_code == 200
            assert deep.get("/v1/usage", params={"model": "wide"}).json()["extraction"]["mlp_regression"][
                "matrix"].endswith(f"({4 * WIDE} x {WIDE})")

            # Demoted to internal (the finetune tier only): the very next call is refused.
            with gw.registry() as s:
                catalog.demote(s, actor=OPERATOR, name="wide", to_stage="internal", reason="a leak was reported")
            refused = _generate(deep, "wide")
            assert refused.status_code == 403 and "needs the 'finetune' tier" in refused.json()["message"]
            assert [m["name"] for m in deep.get("/v1/models").json()["models"]] == ["small"]

            # Demoting the default model bites on calls that do not name a model too.
            with gw.registry() as s:
                catalog.demote(s, actor=OPERATOR, name="small", to_stage="partner", reason="review")
            assert _generate(lab).status_code == 403
            assert lab.get("/v1/models").json()["models"] == []
            assert lab.get("/v1/usage").status_code == 200  # the allowance is still the project's to read
            assert _generate(deep).status_code == 200
            # /v1/model still says which model is the default, as before the catalog.
            assert lab.get("/v1/model").json()["name"] == tiny_model_dir.name
    # Each call's audit event names the model that answered.
    assert _model_events(engine) == ["small", "small", "wide", "wide", "wide", "small"]


def test_a_projects_fine_tune_is_served_to_it_alone_without_a_restart(engine, tiny_model_dir, wide_model_dir, tmp_path):
    with serve(engine, tiny_model_dir) as gw:
        deep_key = _second_project(gw, "internals")
        with gw.client() as lab, gw.client(deep_key) as deep:
            # The default model outside the catalog is served to everyone, as before.
            listed = lab.get("/v1/models").json()["models"]
            assert [(m["name"], m["stage"], m["default"]) for m in listed] == [(tiny_model_dir.name, None, True)]
            assert _generate(lab, tiny_model_dir.name).status_code == 200

            ft_dir = shutil.copytree(wide_model_dir, tmp_path / "lab-ft")
            with gw.registry() as s:
                catalog.register_finetune(s, name="lab-ft", directory=str(ft_dir), base_model=tiny_model_dir.name,
                                          project_slug=PROJECT, epsilon=4.0, delta=1e-5, non_private=False,
                                          actor="sam", report={"steps": 5})
            mine = [m for m in lab.get("/v1/models").json()["models"] if m["own"]]
            assert [(m["name"], m["base_model"]) for m in mine] == [("lab-ft", tiny_model_dir.name)]
            assert _generate(lab, "lab-ft").status_code == 200
            assert "lab-ft" not in json.dumps(deep.get("/v1/models").json())
            hidden, unknown = _generate(deep, "lab-ft"), _generate(deep, "no-such-model")
            assert hidden.status_code == unknown.status_code == 400
            assert hidden.json()["message"].replace("lab-ft", "X") == unknown.json()["message"].replace("no-such-model", "X")
            assert "lab-ft" not in hidden.json()["message"].replace("'lab-ft'", "")

            # Withdrawn (say its canary audit came back bad): refused from the next call, listed to
            # no one; restored, served again.
            with gw.registry() as s:
                catalog.withdraw(s, actor=OPERATOR, name="lab-ft", reason="16-times canaries exposed")
            refused = _generate(lab, "lab-ft")
            assert refused.status_code == 403 and "withdrawn from service" in refused.json()["message"]
            assert "16-times canaries exposed" in refused.json()["message"]
            assert not [m for m in lab.get("/v1/models").json()["models"] if m["own"]]
            with gw.registry() as s:
                catalog.restore(s, actor=OPERATOR, name="lab-ft", reason="retrained at epsilon 2")
                assert [h["event"] for h in catalog.history(s, "lab-ft")] == ["onboard", "withdraw", "restore"]
            assert _generate(lab, "lab-ft").status_code == 200


def test_weights_changed_since_onboarding_are_not_served(engine, tiny_model_dir, wide_model_dir, tmp_path):
    copied = shutil.copytree(wide_model_dir, tmp_path / "copied")
    _onboard(engine, "copied", copied, "general")
    weights = copied / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with serve(engine, tiny_model_dir) as gw, gw.client() as lab:
        refused = _generate(lab, "copied")
        assert refused.status_code == 503 and "changed since it was onboarded" in refused.json()["message"]
        assert _generate(lab).status_code == 200


def test_the_notebook_client_names_models(engine, tiny_model_dir, wide_model_dir, monkeypatch):
    """`enclave.client` lists the project's models and sends `model=` on every kind of call."""
    from enclave import client
    from enclave.client import EnclaveError

    _onboard(engine, "small", tiny_model_dir, "general")
    _onboard(engine, "wide", wide_model_dir, "partner")
    with serve(engine, tiny_model_dir, grant={"tier": "internals"}) as gw:
        monkeypatch.setenv("ENCLAVE_GATEWAY_URL", gw.url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", gw.key)
        listed = client.models()
        assert listed.tier == "internals" and [m["name"] for m in listed.models] == ["small", "wide"]
        assert client.generate("The census", max_new_tokens=2, model="wide").usage["completion_tokens"] == 2
        assert len(client.score("Hello world", model="wide").tokens) == 2
        assert len(client.next_token("Hello", top_k=2, model="wide")) == 2
        assert client.hooks(model="wide").d_model == WIDE and client.hooks().d_model == 64
        assert client.activations("Hi", "blocks.0.hook_resid_pre", model="wide")["blocks.0.hook_resid_pre"].shape[-1] \
            == WIDE
        assert client.usage(model="wide").extraction["mlp_regression"]["matrix"].endswith(f"({4 * WIDE} x {WIDE})")
        with pytest.raises(EnclaveError) as refused:
            client.generate("The census", max_new_tokens=2, model="gpt2-xl")
        assert (refused.value.status, refused.value.code) == (400, "unknown_model")


def test_a_tier_for_one_model_differs_from_the_grants(engine, tiny_model_dir, wide_model_dir):
    """Tiers are per project and model: internals on one model, sample on another, the grant's
    tier for the rest; each refusal names the model and the tier it needs. A model's own tier
    decides its endpoints, never its release: a partner-stage model stays out of sight."""
    _onboard(engine, "small", tiny_model_dir, "general")
    _onboard(engine, "wide", wide_model_dir, "general")
    with serve(engine, tiny_model_dir, grant={"tier": "score"}) as gw, gw.client() as lab:
        with gw.registry() as s:
            assert grants.set_model_tier(s, OPERATOR, PROJECT, "wide", "internals") == "internals"
            assert grants.set_model_tier(s, OPERATOR, PROJECT, "small", "sample") == "sample"
        listed = {m["name"]: m["tier"] for m in lab.get("/v1/models").json()["models"]}
        assert listed == {"small": "sample", "wide": "internals"}
        got = lab.post("/v1/activations", json={"model": "wide", "prompt": "Hi", "hooks": ["blocks.0.hook_resid_pre"]})
        assert got.status_code == 200
        refused = lab.post("/v1/score", json={"text": "Hello world"})  # the default model, small: sample only
        assert refused.status_code == 403 and refused.json()["error"] == "tier_required"
        assert "has the 'sample' tier for model 'small'" in refused.json()["message"]
        assert "--model small --tier score" in refused.json()["message"]
        assert _generate(lab).status_code == 200
        usage = lab.get("/v1/usage", params={"model": "wide"}).json()
        assert (usage["tier"], usage["model_tier"]) == ("score", "internals")
        assert usage["model_tiers"] == {"small": "sample", "wide": "internals"}
        assert usage["extraction"]["mlp_regression"]["pairs_per_day"] > 0

        with gw.registry() as s:
            grants.set_model_tier(s, OPERATOR, PROJECT, "wide", grants.INHERIT)
            events = s.exec(select(AuditEvent).where(AuditEvent.action == "grant.model_tier")).all()
            details = [(json.loads(e.details)["model"], json.loads(e.details)["to"]) for e in events]
            # A partner-stage model: the project's grant tier (score) does not reach that stage,
            # and a tier for that model alone does not open it.
            catalog.demote(s, actor=OPERATOR, name="wide", to_stage="partner", reason="staging again")
            grants.set_model_tier(s, OPERATOR, PROJECT, "wide", "finetune")
        assert details == [("wide", "internals"), ("small", "sample"), ("wide", None)]
        refused = _generate(lab, "wide")
        assert refused.status_code == 403 and refused.json()["error"] == "model_not_released"
        assert "wide" not in [m["name"] for m in lab.get("/v1/models").json()["models"]]


def test_describing_a_model_does_not_load_it_and_changed_weights_are_hashed_once(engine, tiny_model_dir,
                                                                                wide_model_dir, tmp_path):
    """/v1/hooks and /v1/usage are not metered, so they read a model's config and never load it;
    a refused model (weights changed since onboarding) is not re-hashed on every call."""
    from enclave.gateway import pool as pool_module

    copied = shutil.copytree(wide_model_dir, tmp_path / "copied")
    _onboard(engine, "wide", wide_model_dir, "general")
    _onboard(engine, "copied", copied, "general")
    with serve(engine, tiny_model_dir) as gw, gw.client() as lab:
        models = gw.app.state.gateway.models
        assert lab.get("/v1/hooks", params={"model": "wide"}).json()["d_model"] == WIDE
        assert lab.get("/v1/usage", params={"model": "wide"}).status_code == 200
        assert str(wide_model_dir.resolve()) not in models.loaded()
        weights = copied / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        hashed = []
        real = pool_module.catalog.fingerprint
        pool_module.catalog.fingerprint = lambda d: hashed.append(d) or real(d)
        try:
            for _ in range(3):
                assert _generate(lab, "copied").status_code == 503
        finally:
            pool_module.catalog.fingerprint = real
        assert len(hashed) == 1
