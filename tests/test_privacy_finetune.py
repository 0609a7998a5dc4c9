"""DP fine-tuning jobs: bad input is refused before anything is recorded or charged; a job is
charged once, when it starts; `enclave finetune` trains the demo GPT-2 with Opacus and registers
the model (served to its project only) with its canary-exposure and membership reports; the
privacy service queues a notebook's job and its worker runs it, with progress to poll."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from enclave.errors import AccessDenied, BadInput, Conflict, Forbidden, NotFound, Refused
from enclave.privacy import finetune, jobs
from enclave.privacy.app import create_app
from enclave.privacy.settings import PrivacySettings
from enclave.registry import access, audit, catalog, datasets, finetunes, grants, people, privacy
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import FinetuneJob
from enclave.registry.privacy import BudgetExhausted
from tests.conftest import OPERATOR
from tests.demo_fixture import demo_dir  # noqa: F401  (fixture)
from tests.helpers import approved_project
from tests.test_cli import InProcessCli
from tests.test_privacy_service import TOKENS, FakeIdentity

LAB, SCHOLAR, OTHER = "lab", "sofia", "other"
RECORDS = 60
P = "/services/privacy"
# A fine-tune that takes seconds: few records, one epoch, few canaries and candidates.
QUICK = dict(epochs=1, batch_size=16, max_length=40, max_records=RECORDS, canaries_per_repeat=1,
             canary_candidates=60, holdout=0.2, learning_rate=1e-3)


def _people_csv(path, demo) -> str:
    """The demo's people records, first RECORDS + a few (the records a job trains on)."""
    lines = demo.people_csv.read_text(encoding="utf-8").splitlines()[:RECORDS + 11]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def setup_lab(engine, tmp_path, demo_dir):  # noqa: F811
    """Two approved projects, each with a budget of epsilon 10 and its own dataset."""
    approved_project(engine, LAB, SCHOLAR)
    approved_project(engine, OTHER, "bob")
    secret = tmp_path / "secret.txt"
    secret.write_text("one line\nanother line\n")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, LAB, epsilon=10.0, delta=1e-3, tier="finetune")
        grants.set_grant(s, OPERATOR, OTHER, epsilon=10.0, delta=1e-3)
        datasets.register(s, OPERATOR, "people", _people_csv(tmp_path / "people.csv", demo_dir), ["dob", "zip"])
        datasets.register(s, OPERATOR, "secret", str(secret), [])
        datasets.allow(s, OPERATOR, "people", LAB)
        datasets.allow(s, OPERATOR, "secret", OTHER)
        people.add_person(s, OPERATOR, "clerk", "Clerk", "clerk@example.org", roles=["scholar"])
    return engine


@pytest.fixture
def lab(engine, tmp_path, demo_dir):  # noqa: F811
    return setup_lab(engine, tmp_path, demo_dir)


@pytest.fixture
def sqlite_lab(tmp_path, demo_dir):  # noqa: F811
    """The lab on a fresh SQLite registry only: the tests that train run once, not per database."""
    url = f"sqlite:///{tmp_path / 'enclave.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"],
                          bootstrap=True)
    yield setup_lab(engine, tmp_path, demo_dir)
    engine.dispose()


def _submit(engine, demo, *, epsilon=2.0, delta=1e-4, dataset="people", actor=OPERATOR, slug=LAB, **kw):
    params = finetune.FinetuneParams(epsilon=None if kw.get("non_private") else epsilon, delta=delta, **QUICK)
    return jobs.submit(engine, lambda s: finetunes.operator_access(s, actor, slug), via="cli", dataset=dataset,
                       epsilon=epsilon, delta=delta, base=None, params=params, default_dir=demo.model_dir, **kw)


def _nothing_recorded(engine) -> None:
    with session_scope(engine) as s:
        assert s.exec(select(FinetuneJob)).all() == []
        assert privacy.ledger_json(s, LAB)["spends"] == 0


@pytest.mark.timeout(1800)  # the demo model's first build on a fresh machine
@pytest.mark.parametrize("bad, error, match", [
    (dict(epsilon=0), BadInput, "epsilon must be a positive number"),
    (dict(epsilon=-1), BadInput, "epsilon must be a positive number"),
    (dict(delta=1 / 40), BadInput, "delta must be below 1/n"),  # 48 training records: 1/48 < 1/40
    (dict(dataset="nope"), NotFound, "unknown dataset"),
    (dict(dataset="secret"), AccessDenied, "may not use dataset"),
    (dict(epsilon=11), BudgetExhausted, "privacy budget exhausted"),
    (dict(non_private=True), BadInput, "--override-by"),
    (dict(non_private=True, override_by="clerk"), Forbidden, "operator role"),
    (dict(override_by=OPERATOR), BadInput, "only goes with --non-private"),
    (dict(actor="clerk"), Forbidden, "operator role"),
    (dict(slug=OTHER, dataset="secret"), Refused, "needs the 'finetune' tier; project 'other' has the 'score'"),
])
def test_bad_input_is_refused_and_charges_nothing(lab, demo_dir, bad, error, match):  # noqa: F811
    with pytest.raises(error, match=match):
        _submit(lab, demo_dir, **bad)
    _nothing_recorded(lab)


def _submit_params(engine, demo, *, via="cli", **change):
    params = finetune.FinetuneParams(**{"epsilon": 2.0, "delta": 1e-4, **QUICK, **change})
    if via == "cli":
        granted = lambda s: finetunes.operator_access(s, OPERATOR, LAB)  # noqa: E731
    else:
        granted = lambda s: access.resolve(s, SCHOLAR, LAB)  # noqa: E731
    return jobs.submit(engine, granted, via=via, dataset="people", epsilon=params.epsilon, delta=params.delta,
                       base=None, params=params, default_dir=demo.model_dir)


@pytest.mark.parametrize("via, change, match", [
    ("cli", dict(epochs=2.0), "epochs must be an integer"),
    ("cli", dict(batch_size=True), "batch_size must be an integer"),
    ("cli", dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
    ("cli", dict(max_length=100_000), "max length at most 4096"),
    ("cli", dict(max_length=300), "max length 300 is more than the base model's 256 positions"),
    ("cli", dict(canary_candidates=1_000_000), "canary candidates must be between 10 and 100,000"),
    ("cli", dict(canaries_per_repeat=11), "between 0 and 10"),
    ("cli", dict(epsilon=1e-7), "epsilon 1e-07 cannot be reached"),
    ("service", dict(canaries_per_repeat=0), "at least 1 canary per repetition count"),
    ("service", dict(holdout=0.1), "keeps 6 of 60 records out"),
    ("service", dict(noise_seed=5), "noise_seed is not accepted from notebooks"),
])
def test_settings_that_cannot_run_or_would_skip_the_audits_are_refused_uncharged(lab, demo_dir, via, change,  # noqa: F811
                                                                                  match):
    with pytest.raises(BadInput, match=match):
        _submit_params(lab, demo_dir, via=via, **change)
    _nothing_recorded(lab)


def test_a_notebooks_job_with_its_audits_on_is_queued(lab, demo_dir):  # noqa: F811
    job_id = _submit_params(lab, demo_dir, via="service")  # QUICK: 1 canary per count, 12 of 60 held out
    with session_scope(lab) as s:
        job = finetunes.get(s, job_id)
        assert job.status == "queued" and job.via == "service" and job.requested_by == SCHOLAR


def test_unknown_base_model_is_refused(lab, demo_dir):  # noqa: F811
    params = finetune.FinetuneParams(epsilon=1.0, delta=1e-4, **QUICK)
    with pytest.raises(catalog.UnknownModel, match="no model 'gpt-nothing' for project 'lab'"):
        jobs.submit(lab, lambda s: finetunes.operator_access(s, OPERATOR, LAB), via="cli", dataset="people",
                    epsilon=1.0, delta=1e-4, base="gpt-nothing", params=params, default_dir=demo_dir.model_dir)
    _nothing_recorded(lab)


def test_another_projects_model_cannot_be_the_base(lab, demo_dir):  # noqa: F811
    """Another project's fine-tune is answered like a model that does not exist: it cannot be
    fine-tuned into a model this project is then served."""
    with session_scope(lab) as s:
        catalog.register_finetune(s, name="others-model", directory=str(demo_dir.model_dir), base_model="default",
                                  project_slug=OTHER, epsilon=1.0, delta=1e-5, non_private=False, actor=OPERATOR,
                                  report={})
    params = finetune.FinetuneParams(epsilon=1.0, delta=1e-4, **QUICK)
    with pytest.raises(catalog.UnknownModel, match="no model 'others-model' for project 'lab'"):
        jobs.submit(lab, lambda s: finetunes.operator_access(s, OPERATOR, LAB), via="cli", dataset="people",
                    epsilon=1.0, delta=1e-4, base="others-model", params=params, default_dir=demo_dir.model_dir)
    _nothing_recorded(lab)


def test_a_job_is_charged_once_when_it_starts(lab, demo_dir):  # noqa: F811
    job_id = _submit(lab, demo_dir, epsilon=2.0, delta=1e-4)
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 0  # queued: nothing charged yet
        job = finetunes.start(s, job_id, worker="test:1", model_name=jobs.model_name(job_id, LAB))
        assert job.status == "running" and job.spend_id
    with session_scope(lab) as s, pytest.raises(Conflict, match="not queued"):
        finetunes.start(s, job_id, worker="test:2", model_name="again")
    with session_scope(lab) as s:
        ledger = privacy.ledger_json(s, LAB)
        assert ledger["spends"] == 1 and ledger["spent"] == {"epsilon": 2.0, "delta": 1e-4}
        assert ledger["ledger"][0]["mechanism"] == "dp-sgd"
        assert ledger["ledger"][0]["query"]["finetune"] == job_id
        failed = finetunes.fail(s, job_id, "killed")
        assert failed.status == "failed" and "stays on the ledger" in failed.message
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 1  # failing neither refunds nor charges again


def test_a_job_the_budget_can_no_longer_pay_fails_uncharged(lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(lab, demo_dir, epsilon=6.0, delta=1e-4)
    other = _submit(lab, demo_dir, epsilon=6.0, delta=1e-4)  # each fits alone; together they do not
    with session_scope(lab) as s:
        finetunes.start(s, job_id, worker="test:1", model_name=jobs.model_name(job_id, LAB))
    out = jobs.execute(lab, other, home=tmp_path / 'home', default_dir=demo_dir.model_dir)
    assert out["status"] == "failed" and "privacy budget exhausted" in out["message"] and out["spend"] is None
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spent"]["epsilon"] == 6.0


def test_a_job_whose_tier_was_lowered_while_queued_fails_uncharged(lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(lab, demo_dir, epsilon=1.0, delta=1e-4)
    with session_scope(lab) as s:
        grants.set_grant(s, OPERATOR, LAB, tier="internals")
    out = jobs.execute(lab, job_id, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "failed" and "needs the 'finetune' tier" in out["message"] and out["spend"] is None
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 0


@pytest.fixture
def sqlite_cli(sqlite_lab, tmp_path, monkeypatch, demo_dir):  # noqa: F811
    """`enclave` in-process on the SQLite lab; the demo model is the default base."""
    env = {"ENCLAVE_HOME": str(tmp_path / "home"), "ENCLAVE_DB_URL": sqlite_lab.url.render_as_string(hide_password=False),
           "ENCLAVE_OPERATOR": OPERATOR, "ENCLAVE_MODEL_DIR": str(demo_dir.model_dir)}
    runner = InProcessCli(env, monkeypatch)
    runner.engine = sqlite_lab
    return runner


@pytest.mark.timeout(1800)
def test_cli_finetune_registers_a_model_with_its_exposure_report(sqlite_cli, tmp_path, demo_dir):  # noqa: F811
    cli = sqlite_cli
    out = json.loads(cli("finetune", "--project", LAB, "--dataset", "people", "--epsilon", "4", "--delta", "1e-4",
                         "--epochs", "1", "--batch-size", "16", "--max-length", "40", "--max-records", str(RECORDS),
                         "--canaries", "1", "--canary-candidates", "60", "--holdout", "0.2", "--device", "cpu",
                         "--json").stdout)
    assert out["status"] == "done", out["message"]
    assert out["progress"]["step"] == out["progress"]["total"] > 0
    assert 0 < out["progress"]["epsilon_spent"] <= 4.0 + 1e-6
    assert [row["repeats"] for row in out["exposure"]["table"]] == [1, 4, 16]
    assert out["exposure"]["candidates"] == 60 and len(out["exposure"]["canaries"]) == 3
    assert out["membership"]["tool"] == "sacroml" and 0 <= out["membership"]["worst_case"]["auc_mean"] <= 1
    with session_scope(cli.engine) as s:
        entry = catalog.get_model(s, out["model"])
        assert entry.owner_project_id is not None and not entry.non_private and entry.dp_epsilon == 4.0
        assert (tmp_path / "home" / "models" / "finetunes" / out["model"] / "config.json").is_file()
        assert entry.directory == out["model_dir"]
        assert json.loads(entry.report)["finetune_job"] == out["id"]
        assert [m.name for m in catalog.visible_models(s, OTHER)].count(out["model"]) == 0
        ledger = privacy.ledger_json(s, LAB)
        assert ledger["spends"] == 1 and ledger["spent"]["epsilon"] == 4.0
    shown = cli("finetune", "show", out["id"]).stdout
    assert "done" in shown and "canary exposure" in shown and "repeats" in shown
    listed = cli.json("finetune", "list")
    assert [j["id"] for j in listed] == [out["id"]]
    cli.fails("finetune", "--project", LAB, "--dataset", "people", "--epsilon", "0", "--delta", "1e-4",
              match="epsilon must be a positive number")
    cli.fails("finetune", "--project", LAB, "--dataset", "people", "--non-private", match="--override-by")
    # Naming an operator is not their decision: the override needs their own password.
    cli.fails("finetune", "--project", LAB, "--dataset", "people", "--non-private", "--override-by", OPERATOR,
              match=f"needs {OPERATOR}'s own password")
    with session_scope(cli.engine) as s:
        assert [e.action for e in audit.iter_events(s)][-1] == "finetune.override_login_failed"
        assert len(finetunes.jobs(s)) == 1  # the DP job above; no non-private one


@pytest.mark.timeout(1800)
def test_a_non_private_fine_tune_needs_an_override_and_is_marked_everywhere(sqlite_lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(sqlite_lab, demo_dir, epsilon=None, delta=None, non_private=True, override_by=OPERATOR)
    out = jobs.execute(sqlite_lab, job_id, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "done", out["message"]
    assert out["non_private"] and out["override_by"] == OPERATOR and out["epsilon"] is None and out["spend"] is None
    assert out["progress"]["epsilon_spent"] is None and out["exposure"]["table"]
    with session_scope(sqlite_lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 0  # nothing a finite epsilon could describe
        entry = catalog.get_model(s, out["model"])
        assert entry.non_private and entry.dp_epsilon is None and "without differential privacy" in entry.summary
        assert json.loads(entry.report)["override_by"] == OPERATOR
        events = [(e.action, e.actor) for e in audit.iter_events(s) if e.subject == f"finetune:{job_id}"]
    assert ("finetune.non_private_override", OPERATOR) in events
    assert [a for a, _ in events] == ["finetune.create", "finetune.non_private_override", "finetune.start",
                                      "finetune.done"]


@pytest.fixture
def service(sqlite_lab, tmp_path, demo_dir):  # noqa: F811
    settings = PrivacySettings.for_home(tmp_path / "svc", sqlite_lab.url.render_as_string(hide_password=False),
                                        model_dir=demo_dir.model_dir)
    with TestClient(create_app(settings, identity=FakeIdentity()), raise_server_exceptions=False) as client:
        client.engine = sqlite_lab
        yield client


def _post(web, token="tok-sofia", project=LAB, **body):
    headers = {"Authorization": f"token {token}", "X-Enclave-Project": project}
    return web.post(f"{P}/api/finetune", json=body, headers=headers)


@pytest.mark.timeout(1800)
def test_service_queues_a_notebook_job_and_runs_it(service, monkeypatch):
    assert TOKENS["tok-sofia"] == SCHOLAR
    h = 0.2  # 70 records: 14 held out, the membership audit's minimum of 10 for a notebook's job
    bad = [(dict(dataset="people", epsilon=0, delta=1e-4, holdout=h), 400, "epsilon must be a positive"),
           (dict(dataset="people", epsilon=1, delta=0.5, holdout=h), 400, "delta must be below 1/n"),
           (dict(dataset="nope", epsilon=1, delta=1e-4), 404, "unknown dataset"),
           (dict(dataset="secret", epsilon=1, delta=1e-4), 403, "may not use dataset"),
           (dict(dataset="people", epsilon=50, delta=1e-4, holdout=h), 402, "privacy budget exhausted"),
           (dict(dataset="people", delta=1e-4), 400, "non-private fine-tunes are for operators"),
           (dict(dataset="people", epsilon=1, delta=1e-4, device="cuda"), 400, "unknown field"),
           (dict(dataset="people", epsilon=1, delta=1e-4, noise_seed=1), 400, "unknown field"),
           (dict(dataset="people", epsilon=True, delta=1e-4), 400, "epsilon must be a number"),
           (dict(dataset="people", epsilon=1, delta=1e-4, epochs=2.0), 400, "epochs must be an integer"),
           (dict(dataset="people", epsilon=1, delta=1e-4, holdout=0.1), 400, "holds out at least 10 records"),
           (dict(dataset="people", epsilon=1, delta=1e-4, holdout=h, canaries_per_repeat=0), 400,
            "at least 1 canary")]
    refused = service.post(f"{P}/api/finetune", json=dict(dataset="secret", epsilon=1, delta=1e-4),
                           headers={"Authorization": "token tok-bob", "X-Enclave-Project": OTHER})
    assert refused.status_code == 403 and refused.json()["error"] == "tier_required", refused.text
    for body, status, match in bad:
        reply = _post(service, **body)
        assert reply.status_code == status and match in reply.json()["message"], (body, reply.text)
    with session_scope(service.engine) as s:
        assert s.exec(select(FinetuneJob)).all() == [] and privacy.ledger_json(s, LAB)["spends"] == 0

    # The notebook client, over the TestClient's transport: submit, then poll until done.
    import httpx

    from enclave.client import Config
    from enclave.client.finetune import finetune as submit, finetune_jobs

    def request(method, url, timeout=None, **kwargs):  # the TestClient takes no timeout
        return service.request(method, url.replace("http://privacy", ""), **kwargs)

    monkeypatch.setattr(httpx, "request", request)
    monkeypatch.setenv("ENCLAVE_PRIVACY_URL", f"http://privacy{P}")
    config = Config(token="tok-sofia", project=LAB)
    job = submit("people", epsilon=3, delta=1e-4, config=config, **QUICK)
    assert job.record["status"] in ("queued", "running") and job.record["via"] == "service"
    assert job.record["requested_by"] == SCHOLAR
    polled = job.wait(poll_seconds=0.5, timeout=900, progress=False)
    assert polled["status"] == "done", polled["message"]
    assert polled["progress"]["step"] == polled["progress"]["total"] and polled["progress"]["epsilon_spent"] <= 3.0001
    assert polled["exposure"]["table"] and "membership" not in polled and "loss" not in polled["progress"]
    assert [j["id"] for j in finetune_jobs(config)] == [job.id] and "model_dir" not in polled
    assert "canaries" not in polled["exposure"] and "/" not in json.dumps(polled["message"])
    # Another project's member cannot see it.
    other = service.get(f"{P}/api/finetune/{job.id}", headers={"Authorization": "token tok-bob",
                                                                   "X-Enclave-Project": OTHER})
    assert other.status_code == 404
    with session_scope(service.engine) as s:
        ledger = privacy.ledger_json(s, LAB)
        assert ledger["spends"] == 1 and ledger["ledger"][0]["user"] == SCHOLAR
        assert catalog.get_model(s, polled["model"]).owner_project_id is not None


def _trained_weights(demo, tmp_path, name, **kw):
    """Train a tiny DP fine-tune (no canaries, no holdout) and return its saved block weights."""
    from safetensors.torch import load_file

    records = finetune.dataset_records(demo.people_csv, max_records=40)
    params = finetune.FinetuneParams(epsilon=4.0, delta=1e-3, epochs=1, batch_size=16, max_length=24,
                                     canaries_per_repeat=0, canary_candidates=10, holdout=0.0, device="cpu",
                                     seed=3, **kw)
    finetune.run(demo.model_dir, records, params, tmp_path / name)
    return {k: v for k, v in load_file(str(tmp_path / name / "model.safetensors")).items() if ".h." in k}


@pytest.mark.timeout(1800)
def test_the_dp_noise_does_not_follow_the_seed_a_notebook_sets(demo_dir, tmp_path):  # noqa: F811
    """`seed` decides the holdout split and the canaries only; the noise and the batch sampling
    come from `secrets`: two runs with the same seed train different weights. The test-only
    `noise_seed` makes a run repeat exactly."""
    import torch

    first = _trained_weights(demo_dir, tmp_path, "a")
    second = _trained_weights(demo_dir, tmp_path, "b")
    assert first.keys() == second.keys() and first
    assert any(not torch.equal(first[k], second[k]) for k in first)
    seeded = _trained_weights(demo_dir, tmp_path, "c", noise_seed=11)
    again = _trained_weights(demo_dir, tmp_path, "d", noise_seed=11)
    assert all(torch.equal(seeded[k], again[k]) for k in seeded)


@pytest.fixture
def quiet_service(lab, tmp_path, demo_dir):  # noqa: F811
    """The privacy service without its worker: jobs stay as the test records them."""
    settings = PrivacySettings.for_home(tmp_path / "svc", lab.url.render_as_string(hide_password=False),
                                        model_dir=demo_dir.model_dir, finetune_worker=False)
    with TestClient(create_app(settings, identity=FakeIdentity()), raise_server_exceptions=False) as client:
        client.engine = lab
        yield client


def test_a_notebook_sees_no_loss_membership_report_path_or_failure_detail(quiet_service, demo_dir, tmp_path):  # noqa: F811
    """What notebooks are answered about a job: status, progress without the (unnoised) loss, the
    model's name and the canary table; not the membership report (queries on private and held-out
    records), not paths, not why it failed. The operator's view keeps everything."""
    engine = quiet_service.engine
    done_id, failed_id = _submit(engine, demo_dir), _submit(engine, demo_dir)
    model_dir = str(tmp_path / "weights-on-the-enclave-disk")
    shutil.copytree(demo_dir.model_dir, model_dir)
    exposure = {"format": "my ssn is DDD-DD-DDDD", "candidates": 60, "max_rank_exposure_bits": 5.9,
                "max_exposure_bits": 29.9, "table": [{"repeats": 1, "canaries": 1, "exposure_rank_max": 1.0,
                                                      "exposure_skewnorm_max": 1.2}],
                "canaries": [{"secret": "123-45-6789", "repeats": 1}]}
    membership = {"tool": "sacroml", "worst_case": {"auc_mean": 0.61},
                  "loss_threshold": {"metrics": {"AUC": 0.58}, "member_mean_loss": 2.1, "non_member_mean_loss": 2.4}}
    with session_scope(engine) as s:
        for job_id in (done_id, failed_id):
            finetunes.start(s, job_id, worker="test:1", model_name=jobs.model_name(job_id, LAB))
        finetunes.record_progress(s, done_id, step=3, total=3, loss=2.25, epsilon_spent=1.9)
        finetunes.finish(s, done_id, model_dir=model_dir, steps=3, loss=2.25, epsilon_spent=1.9, exposure=exposure,
                         membership=membership, message=f"trained 3 steps, saved to {model_dir}")
        finetunes.fail(s, failed_id, f"failed: OSError: cannot read {tmp_path}/people.csv")
    headers = {"Authorization": "token tok-sofia", "X-Enclave-Project": LAB}
    done = quiet_service.get(f"{P}/api/finetune/{done_id}", headers=headers).json()
    failed = quiet_service.get(f"{P}/api/finetune/{failed_id}", headers=headers).json()
    listed = quiet_service.get(f"{P}/api/finetune", headers=headers).json()
    for answer in (done, failed, *listed):
        text = json.dumps(answer)
        assert str(tmp_path) not in text and "loss" not in text and "membership" not in text and "auc" not in text
        assert "model_dir" not in answer and "examples" not in answer
    assert done["status"] == "done" and done["progress"] == {"step": 3, "total": 3, "epsilon_spent": 1.9}
    assert done["model"] == jobs.model_name(done_id, LAB) and done["exposure"]["table"] == exposure["table"]
    assert "canaries" not in done["exposure"]
    assert failed["message"] == (f"failed; an operator can see why: enclave finetune show {failed_id} "
                                 "(its privacy charge stays on the ledger)")
    with session_scope(engine) as s:  # the operator's view (`enclave finetune show`) keeps it all
        full = finetunes.job_json(s, finetunes.get(s, done_id))
    assert full["progress"]["loss"] == 2.25 and full["membership"] == membership and full["model_dir"] == model_dir


def test_execute_leaves_a_job_another_worker_started_alone(lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(lab, demo_dir)
    with session_scope(lab) as s:
        finetunes.start(s, job_id, worker="elsewhere:4242", model_name=jobs.model_name(job_id, LAB))
    out = jobs.execute(lab, job_id, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "running" and out["message"] == "" and out["spend"]
    with session_scope(lab) as s:
        assert finetunes.get(s, job_id).worker == "elsewhere:4242"
        assert privacy.ledger_json(s, LAB)["spends"] == 1
        assert [e.action for e in audit.iter_events(s) if e.subject == f"finetune:{job_id}"] == [
            "finetune.create", "finetune.start"]


def test_service_start_fails_only_the_jobs_of_dead_processes_on_its_host(lab, demo_dir, tmp_path):  # noqa: F811
    import os
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    workers = {"live": f"{host}:{live.pid}", "dead": f"{host}:{gone.pid}", "remote": f"elsewhere:{gone.pid}",
               "reused": f"{host}:{os.getpid()}"}  # a restarted container's service may get its old pid back
    ids = {name: _submit(lab, demo_dir) for name in workers}
    try:
        with session_scope(lab) as s:
            for name, job_id in ids.items():
                finetunes.start(s, job_id, worker=workers[name], model_name=jobs.model_name(job_id, LAB))
        worker = jobs.Worker(lab, tmp_path / "home", demo_dir.model_dir)
        worker.start()
        worker.stop()
        with session_scope(lab) as s:
            status = {name: finetunes.get(s, job_id).status for name, job_id in ids.items()}
            message = finetunes.get(s, ids["dead"]).message
    finally:
        live.kill()
        live.wait()
    assert status == {"live": "running", "dead": "failed", "remote": "running", "reused": "failed"}
    assert f"({workers['dead']}) stopped while it ran" in message and "stays on the ledger" in message


def test_an_operator_fails_a_job_left_running(sqlite_cli, demo_dir):  # noqa: F811
    cli = sqlite_cli
    job_id = _submit(cli.engine, demo_dir)
    with session_scope(cli.engine) as s:
        finetunes.start(s, job_id, worker="laptop:99", model_name=jobs.model_name(job_id, LAB))
    cli.fails("finetune", "fail", job_id, "--reason", " ", match="say why")
    out = cli("finetune", "fail", job_id, "--reason", "the CLI was killed").stdout
    assert f"job {job_id} failed: failed by operator {OPERATOR}: the CLI was killed" in out
    cli.fails("finetune", "fail", job_id, "--reason", "again", match="is failed already")
    with session_scope(cli.engine) as s:
        job = finetunes.get(s, job_id)
        assert job.status == "failed" and "stays on the ledger" in job.message
        assert privacy.ledger_json(s, LAB)["spends"] == 1  # the charge stays
        event = [e for e in audit.iter_events(s) if e.subject == f"finetune:{job_id}"][-1]
        assert event.action == "finetune.fail" and event.actor == OPERATOR


def test_a_job_trains_at_the_epsilon_it_was_charged_and_registers_only_within_it(lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(lab, demo_dir, epsilon=2.0, delta=1e-4)
    with session_scope(lab) as s:
        job = finetunes.get(s, job_id)
        assert json.loads(job.params)["epsilon"] == 2.0 and json.loads(job.params)["delta"] == 1e-4
        # Whatever the params JSON says, the job's checked (and charged) columns decide.
        job.params = json.dumps({**json.loads(job.params), "epsilon": 9.0, "delta": 0.01})
        s.add(job)
        s.flush()
        params = jobs.job_params(job)
        assert (params.epsilon, params.delta, params.non_private) == (2.0, 1e-4, False)
        finetunes.start(s, job_id, worker="test:1", model_name=jobs.model_name(job_id, LAB))
    model_dir = str(tmp_path / "weights")
    shutil.copytree(demo_dir.model_dir, model_dir)
    done = dict(model_dir=model_dir, steps=3, loss=2.0, exposure={}, membership={})
    for spent in (None, 2.5, 2.0 * 1.0011):
        with session_scope(lab) as s, pytest.raises(Refused, match="more than the 2 charged"):
            finetunes.finish(s, job_id, epsilon_spent=spent, **done)
    with session_scope(lab) as s:
        name = jobs.model_name(job_id, LAB)
        assert finetunes.get(s, job_id).status == "running"
        assert name not in [m.name for m in catalog.visible_models(s, LAB)]
        assert finetunes.finish(s, job_id, epsilon_spent=2.0015, **done).status == "done"  # within PRV's error


def test_a_job_whose_epsilon_and_non_private_mark_disagree_fails_uncharged(lab, demo_dir, tmp_path):  # noqa: F811
    job_id = _submit(lab, demo_dir, epsilon=2.0, delta=1e-4)
    with session_scope(lab) as s:
        job = finetunes.get(s, job_id)
        job.non_private = True
        s.add(job)
    out = jobs.execute(lab, job_id, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "failed" and "disagree" in out["message"] and out["spend"] is None
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 0


def test_the_dataset_file_is_checked_at_submission_and_again_before_the_charge(lab, demo_dir, tmp_path):  # noqa: F811
    from enclave.errors import TooLarge, Unavailable

    with pytest.raises(TooLarge, match="larger than the 100 bytes"):
        jobs.submit(lab, lambda s: finetunes.operator_access(s, OPERATOR, LAB), via="cli", dataset="people",
                    epsilon=2.0, delta=1e-4, base=None, params=finetune.FinetuneParams(epsilon=2.0, delta=1e-4, **QUICK),
                    default_dir=demo_dir.model_dir, max_bytes=100)
    _nothing_recorded(lab)
    recounted = _submit(lab, demo_dir)
    with session_scope(lab) as s:
        job = finetunes.get(s, recounted)
        job.examples += 1  # the records no longer give the n that delta < 1/n was checked for
        s.add(job)
    out = jobs.execute(lab, recounted, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "failed" and "training examples now" in out["message"] and out["spend"] is None

    queued = _submit(lab, demo_dir)
    people_csv = tmp_path / "people.csv"  # the registered file (setup_lab)
    people_csv.write_text(people_csv.read_text(encoding="utf-8") + "Eve Extra,1990-01-01,F,12345,nurse,1\n",
                          encoding="utf-8")
    out = jobs.execute(lab, queued, home=tmp_path / "home", default_dir=demo_dir.model_dir)
    assert out["status"] == "failed" and "changed since it was registered" in out["message"] and out["spend"] is None
    with pytest.raises(Unavailable, match="changed since it was registered"):
        _submit(lab, demo_dir)
    with session_scope(lab) as s:
        assert privacy.ledger_json(s, LAB)["spends"] == 0
