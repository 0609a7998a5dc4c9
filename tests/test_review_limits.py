"""Issue 11, item 10 (the airlock's part): limits against denial of service and crash leftovers.

The check queue is bounded: past its cap a submission is answered 503 with Retry-After (429 past
one person's share) before a byte of it is read, and nothing of it is stored or recorded. Blobs
that no export references (a crash between storing an upload and recording its export, or an
upload refused after its files were stored) are collected at the service's start-up and by
`enclave review gc`, after a grace period that spares uploads in flight, and the collection is on
the audit log.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import select

from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent
from enclave.review import service
from enclave.review.app import create_app
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.scan.findings import verdict
from enclave.review.worker import ScanOutcome

from tests.review_stack import AUTHOR, LAB, OTHER, OTHER_SCHOLAR, FakeIdentity, fake_scanner, seed, settings_for

P = "/services/review"
TOKENS = {f"tok-{name}": name for name in (AUTHOR, OTHER_SCHOLAR)}
HOUR = 3600


def _auth(user: str) -> dict:
    return {"Authorization": f"token tok-{user}"}


def _submit(client, files: dict[str, bytes], user=AUTHOR, justification="For the paper.", project=None):
    headers = {**_auth(user), **({"X-Enclave-Project": project} if project else {})}
    return client.post(f"{P}/api/exports", files=[("files", (n, d, "text/plain")) for n, d in files.items()],
                       data={"justification": justification}, headers=headers)


def _count(engine, table: str) -> int:
    with session_scope(engine) as s:
        return s.exec(text(f"SELECT count(*) FROM {table}")).one()[0]


def _blobs(settings) -> set[str]:
    return {sha for sha, _ in Quarantine(settings.quarantine_dir).blob_names()}


class GatedScanner:
    """A scan that waits until the test opens the gate: the checks are slow, the queue fills."""

    def __init__(self):
        self.gate = threading.Event()

    def __call__(self, *_args):
        assert self.gate.wait(60), "the test never opened the gate"
        return ScanOutcome(findings=[], verdict=verdict([]).value, policy_version="test-1", policy_sha256="0" * 64)


@pytest.fixture
def gated(engine, tmp_path):
    seed(engine)
    settings = settings_for(tmp_path, engine, max_pending_checks=3, max_pending_checks_per_person=2)
    scanner = GatedScanner()
    app = create_app(settings, scanner=scanner, identity=FakeIdentity(TOKENS))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.settings, client.engine, client.scanner = settings, engine, scanner
        try:
            yield client
        finally:
            scanner.gate.set()


def test_a_full_check_queue_refuses_at_once_with_503_and_stores_nothing(gated):
    """Attack: scholars submit faster than the checks run (each export may take minutes to scan);
    unbounded, the queue grows until the service runs out of memory or the checks fall days
    behind. Past the cap the answer is 503 with Retry-After and a message that says so; the
    refused submission leaves no request, no file row, no audit event and no blob."""
    first = _submit(gated, {"a.txt": b"one"})
    second = _submit(gated, {"b.txt": b"two"})
    third = _submit(gated, {"c.txt": b"three"}, user=OTHER_SCHOLAR, project=OTHER)
    assert [r.status_code for r in (first, second, third)] == [202, 202, 202], third.text
    assert gated.app.state.review.worker.pending() == 3
    counts = (_count(gated.engine, "export_request"), _count(gated.engine, "export_file"),
              _count(gated.engine, "audit_event"))
    blobs = _blobs(gated.settings)

    refused = _submit(gated, {"d.txt": b"four, never stored"}, user=OTHER_SCHOLAR, project=OTHER)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "checks_busy" and "nothing was stored" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert (_count(gated.engine, "export_request"), _count(gated.engine, "export_file"),
            _count(gated.engine, "audit_event")) == counts
    assert _blobs(gated.settings) == blobs
    assert list((gated.settings.quarantine_dir / "tmp").iterdir()) == []

    # Once the checks catch up, submissions are taken again.
    gated.scanner.gate.set()
    gated.app.state.review.worker.drain()
    again = _submit(gated, {"d.txt": b"four"}, user=OTHER_SCHOLAR, project=OTHER)
    assert again.status_code == 202, again.text


def test_one_person_cannot_take_the_whole_queue(gated):
    """Attack: one scholar fills the queue so that nobody else's export is checked. Past their
    share they get 429 with Retry-After; others still get through."""
    assert [_submit(gated, {f"{i}.txt": bytes([65 + i])}).status_code for i in range(2)] == [202, 202]
    before = _count(gated.engine, "export_request")
    mine = _submit(gated, {"x.txt": b"more"})
    assert mine.status_code == 429 and mine.json()["error"] == "rate_limited", mine.text
    assert "nothing was stored" in mine.json()["message"] and int(mine.headers["Retry-After"]) > 0
    assert _count(gated.engine, "export_request") == before
    other = _submit(gated, {"y.txt": b"theirs"}, user=OTHER_SCHOLAR, project=OTHER)
    assert other.status_code == 202, other.text


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _collect_events(engine) -> list[dict]:
    with session_scope(engine) as s:
        return [json.loads(e.details) for e in s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.collect")
                                                      .order_by(AuditEvent.seq)).all()]


def test_orphans_of_a_refused_upload_are_collected_and_the_collection_is_audited(engine, tmp_path, monkeypatch, capsys):
    """A submission refused after its files reached the quarantine (here: no justification; a
    crash between storing and recording leaves the same) leaves blobs no export references.
    `enclave review gc` removes those older than the grace period, keeps every referenced blob
    and every young one (an upload in flight), and records what it removed."""
    from enclave.cli import run

    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    with TestClient(create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS))) as client:
        kept = _submit(client, {"kept.txt": b"recorded"}).json()
        refused = _submit(client, {"orphan.txt": b"refused after storing"}, justification="")
        assert refused.status_code == 400
        client.app.state.review.worker.drain()
    recorded = kept["files"][0]["sha256"]
    orphan, _ = quarantine.put_bytes(b"refused after storing")  # the same bytes: already there
    young, _ = quarantine.put_bytes(b"an upload still streaming")
    assert {recorded, orphan, young} <= _blobs(settings)
    for sha in (recorded, orphan):
        _age(quarantine.path_of(sha), 2 * HOUR)
    stale_tmp = quarantine.tmp / "upload-deadbeefdeadbeef"
    stale_tmp.write_bytes(b"half an upload")
    _age(stale_tmp, 2 * HOUR)

    for name in [n for n in os.environ if n.startswith(("ENCLAVE_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DB_URL", settings.db_url)
    monkeypatch.setenv("ENCLAVE_HOME", str(settings.home))
    capsys.readouterr()
    assert run(["review", "gc", "--dry-run", "--as", "op"]) == 0
    assert f"would remove {orphan}" in capsys.readouterr().out and orphan in _blobs(settings)
    assert run(["review", "gc", "--as", "sofia"]) == 2  # operators only
    assert orphan in _blobs(settings)

    assert run(["review", "gc", "--as", "op", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [o["sha256"] for o in result["removed"]] == [orphan] and result["tmp_removed"] == 1
    assert _blobs(settings) == {recorded, young} and not stale_tmp.exists()
    assert quarantine.read(recorded) == b"recorded"
    (event,) = _collect_events(engine)
    assert event["sha256"] == [orphan] and event["removed"] == 1 and event["grace_s"] == HOUR
    assert run(["review", "gc", "--as", "op"]) == 0  # nothing left to collect: no event
    assert len(_collect_events(engine)) == 1


def test_the_service_collects_orphans_when_it_starts(engine, tmp_path):
    """A crash between storing an upload and recording its export: the next start collects it."""
    seed(engine)
    settings = settings_for(tmp_path, engine, orphan_grace_s=60)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    orphan, _ = quarantine.put_bytes(b"stored, then the service died")
    _age(quarantine.path_of(orphan), 120)
    with TestClient(create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS))):
        assert orphan not in _blobs(settings)
    assert _collect_events(engine)[0]["sha256"] == [orphan]


def test_an_upload_that_reuses_an_orphans_bytes_is_not_robbed_of_them(engine, tmp_path):
    """Race: an orphan past its grace period; a new upload carries the same bytes, so the
    quarantine keeps the existing blob (content addressing) and the export is about to reference
    it. The upload touches the blob, so the collector spares it, and the export's bytes are there
    when the reviewer opens it."""
    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    sha, size = quarantine.put_bytes(b"same bytes twice")
    _age(quarantine.path_of(sha), 2 * HOUR)
    again = StagedFile("a.txt", *quarantine.put_bytes(b"same bytes twice"))  # stored, not yet recorded
    assert service.collect_orphans(engine, quarantine, HOUR).removed == []
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, [again], "why").id
    with session_scope(engine) as s:
        (f,) = service.current_files(s, service.get_request(s, request_id))
    assert quarantine.read(f.sha256) == b"same bytes twice"
    # Referenced now, it is never collected, however old.
    _age(quarantine.path_of(sha), 30 * 24 * HOUR)
    assert service.collect_orphans(engine, quarantine, 0).removed == []
    assert quarantine.read(sha) == b"same bytes twice"
