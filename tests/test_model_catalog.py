"""The model catalog in the registry and through `enclave model ...`: onboarding with a checked card
and a signed checklist, staged release (two operators, evidence, time at stage), demotion at once,
incidents, projects' own fine-tunes, and what the review's weight checks are given."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest
from sqlmodel import select
from sqlalchemy import text

from enclave.demo.seed import MODEL_CARDS, demo_model_cards
from enclave.errors import BadInput, Conflict, Forbidden, NotFound, Refused
from enclave.registry import catalog, credentials, grants, model_card, people
from enclave.registry.clock import utcnow
from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent, ModelEntry, ModelStageStep
from enclave.review.scan_context import build_scan_context

from tests.gateway_fixtures import build_tiny_model
from tests.helpers import OPERATOR, approved_project
from tests.test_cli import InProcessCli

SECOND = "olga"  # a second operator
CARDS = demo_model_cards({"final_loss": 0.5, "n_parameters": 1, "steps": 1},
                         {"eval_loss": 10.8, "eval_perplexity": 49000.0, "n_parameters": 1})
CARD = CARDS["demo-gpt2"]
CHECKLIST = (MODEL_CARDS / "checklist.toml").read_text(encoding="utf-8")
PASSWORDS = {OPERATOR: "op's own long password", SECOND: "olga's own long password"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("catalog-model"))


@pytest.fixture
def registry(engine):
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, SECOND, "Olga", "olga@example.org", roles=["operator"])
        for who, password in PASSWORDS.items():
            credentials.set_password(s, OPERATOR, who, password)
    approved_project(engine, "lab", "sam")
    approved_project(engine, "deep", "dora")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "lab", tier="score")
        grants.set_grant(s, OPERATOR, "deep", tier="internals")
    return engine


def _onboard(engine, model_dir, name="m1", stage="internal", now=None):
    with session_scope(engine) as s:
        return catalog.onboard(s, actor=OPERATOR, name=name, directory=model_dir, card=CARD, checklist=CHECKLIST,
                               stage=stage, now=now, cosigned_by=None if stage == "internal" else SECOND)


def _events(engine, action):
    with session_scope(engine) as s:
        return [json.loads(e.details) | {"actor": e.actor, "subject": e.subject}
                for e in s.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()]


def test_onboarding_beyond_internal_needs_a_second_operator(registry, model_dir):
    """Starting a model at a later stage skips staged release: one operator alone cannot."""
    with session_scope(registry) as s, pytest.raises(Refused, match="second operator"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST,
                        stage="general")
    with session_scope(registry) as s, pytest.raises(Refused, match="cannot cosign their own"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST,
                        stage="general", cosigned_by=OPERATOR)
    with session_scope(registry) as s, pytest.raises(Forbidden):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST,
                        stage="general", cosigned_by="sam")  # a scholar
    with session_scope(registry) as s:
        assert catalog.find_model(s, "m1") is None
    _onboard(registry, model_dir, "m1", stage="general")
    [event] = _events(registry, "model.onboard")
    assert event["stage"] == "general" and event["cosigned_by"] == SECOND


def test_onboarding_records_the_weights_digest_and_the_review_fingerprints_them(registry, model_dir):
    entry = _onboard(registry, model_dir)
    digest, parameters = catalog.fingerprint(model_dir)
    assert entry.weights_sha256 == digest and len(digest) == 64
    from transformers import GPT2LMHeadModel

    assert parameters == sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(model_dir).parameters())
    assert entry.stage == "internal" and entry.base_model is None  # the card says base_model: none
    assert entry.checklist_signed_by == OPERATOR and json.loads(entry.checklist)["launch"]["rollback"]["answer"]
    assert entry.summary.startswith("A small GPT-2")
    [event] = _events(registry, "model.onboard")
    assert event["weights_sha256"] == digest and event["subject"] == "model:m1" and event["actor"] == OPERATOR
    with session_scope(registry) as s:
        assert catalog.directories(s) == [str(model_dir.resolve())]
        context = build_scan_context(s, "lab", model_dirs=[str(model_dir)])
    # The review's weight checks are given the catalog's directories (once, however spelled).
    assert [p.resolve() for p in context.model_dirs] == [model_dir.resolve()]
    with session_scope(registry) as s:
        assert build_scan_context(s, None).model_dirs == [model_dir.resolve()]


def test_onboarding_refuses_a_bad_card_a_short_checklist_a_taken_name_and_non_operators(registry, model_dir):
    bad_card = CARD.replace("## Factors", "## Something")
    with session_scope(registry) as s, pytest.raises(BadInput, match="model card has 1 error.*'factors'"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=bad_card, checklist=CHECKLIST)
    short = CHECKLIST.replace("rollback =", "# rollback =")
    with session_scope(registry) as s, pytest.raises(BadInput, match="risk checklist has 1 error.*launch.rollback"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=short)
    with session_scope(registry) as s, pytest.raises(Forbidden):
        catalog.onboard(s, actor="sam", name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST)
    with session_scope(registry) as s, pytest.raises(BadInput, match="stage must be one of"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST,
                        stage="beta")
    _onboard(registry, model_dir)
    with session_scope(registry) as s, pytest.raises(Conflict, match="exists already"):
        catalog.onboard(s, actor=OPERATOR, name="m1", directory=model_dir, card=CARD, checklist=CHECKLIST)
    with session_scope(registry) as s, pytest.raises(BadInput, match="no weight files"):
        catalog.onboard(s, actor=OPERATOR, name="m2", directory=model_dir.parent, card=CARD, checklist=CHECKLIST)


def test_visibility_follows_stage_against_tier(registry, model_dir):
    _onboard(registry, model_dir, "pub", stage="general")
    _onboard(registry, model_dir, "gate", stage="gated")
    _onboard(registry, model_dir, "part", stage="partner")
    _onboard(registry, model_dir, "int", stage="internal")
    with session_scope(registry) as s:
        assert [e.name for e in catalog.visible_models(s, "lab")] == ["gate", "pub"]
        assert [e.name for e in catalog.visible_models(s, "deep")] == ["gate", "part", "pub"]
        with pytest.raises(catalog.ModelNotReleased) as refused:
            catalog.require_visible(s, "lab", "part")
        assert "'partner' release stage, which needs the 'internals' tier" in refused.value.message
        assert "project 'lab' has the 'score' tier" in refused.value.message
        with pytest.raises(catalog.ModelNotReleased, match="needs the 'finetune' tier"):
            catalog.require_visible(s, "deep", "int")
        assert catalog.require_visible(s, "deep", "part").name == "part"
        with pytest.raises(catalog.UnknownModel, match="no model 'nope' for project 'lab'"):
            catalog.require_visible(s, "lab", "nope")
    # The rule is one table, least released first.
    assert [catalog.STAGE_TIERS[s] for s in catalog.STAGES] == ["finetune", "internals", "score", "sample"]


def test_promotion_needs_evidence_time_at_stage_and_two_different_operators(registry, model_dir):
    start = utcnow() - dt.timedelta(days=30)
    _onboard(registry, model_dir, "m1", stage="internal", now=start)
    with session_scope(registry) as s:
        catalog.record_incident(s, actor=OPERATOR, name="m1", note="a partner saw a name leak",
                                now=start + dt.timedelta(days=2))
    report = b"# Evaluation\nmemorisation: 3 of 200 records\n"

    def propose(actor=OPERATOR, to="partner", evidence=report, now=None, min_days=14):
        with session_scope(registry) as s:
            return catalog.propose_promotion(s, actor=actor, name="m1", to_stage=to, evidence_name="eval.md",
                                             evidence=evidence, min_days=min_days, now=now)

    with pytest.raises(Conflict, match="one stage at a time, to 'partner'"):
        propose(to="gated")
    with pytest.raises(BadInput, match="evaluation report is empty"):
        propose(evidence=b"  \n")
    with pytest.raises(Refused, match="at 'internal' for 5.0 days; the release policy needs 14 days"):
        propose(now=start + dt.timedelta(days=5))
    with session_scope(registry) as s, pytest.raises(Conflict, match="no pending promotion"):
        catalog.sign_promotion(s, actor=SECOND, name="m1")
    promotion = propose()
    assert promotion.evidence_sha256 == __import__("hashlib").sha256(report).hexdigest()
    assert [i["note"] for i in json.loads(promotion.incidents)] == ["a partner saw a name leak"]
    assert promotion.days_at_stage >= 30
    # Proposing does not change the stage; the proposer cannot sign their own proposal.
    with session_scope(registry) as s:
        assert catalog.get_model(s, "m1").stage == "internal"
        with pytest.raises(Refused, match="cannot also sign it"):
            catalog.sign_promotion(s, actor=OPERATOR, name="m1")
        with pytest.raises(Forbidden):
            catalog.sign_promotion(s, actor="sam", name="m1")
    with session_scope(registry) as s:
        entry = catalog.sign_promotion(s, actor=SECOND, name="m1")
        assert entry.stage == "partner"
    # At the new stage the clock starts again, and the old stage's incidents are not carried over.
    with pytest.raises(Refused, match="at 'partner' for 0.0 days"):
        propose(to="gated")
    later = utcnow() + dt.timedelta(days=15)
    promotion = propose(to="gated", now=later)
    assert json.loads(promotion.incidents) == []
    [signed] = _events(registry, "model.promoted")
    assert (signed["proposed_by"], signed["signed_by"], signed["from"], signed["to"]) == (OPERATOR, SECOND, "internal", "partner")
    assert [e["evidence_sha256"] for e in _events(registry, "model.promotion_proposed")][0] == signed["evidence_sha256"]


def test_the_signer_checks_the_time_at_stage_and_incidents_since_the_proposal(registry, model_dir):
    _onboard(registry, model_dir, "m1", now=utcnow() - dt.timedelta(days=20))
    with session_scope(registry) as s:
        catalog.propose_promotion(s, actor=OPERATOR, name="m1", to_stage="partner", evidence_name="e.md",
                                  evidence=b"fine", min_days=0)
    with session_scope(registry) as s, pytest.raises(Refused, match="needs 30 days at a stage"):
        catalog.sign_promotion(s, actor=SECOND, name="m1", min_days=30)
    with session_scope(registry) as s:
        catalog.record_incident(s, actor=SECOND, name="m1", note="a name leaked")
    with session_scope(registry) as s, pytest.raises(Conflict, match="1 incident"):
        catalog.sign_promotion(s, actor=SECOND, name="m1")
    with session_scope(registry) as s:
        assert catalog.get_model(s, "m1").stage == "internal"
        catalog.propose_promotion(s, actor=OPERATOR, name="m1", to_stage="partner", evidence_name="e.md",
                                  evidence=b"fine", min_days=0)
    with session_scope(registry) as s:
        assert catalog.sign_promotion(s, actor=SECOND, name="m1").stage == "partner"
        catalog.withdraw(s, actor=SECOND, name="m1", reason="pause")
    with session_scope(registry) as s, pytest.raises(Conflict, match="withdrawn from service"):
        catalog.propose_promotion(s, actor=OPERATOR, name="m1", to_stage="gated", evidence_name="e.md",
                                  evidence=b"fine", min_days=0)


def test_demotion_is_immediate_cancels_a_pending_promotion_and_history_tells_it_all(registry, model_dir):
    start = utcnow() - dt.timedelta(days=20)
    _onboard(registry, model_dir, "m1", stage="gated", now=start)
    with session_scope(registry) as s:
        catalog.propose_promotion(s, actor=OPERATOR, name="m1", to_stage="general", evidence_name="eval.md",
                                  evidence=b"fine", min_days=14)
    with session_scope(registry) as s:
        with pytest.raises(Conflict, match="demotion goes to a lower stage"):
            catalog.demote(s, actor=SECOND, name="m1", to_stage="general", reason="x")
        with pytest.raises(BadInput, match="say why"):
            catalog.demote(s, actor=SECOND, name="m1", to_stage="internal", reason=" ")
    with session_scope(registry) as s:
        assert catalog.demote(s, actor=SECOND, name="m1", to_stage="internal", reason="leaks names").stage == "internal"
    with session_scope(registry) as s:
        assert catalog.pending_promotion(s, catalog.get_model(s, "m1")) is None
        with pytest.raises(Conflict, match="no pending promotion"):
            catalog.sign_promotion(s, actor=SECOND, name="m1")
        events = catalog.history(s, "m1")
    assert [(e["event"], e.get("state")) for e in events] == [
        ("onboard", None), ("proposed", "cancelled"), ("demote", None)]
    assert events[-1]["note"] == "leaks names" and events[-1]["from"] == "gated"
    assert "the model was demoted" in events[1]["note"]
    # The history is append-only in the database, like the audit log.
    with pytest.raises(Exception, match="append-only"):
        with registry.begin() as conn:
            conn.execute(text("DELETE FROM model_stage_step"))
    with session_scope(registry) as s:
        assert len(s.exec(select(ModelStageStep)).all()) == 2


def test_register_finetune_is_served_to_its_project_only(registry, model_dir, tmp_path):
    ft_dir = shutil.copytree(model_dir, tmp_path / "ft")
    with session_scope(registry) as s:
        with pytest.raises(BadInput, match="needs its epsilon and delta"):
            catalog.register_finetune(s, name="lab-ft", directory=str(ft_dir), base_model="m1", project_slug="lab",
                                      epsilon=None, delta=None, non_private=False, actor="sam", report={})
    with session_scope(registry) as s:
        entry = catalog.register_finetune(s, name="lab-ft", directory=str(ft_dir), base_model="m1",
                                          project_slug="lab", epsilon=2.0, delta=1e-5, non_private=False,
                                          actor="sam", report={"steps": 10, "exposure": {"max": 3.1}})
        assert entry.owner_project_id is not None and entry.weights_sha256 == catalog.fingerprint(ft_dir)[0]
    with session_scope(registry) as s:
        assert [e.name for e in catalog.visible_models(s, "lab")] == ["lab-ft"]
        assert catalog.require_visible(s, "lab", "lab-ft").dp_epsilon == 2.0
        assert catalog.visible_models(s, "deep") == []
        with pytest.raises(catalog.UnknownModel) as hidden:
            catalog.require_visible(s, "deep", "lab-ft")
        with pytest.raises(catalog.UnknownModel) as unknown:
            catalog.require_visible(s, "deep", "no-such")
        # Another project's model reads exactly like one that does not exist.
        assert hidden.value.message.replace("lab-ft", "X") == unknown.value.message.replace("no-such", "X")
        with pytest.raises(Conflict, match="not released in stages"):
            catalog.demote(s, actor=OPERATOR, name="lab-ft", to_stage="internal", reason="x")
        assert str(ft_dir.resolve()) in catalog.directories(s)
    [event] = _events(registry, "model.finetune_registered")
    assert event["project"] == "lab" and event["report"]["exposure"] == {"max": 3.1} and event["epsilon"] == 2.0


# --- through the command line ---------------------------------------------------------------------

@pytest.fixture
def cli(registry, db_url, tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(ENCLAVE_HOME=str(tmp_path / "home"), ENCLAVE_DB_URL=db_url)
    return InProcessCli(env, monkeypatch)


def _password_file(tmp_path, who):
    path = tmp_path / f"{who}.pw"
    path.write_text(PASSWORDS[who] + "\n")
    path.chmod(0o600)
    return str(path)


def test_cli_lint_onboard_promote_sign_demote_history(cli, model_dir, tmp_path):
    card = tmp_path / "card.md"
    card.write_text(CARD.replace("English", "English").replace("## Metrics", "## Numbers"))
    checklist = tmp_path / "checklist.toml"
    checklist.write_text(CHECKLIST)
    linted = cli("model", "lint", str(card), code=1)
    assert "error: no 'metrics' section" in linted.stdout and "1 error(s)" in linted.stdout
    card.write_text(CARD)
    assert "no findings" in cli("model", "lint", str(card), "--checklist", str(checklist)).stdout
    assert "envision" in cli("model", "checklist-template").stdout

    op_pw, olga_pw = _password_file(tmp_path, OPERATOR), _password_file(tmp_path, SECOND)
    onboard = ["model", "onboard", str(model_dir), "--name", "m1", "--card", str(card), "--checklist", str(checklist)]
    cli.fails(*onboard, "--as", OPERATOR, match="needs op's own password")
    cli.fails(*onboard, "--as", OPERATOR, "--password-file", olga_pw, match="needs op's own password")
    cli.fails("model", "onboard", str(tmp_path), "--name", "m1", "--card", str(card), "--checklist", str(checklist),
              "--as", OPERATOR, "--password-file", op_pw, match="has no config.json")
    out = cli(*onboard, "--as", OPERATOR, "--password-file", op_pw).stdout
    assert "onboarded m1 at stage internal" in out
    listed = cli.json("model", "list")
    assert [(m["name"], m["stage"]) for m in listed] == [("m1", "internal")]
    # Straight to general: a second operator, with her own password, or nothing happens.
    public = [*onboard[:4], "m0", *onboard[5:], "--stage", "general", "--as", OPERATOR, "--password-file", op_pw]
    cli.fails(*public, match="needs a second operator's sign-off")
    cli.fails(*public, "--cosign", SECOND, "--cosign-password-file", op_pw, match="needs olga's own password")
    assert "onboarded m0 at stage general" in cli(*public, "--cosign", SECOND, "--cosign-password-file",
                                                  olga_pw).stdout
    shown = cli.json("model", "show", "m1")
    assert shown["checklist_signed_by"] == OPERATOR and shown["card_meta"]["license"] == "apache-2.0"

    evidence = tmp_path / "eval.md"
    evidence.write_text("# Evaluation\nno leaks found\n")
    promote = ["model", "promote", "m1", "--to", "partner", "--evidence", str(evidence)]
    # The shipped policy says 14 days at a stage.
    cli.fails(*promote, "--as", OPERATOR, "--password-file", op_pw, match="needs 14 days at a stage")
    policy = tmp_path / "policy.toml"
    policy.write_text("[release]\nmin_days_at_stage = 0\n")
    out = cli(*promote, "--as", OPERATOR, "--password-file", op_pw, "--policy", str(policy)).stdout
    assert "another operator must sign" in out
    cli.fails("model", "sign", "m1", "--as", OPERATOR, "--password-file", op_pw, match="cannot also sign")
    cli.fails("model", "sign", "m1", "--as", SECOND, "--password-file", op_pw, match="needs olga's own password")
    # The signer's own policy counts too: the proposer's 0 days does not bind her.
    cli.fails("model", "sign", "m1", "--as", SECOND, "--password-file", olga_pw, match="needs 14 days at a stage")
    assert "now at stage partner" in cli("model", "sign", "m1", "--as", SECOND, "--password-file", olga_pw,
                                         "--policy", str(policy)).stdout
    cli("model", "incident", "m1", "--note", "odd output reported", "--as", SECOND)
    assert "now at stage internal" in cli("model", "demote", "m1", "--to", "internal", "--reason", "pause",
                                          "--as", SECOND).stdout
    history = cli("model", "history", "m1").stdout
    for words in ("onboard", "proposed (signed)", "promote", "op + olga", "incident", "demote", "pause"):
        assert words in history, history
    assert [e["event"] for e in cli.json("model", "history", "m1")] == ["onboard", "proposed", "promote", "incident",
                                                                        "demote"]
    assert "m1 is withdrawn" in cli("model", "withdraw", "m1", "--reason", "leak", "--as", SECOND).stdout
    assert cli.json("model", "show", "m1")["withdrawn"]["reason"] == "leak"
    cli.fails("model", "withdraw", "m1", "--reason", "again", "--as", SECOND, match="withdrawn already")
    assert "back in service" in cli("model", "restore", "m1", "--reason", "fixed", "--as", OPERATOR,
                                    "--password-file", op_pw).stdout
    failed = _events(cli_engine(cli), "model.login_failed")
    assert len(failed) == 4 and {e["password_given"] for e in failed} == {True, False}  # one a cosigner


def cli_engine(cli):
    from enclave.registry.db import make_engine

    return make_engine(cli.env["ENCLAVE_DB_URL"])


# --- the demo's models ----------------------------------------------------------------------------

def test_the_larger_demo_model_is_gpt2_124m_sized_and_cached():
    from enclave.demo import large
    from enclave.envsettings import cache_dir

    folder = large.build_large_demo(cache_dir("demo-large-model"))  # seconds the first time, then cached
    manifest = large.read_manifest(folder)
    assert manifest["n_parameters"] == 124_439_808 == catalog.fingerprint(folder)[1]
    assert 10.0 < manifest["eval_loss"] < 11.5  # chance level: ln 50,257 = 10.8
    assert large.build_large_demo(folder) == folder and large.read_manifest(folder) == manifest
    card = demo_model_cards({"final_loss": 0.5, "n_parameters": 1, "steps": 1}, manifest)["gpt2-124m-random"]
    assert model_card.lint_card(card) == [] and "124,439,808" in card


def test_seeding_the_demo_models_is_idempotent(registry, model_dir, tmp_path):
    from enclave.demo.seed import DEMO_MODEL, LARGE_MODEL, seed_demo_models

    wide = build_tiny_model(tmp_path / "wide", n_embd=96, seed=1)
    manifests = ({"final_loss": 0.5, "n_parameters": 3, "steps": 1},
                 {"eval_loss": 10.8, "eval_perplexity": 49000.0, "n_parameters": 5})
    first = seed_demo_models(registry, model_dir, wide, *manifests)
    assert f"onboarded model {DEMO_MODEL} at stage general" in first[0]
    assert any(f"onboarded model {LARGE_MODEL} at stage partner" in line for line in first)
    again = seed_demo_models(registry, model_dir, wide, *manifests)
    assert not any("onboarded" in line for line in again)
    with session_scope(registry) as s:
        assert [e.name for e in catalog.visible_models(s, "lab")] == [DEMO_MODEL]  # score tier
        assert [e.name for e in catalog.visible_models(s, "deep")] == [DEMO_MODEL, LARGE_MODEL]  # internals
