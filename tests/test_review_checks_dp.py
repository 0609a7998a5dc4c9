"""DP receipts in an export: the output review verifies them against the privacy service's key,
blocks forged, altered or foreign ones, and relaxes the small-cell rule only for cells whose value
a valid receipt of this project covers."""
from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.privacy import receipts
from enclave.review.scan.checks import dp_receipts
from enclave.review.scan.context import Env, ScanContext
from enclave.review.scan.pipeline import _top_items
from tests.review_corpus import POLICY, of, scan

KEY = Ed25519PrivateKey.generate()
PEM = receipts.public_pem(KEY.public_key())
TABLE = "region,n\nnorth,120\nsouth,7\neast,3\n"


def _receipt(value=7, project="lab", key=KEY) -> str:
    body = {"spend": "a" * 24, "project": project, "dataset": "people", "dataset_sha256": "0" * 64,
            "query": {"statistic": "count", "dataset": "people", "column": None, "bounds": None,
                      "where": {"region": {"eq": "south"}}},
            "mechanism": "diffprivlib.tools.count_nonzero", "epsilon": 0.5, "delta": 0.0, "value": value,
            "time": "2026-11-30T02:00:00.000000Z", "audit_seq": 12}
    return json.dumps(receipts.sign(key, body))


def _scan(files, **context):
    return scan(files, **{"project": "lab", "dp_receipt_keys": [PEM], **context})


def _relaxed(files, **context):
    report = _scan(files, **context)
    from enclave.review.scan import ExportFile

    items = _top_items([ExportFile(n, c.encode()) for n, c in files.items()], POLICY)
    env = Env(POLICY, ScanContext(**{"project": "lab", "dp_receipt_keys": [PEM], **context}))
    return report, dp_receipts.relax(report.findings, items, env)


def test_a_valid_receipt_is_recognised_and_covers_its_cell_only():
    report, relaxed = _relaxed({"t.csv": TABLE, "count_south.json": _receipt(7)})
    [valid] = of(report, "dp_receipts", "info")[:1]
    assert valid.file == "count_south.json" and "a valid DP receipt" in valid.message and "epsilon 0.5" in valid.message
    covered = [f for f in of(report, "dp_receipts") if f.evidence.get("value") == 7]
    assert covered and covered[0].location == "cell (row 2, col n)"
    # The small-cell rule blocks the 3 (no receipt covers it) whether or not the pipeline has
    # relaxed the 7 already; after `relax`, only the 3 blocks.
    assert 3 in [f.evidence["value"] for f in of(report, "tables", "block")]
    blocked = [f for f in relaxed if f.check == "tables" and f.severity.value == "block"]
    assert [f.evidence["value"] for f in blocked] == [3]
    [seven] = [f for f in relaxed if f.check == "tables" and f.evidence.get("value") == 7]
    assert seven.severity.value == "info" and "relaxed: a DP result" in seven.message


def test_a_forged_or_altered_receipt_blocks_and_relaxes_nothing():
    forged = _receipt(7, key=Ed25519PrivateKey.generate())  # signed by someone else's key
    altered = json.loads(_receipt(3))
    altered["receipt"]["value"] = 7  # the scholar edits the value to cover another cell
    for receipt in (forged, json.dumps(altered)):
        report, relaxed = _relaxed({"t.csv": TABLE, "r.json": receipt})
        [bad] = of(report, "dp_receipts", "block")
        assert "does not verify" in bad.message
        assert sorted(f.evidence["value"] for f in relaxed if f.check == "tables" and f.severity.value == "block") \
            == [3, 7]


def test_a_receipt_of_another_project_blocks():
    report, relaxed = _relaxed({"t.csv": TABLE, "r.json": _receipt(7, project="other")})
    [bad] = of(report, "dp_receipts", "block")
    assert "project 'other'" in bad.message
    assert len([f for f in relaxed if f.check == "tables" and f.severity.value == "block"]) == 2


def test_without_the_services_key_no_receipt_is_trusted():
    report = _scan({"t.csv": TABLE, "r.json": _receipt(7)}, dp_receipt_keys=[])
    [bad] = of(report, "dp_receipts", "block")
    assert "no key of the privacy service" in bad.message


def test_ordinary_json_is_not_a_receipt():
    assert not of(_scan({"t.json": json.dumps({"value": 7, "receipt": {}})}), "dp_receipts")


def test_the_scan_context_reads_the_key_files(engine, tmp_path):
    from enclave.registry.db import session_scope
    from enclave.review.scan_context import build_scan_context
    from tests.helpers import approved_project

    key_file = tmp_path / "receipt-key.pem"
    receipts.load_or_create_key(key_file)  # the privacy service publishes receipt-key.pub beside it
    approved_project(engine, "lab", "sofia")
    with session_scope(engine) as s:
        context = build_scan_context(s, "lab", dp_receipt_key_files=[receipts.public_key_file(key_file),
                                                                     tmp_path / "missing.pub"])
    assert context.project == "lab" and len(context.dp_receipt_keys) == 1
    assert context.dp_receipt_keys[0].startswith(b"-----BEGIN PUBLIC KEY-----")
