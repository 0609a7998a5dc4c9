"""The scan pipeline as the review service calls it: scan_files, build_scan_context from the registry
and the quarantine, the worker's pipeline scanner, the gateway's score endpoint as scorer, and a
check that fails without taking the scan down."""
from __future__ import annotations

import dataclasses
import json

import pytest

from enclave.demo import data
from enclave.errors import NotFound
from enclave.registry import datasets, grants
from enclave.registry.db import session_scope
from enclave.review import service
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.release import load_or_create_key
from enclave.review.scan import checks
from enclave.review.scan.checks.base import Check
from enclave.review.scan.findings import Verdict
from enclave.review.scan import ExportFile, ScanCache, ScanContext, scan_files
from enclave.review.scan.scoring import gateway_scorer, local_scorer
from enclave.review.scan_context import build_scan_context
from enclave.review.worker import CheckWorker, PipelineScanner, run_checks
from tests.gateway_fixtures import OPERATOR, PROJECT, serve, tiny_model_dir  # noqa: F401 (fixture)
from tests.review_corpus import POLICY, of, people, people_csv, review_home  # noqa: F401 (fixture)
from tests.review_stack import AUTHOR, LAB, REVIEWERS, fake_scanner, seed, settings_for


def test_report_shape_and_json():
    report = scan_files([ExportFile("t.csv", b"g,n\na,3\n"), ExportFile("ok.md", b"fine")], POLICY, ScanContext())
    assert report.verdict is Verdict.block and report.policy_version == POLICY.version
    body = report.to_json()
    assert set(body) == {"verdict", "findings"} and body["verdict"] == "block"
    assert body["findings"] == [{"check": "tables", "severity": "block", "file": "t.csv",
                                 "location": "cell (row 1, col n)", "message": "count 3 is under the minimum of 10"}]
    assert "evidence" in report.to_json(evidence=True)["findings"][0]
    assert [(f.name, f.kind) for f in report.files] == [("t.csv", "table"), ("ok.md", "text")]
    assert len(report.files[0].sha256) == 64


def test_every_check_is_registered_once_with_a_summary():
    names = [c.name for c in checks.CHECKS]
    assert len(names) == len(set(names)) and all(c.summary for c in checks.CHECKS)
    assert {"file_policy", "archive", "containers", "weight_files", "weight_vectors", "activations", "encoded_blobs", "memorisation", "model_signals",
            "provenance", "identifiers", "record_linkage", "acro", "tables", "differencing", "egress",
            "dp_receipts"} == set(names)


def test_a_failing_check_blocks_its_file_and_the_scan_goes_on(monkeypatch):
    def broken(item, env):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(checks, "CHECKS", [Check("broken", "item", broken, "always fails"), *checks.CHECKS])
    from enclave.review.scan import pipeline as scan_module

    monkeypatch.setattr(scan_module, "CHECKS", checks.CHECKS)
    report = scan_files([ExportFile("a.txt", b"hello"), ExportFile("t.csv", b"g,n\na,3\n")], POLICY, ScanContext())
    assert [f.file for f in of(report, "broken", "block")] == ["a.txt", "t.csv"]
    assert of(report, "tables", "block")


def test_oversize_data_handed_in_is_not_scanned():
    big = b"SSN 536-22-8471\n" * (POLICY.files.max_file_bytes // 16 + 1)
    report = scan_files([ExportFile("big.txt", big)], POLICY, ScanContext())
    assert [f.check for f in report.findings] == ["file_policy"]


@pytest.fixture
def gw(engine, tiny_model_dir):
    with serve(engine, tiny_model_dir) as running:
        yield running


def test_build_scan_context_from_the_registry_and_the_gateway(gw, tmp_path):
    csv_path = people_csv(tmp_path, columns=["name", "dob", "sex", "zip"])
    with session_scope(gw.db) as s:
        datasets.register(s, OPERATOR, "people", str(csv_path), ["name", "dob", "sex", "zip"])
        datasets.allow(s, OPERATOR, "people", PROJECT)
        grants.set_grant(s, OPERATOR, PROJECT, export_bytes=50_000)
    with gw.client() as c:
        reply = c.post("/v1/generate", json={"prompt": "The census of 1990 showed", "max_new_tokens": 40,
                                             "temperature": 0, "ignore_eos": True})
        assert reply.status_code == 200, reply.text
        body = reply.json()
    generated = body["choices"][0]["text"]
    person = people()[5]
    export = (f"My notes.\nThe census of 1990 showed{generated}\nA case: {data.render_record(person)}\n").encode()
    cache = ScanCache()
    with session_scope(gw.db) as s:
        context = build_scan_context(s, PROJECT, scorer=gateway_scorer(gw.url, gw.key, PROJECT), cache=cache)
    assert context.cache is cache and context.prior_releases == [] and context.egress_used_bytes == 0
    assert context.egress_allowed_bytes == 50_000
    assert [p.name for p in context.protected] == ["people"] and context.protected[0].quasi_identifiers
    assert any(c.call_id == body["id"] for c in context.model_calls)
    report = scan_files([ExportFile("notes.md", export)], POLICY, dataclasses.replace(context, egress_used_bytes=100))
    [provenance] = of(report, "provenance")
    assert provenance.evidence["call_ids"] == [body["id"]]
    [linked] = of(report, "record_linkage", "block")
    assert linked.evidence["record"]["name"] == person.name
    assert of(report, "egress", "info")
    assert not of(report, "context")  # the gateway scored every passage


def test_gateway_and_local_scores_agree(gw, tiny_model_dir):
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    remote = gateway_scorer(gw.url, gw.key, PROJECT)(text)
    local = local_scorer(tiny_model_dir)(text)
    assert len(remote.logprobs) == len(local.logprobs) > 10
    assert remote.logprobs == pytest.approx(local.logprobs, abs=2e-3)


def test_a_refused_gateway_is_a_finding_not_a_crash(gw):
    scorer = gateway_scorer(gw.url, "not-a-real-token")
    report = scan_files([ExportFile("a.txt", b"Plenty of ordinary prose on this line, enough to score it.\n")],
                        POLICY, ScanContext(scorer=scorer))
    [f] = of(report, "context", "warn")
    assert "gateway refused to score (401)" in f.message


def test_evidence_is_json_serialisable():
    report = scan_files([ExportFile("t.csv", b"g,n\na,3\n"), ExportFile("s.txt", b"SSN 536-22-8471")], POLICY,
                        ScanContext())
    json.dumps(report.to_json(evidence=True))


def test_build_scan_context_names_unknown_projects_and_works_offline(engine, tmp_path):
    with session_scope(engine) as s, pytest.raises(NotFound):
        build_scan_context(s, "no-such-project")
    protect = people_csv(tmp_path)
    context = build_scan_context(None, None, protect_files=[protect], model_dirs=[tmp_path])
    assert [p.name for p in context.protected] == ["people.csv"] and context.model_dirs == [tmp_path]
    assert context.model_calls == [] and context.egress_allowed_bytes is None and context.cache.disk_dir is None


def test_the_pipeline_scanner_differences_against_earlier_releases(engine, tmp_path):
    """The worker's real scanner: the project's released files and their bytes come from the
    registry and the quarantine, in build_scan_context."""
    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    first = b"region,n\nnorth,100\nsouth,250\n"
    with session_scope(engine) as s:
        earlier = service.submit(s, AUTHOR, LAB, [StagedFile("by_region.csv", *quarantine.put_bytes(first))], "v1").id
    run_checks(engine, settings, quarantine, earlier, fake_scanner())
    with session_scope(engine) as s:
        shown = [f.sha256 for f in service.current_files(s, service.get_request(s, earlier))]
        service.decide(s, REVIEWERS[0], earlier, "approve", seen=shown,
                       login=service.ReviewerLogin(REVIEWERS[0], service.AuthMethod.hub_session))
    service.release_request(engine, quarantine, load_or_create_key(settings.signing_key_file), settings.release_dir,
                            earlier)
    with session_scope(engine) as s:
        context = build_scan_context(s, LAB, quarantine=quarantine)
        assert [(f.name, f.data) for f in context.prior_releases] == [("by_region.csv", first)]
        assert context.egress_used_bytes == len(first)
        later = service.submit(s, AUTHOR, LAB, [StagedFile("by_region_v2.csv", *quarantine.put_bytes(
            b"region,n\nnorth,103\nsouth,250\n"))], "v2").id
    worker = CheckWorker(engine, settings, quarantine)
    assert isinstance(worker.scanner, PipelineScanner)
    assert run_checks(engine, settings, quarantine, later, worker.scanner) == "awaiting_review"
    worker.close()
    with session_scope(engine) as s:
        request = service.get_request(s, later)
        found = service.current_findings(s, request)
        assert request.verdict == "block" and (request.policy_version, request.policy_sha256) == (POLICY.version, POLICY.sha256)
        assert [f.check for f in found if f.severity == "block"] == ["differencing"]
