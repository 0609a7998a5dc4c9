"""The reviewer sees whole files (issue 11, items 2 and 6): tables page by page, never a silent
prefix; what is inside a file (archive members, container parts) and the bytes no check reads, as
a hex and text dump; and every view of a file's contents is on the audit log."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from enclave.registry.db import session_scope
from enclave.registry.models import AuditEvent
from enclave.review.app import create_app
from enclave.review.scan.policy import DEFAULT_POLICY
from enclave.web.browser_session import Signer, load_or_create_secret
from tests.review_stack import AUTHOR, REVIEWERS, FakeIdentity, fake_scanner, seed, settings_for
from tests.test_review_container_formats import NOISE, png, zip_bytes
from tests.test_review_web import P, TOKENS, XSS, _drain, _login, _submit

RITA = REVIEWERS[0]


@pytest.fixture
def web(engine, tmp_path):
    """The review app with room for a long table, and a policy that leaves unexamined bytes of
    PNGs to a reviewer's eyes."""
    seed(engine)
    policy = tmp_path / "policy.toml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("human_review_types = []", 'human_review_types = ["png"]'))
    settings = settings_for(tmp_path, engine, max_file_bytes=1 << 20, max_request_bytes=4 << 20, max_files=5,
                            policy_file=str(policy))
    app = create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        client.settings, client.engine = settings, engine
        client.signer = Signer(load_or_create_secret(settings.cookie_secret_file))
        yield client


def views(engine, request_id: str) -> list[dict]:
    with session_scope(engine) as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "export.file_viewed",
                                                 AuditEvent.subject == f"export:{request_id}")
                        .order_by(AuditEvent.seq)).all()
        return [{"actor": e.actor, **json.loads(e.details)} for e in events]


def cells(page: str) -> list[str]:
    return re.findall(r"<td>(person-\d+)</td>", page)


def test_a_long_table_is_paged_never_cut_silently(web):
    table = "name,n\n" + "".join(f"person-{i},{i}\n" for i in range(1, 1235))
    request_id = _submit(web, {"t.csv": table.encode()}).json()["id"]
    _drain(web)
    _login(web, RITA)
    page = web.get(f"{P}/requests/{request_id}").text
    assert "rows 1\u2013500 of 1,234 (page 1 of 3)" in page
    assert cells(page) == [f"person-{i}" for i in range(1, 501)]
    assert f'href="{P}/requests/{request_id}/files/1?page=2"' in page
    second = web.get(f"{P}/requests/{request_id}/files/1", params={"page": 2}).text
    assert "rows 501\u20131,000 of 1,234 (page 2 of 3)" in second
    assert cells(second) == [f"person-{i}" for i in range(501, 1001)]
    last = web.get(f"{P}/requests/{request_id}/files/1", params={"page": 99}).text  # clamped to the last
    assert cells(last) == [f"person-{i}" for i in range(1001, 1235)] and "page 3 of 3" in last
    # Every row was shown on some page.
    shown = set(cells(page)) | set(cells(second)) | set(cells(last))
    assert shown == {f"person-{i}" for i in range(1, 1235)}


def test_bytes_no_check_reads_are_shown_as_a_dump(web):
    request_id = _submit(web, {"plot.png": png(trailing=NOISE)}).json()["id"]
    _drain(web)
    _login(web, RITA)
    page = web.get(f"{P}/requests/{request_id}").text
    assert "not shown" not in page and '<pre class="dump">' in page  # the PNG's own bytes, page 1
    view = web.get(f"{P}/requests/{request_id}/files/1").text
    assert "(data after IEND)" in view and "for human eyes" in view
    assert re.search(r"Unexamined</dt><dd[^>]*>0 bytes", view)
    assert f'<img class="content-image" src="{P}/requests/{request_id}/files/1/raw?item=0"' in view
    [index] = re.findall(r'<a href="\?item=(\d+)">\(data after IEND\)</a>', view)
    part = web.get(f"{P}/requests/{request_id}/files/1", params={"item": index}).text
    first_line = " ".join(f"{b:02x}" for b in NOISE[:16])
    assert f"00000000  {first_line}" in part and f"bytes 1\u2013{len(NOISE)} of {len(NOISE)}" in part
    image = web.get(f"{P}/requests/{request_id}/files/1/raw", params={"item": 0})
    assert image.headers["content-type"] == "image/png" and image.content == png(trailing=NOISE)
    assert "sandbox" in image.headers["Content-Security-Policy"]
    raw = web.get(f"{P}/requests/{request_id}/files/1/raw", params={"item": index})
    assert raw.content == NOISE and raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["content-disposition"].startswith("attachment;")
    assert web.get(f"{P}/requests/{request_id}/files/1", params={"item": 99}).status_code == 404
    assert web.get(f"{P}/requests/{request_id}/files/2").status_code == 404


def test_every_view_of_a_files_contents_is_audited_and_only_reviewers_see_them(web):
    table = "name,n\n" + "".join(f"person-{i},{i}\n" for i in range(1, 700))
    request_id = _submit(web, {"t.csv": table.encode(), "plot.png": png(trailing=NOISE)}).json()["id"]
    _drain(web)
    _login(web, AUTHOR)
    assert web.get(f"{P}/requests/{request_id}").status_code == 200
    assert web.get(f"{P}/requests/{request_id}/files/1").status_code == 403
    assert web.get(f"{P}/requests/{request_id}/files/1/raw").status_code == 403
    assert views(web.engine, request_id) == []  # the author saw names and hashes only
    _login(web, RITA)
    web.get(f"{P}/requests/{request_id}")
    # Files are numbered as the request page lists them: by name.
    web.get(f"{P}/requests/{request_id}/files/2", params={"page": 2})
    web.get(f"{P}/requests/{request_id}/files/1", params={"item": 1})
    web.get(f"{P}/requests/{request_id}/files/1/raw")
    with session_scope(web.engine) as s:
        from enclave.review import service
        files = {f.name: f.sha256 for f in service.current_files(s, service.get_request(s, request_id))}
    got = views(web.engine, request_id)
    assert [(e["actor"], e["file"], e["sha256"], e["page"], e["view"], e.get("item")) for e in got] == [
        (RITA, "plot.png", files["plot.png"], 1, "request page", None),
        (RITA, "t.csv", files["t.csv"], 1, "request page", None),
        (RITA, "t.csv", files["t.csv"], 2, "file page", None),
        (RITA, "plot.png", files["plot.png"], 1, "file page", "plot.png!(data after IEND)"),
        (RITA, "plot.png", files["plot.png"], "raw", "raw bytes", None),
    ]


def test_names_and_bytes_inside_a_file_are_escaped(web):
    archive = zip_bytes({f"{XSS}.txt": f"hello {XSS}", "ok.txt": "fine"}) + f"<img src=x onerror=alert(5)>{XSS}".encode()
    request_id = _submit(web, {"r.zip": archive}).json()["id"]
    _drain(web)
    _login(web, RITA)
    view = web.get(f"{P}/requests/{request_id}/files/1").text
    listed = re.findall(r'<a href="\?item=(\d+)">', view)
    assert len(listed) >= 4  # the file, two members, the names, the data after the end
    for index in listed:
        page = web.get(f"{P}/requests/{request_id}/files/1", params={"item": index}).text
        for dump in (0, 1):
            page += web.get(f"{P}/requests/{request_id}/files/1", params={"item": index, "dump": dump}).text
        assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in view
