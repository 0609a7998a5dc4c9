"""The review service over HTTP, in process: the submission API (caps, auth, atomicity), who sees
what, the reviewer UI's escaping, CSRF and CSP, highlighting and diffs. Identity comes from a
stand-in for the hub here; tests/test_review_browser.py uses a real hub and a real browser."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from enclave.registry.db import session_scope
from enclave.review import service
from enclave.review.app import create_app
from enclave.review.release import key_id, load_or_create_key, verify
from enclave.web.browser_session import Signer, load_or_create_secret

from tests.review_stack import (
    AUTHOR, LAB, MEMBER_REVIEWER, OTHER_SCHOLAR, REVIEWERS, FakeIdentity, block, fake_scanner, seed, settings_for,
)

P = "/services/review"
SESSION_COOKIE = "enclave-review-session"  # the name browsers already hold
RITA, RAVI = REVIEWERS
XSS = "<script>alert(1)</script>"
# File names cannot hold "/", so the name's payload closes an attribute and opens an element instead.
# (httpx, like browsers, percent-encodes '"' in multipart file names, so none is used.)
NAME_XSS = "'><svg onload=alert(3)>.txt"
TOKENS = {f"tok-{name}": name for name in (AUTHOR, OTHER_SCHOLAR, RITA, RAVI, MEMBER_REVIEWER, "stranger")}


@pytest.fixture
def web(engine, tmp_path):
    seed(engine)
    settings = settings_for(tmp_path, engine, max_file_bytes=4096, max_request_bytes=8192, max_files=3)
    findings = {NAME_XSS: [block(NAME_XSS, message=f"SSN {XSS}")]}
    app = create_app(settings, scanner=fake_scanner(findings), identity=FakeIdentity(TOKENS))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        client.settings, client.engine = settings, engine
        client.signer = Signer(load_or_create_secret(settings.cookie_secret_file))
        yield client


def _auth(user: str) -> dict:
    return {"Authorization": f"token tok-{user}"}


def _submit(web, files: dict[str, bytes], user=AUTHOR, justification="For the paper.", path=f"{P}/api/exports",
            **headers):
    multipart = [("files", (name, data, "application/octet-stream")) for name, data in files.items()]
    return web.post(path, files=multipart, data={"justification": justification, "context": "ctx"},
                    headers={**_auth(user), **headers})


def _drain(web):
    web.app.state.review.worker.drain()


def _login(web, user: str) -> str:
    """Put a session cookie in the client as the OAuth callback would; returns the CSRF token."""
    web.cookies.set(SESSION_COOKIE, web.signer.sign(SESSION_COOKIE, f"tok-{user}"), path=f"{P}/")
    return web.signer.csrf_token(f"tok-{user}")


def _count(engine, table: str) -> int:
    with session_scope(engine) as s:
        return s.exec(text(f"SELECT count(*) FROM {table}")).one()[0]


def test_submission_answers_at_once_and_the_checks_follow(web):
    reply = _submit(web, {"table.csv": b"group,count\na,12\n", "notes.md": b"# Notes\n"})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["state"] == "submitted" and re.fullmatch(r"exp-[a-z2-7]{12}", body["id"])
    assert [f["name"] for f in body["files"]] == ["table.csv", "notes.md"]
    _drain(web)
    status = web.get(f"{P}/api/exports/{body['id']}", headers=_auth(AUTHOR)).json()
    assert (status["state"], status["verdict"], status["approvals_needed"]) == ("awaiting_review", "pass", 1)
    # Notebooks may call the service directly, without the proxy's prefix.
    direct = web.get("/api/exports", headers=_auth(AUTHOR))
    assert direct.status_code == 200 and [e["id"] for e in direct.json()["exports"]] == [body["id"]]
    # The quarantine holds the bytes read-only under their hash.
    blob = web.settings.quarantine_dir / "sha256" / body["files"][1]["sha256"][:2] / body["files"][1]["sha256"]
    assert blob.read_bytes() == b"# Notes\n" and blob.stat().st_mode & 0o777 == 0o444


def test_who_may_submit(web):
    assert _submit(web, {"a.txt": b"a"}, user="nobody").status_code == 401
    no_header = web.post(f"{P}/api/exports", files=[("files", ("a.txt", b"a"))], data={"justification": "x"})
    assert no_header.status_code == 401 and "Authorization" in no_header.json()["message"]
    stranger = _submit(web, {"a.txt": b"a"}, user="stranger")
    assert (stranger.status_code, stranger.json()["error"]) == (403, "unknown_user")
    reviewer = _submit(web, {"a.txt": b"a"}, user=RITA)
    assert (reviewer.status_code, reviewer.json()["error"]) == (403, "not_scholar")
    wrong_project = _submit(web, {"a.txt": b"a"}, user=OTHER_SCHOLAR, **{"X-Enclave-Project": LAB})
    assert (wrong_project.status_code, wrong_project.json()["error"]) == (403, "not_member")
    assert _count(web.engine, "export_request") == 0


def test_size_caps_and_bad_uploads_are_refused_and_leave_nothing(web):
    too_big = _submit(web, {"big.bin": b"x" * 5000})
    assert too_big.status_code == 413 and "4096" in too_big.json()["message"]
    too_much = _submit(web, {"a.txt": b"x" * 4000, "b.txt": b"y" * 4000, "c.txt": b"z" * 4000})
    assert too_much.status_code == 413 and "8192" in too_much.json()["message"]
    huge = web.post(f"{P}/api/exports", content=b"x" * 10, headers={
        **_auth(AUTHOR), "Content-Type": "multipart/form-data; boundary=zz", "Content-Length": str(2**30)})
    assert huge.status_code == 413
    too_many = _submit(web, {f"f{i}.txt": b"x" for i in range(4)})
    assert too_many.status_code == 400 and "Maximum number of files" in too_many.json()["message"]
    assert _submit(web, {"../../etc/passwd": b"x"}).json()["message"].startswith("bad file name")
    assert "justification" in _submit(web, {"a.txt": b"a"}, justification="").json()["message"]
    not_multipart = web.post(f"{P}/api/exports", json={"files": []}, headers=_auth(AUTHOR))
    assert (not_multipart.status_code, not_multipart.json()["error"]) == (415, "unsupported_media_type")
    stray = web.post(f"{P}/api/exports", files=[("weights", ("w.bin", b"x"))], data={"justification": "x"},
                     headers=_auth(AUTHOR))
    assert stray.status_code == 400 and "unexpected file field" in stray.json()["message"]
    assert _count(web.engine, "export_request") == 0 and _count(web.engine, "export_file") == 0
    assert list((web.settings.quarantine_dir / "tmp").iterdir()) == []


def test_scholars_see_only_their_own_requests_and_cannot_decide(web):
    request_id = _submit(web, {"a.txt": b"hello"}).json()["id"]
    _drain(web)
    for user in (OTHER_SCHOLAR, MEMBER_REVIEWER):
        assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(user)).status_code == 404
    assert web.get(f"{P}/api/exports", headers=_auth(OTHER_SCHOLAR)).json() == {"exports": []}
    # No token carries a decision (tests/test_review_insider.py); from the UI, with a valid CSRF
    # token, the author, another scholar and a reviewer in the project are refused.
    for user in (AUTHOR, OTHER_SCHOLAR, MEMBER_REVIEWER):
        api = web.post(f"{P}/api/exports/{request_id}/decision", json={"decision": "approve"}, headers=_auth(user))
        assert api.status_code == 403 and api.json()["error"] == "decision_needs_login", api.text
    seen = [f["sha256"] for f in web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["files"]]
    _login(web, OTHER_SCHOLAR)
    other = web.post(f"{P}/requests/{request_id}/decision",
                     data={"decision": "approve", "seen": seen, "csrf": web.signer.csrf_token(f"tok-{OTHER_SCHOLAR}")})
    assert other.status_code == 404
    _login(web, MEMBER_REVIEWER)
    member = web.post(f"{P}/requests/{request_id}/decision",
                      data={"decision": "approve", "seen": seen, "csrf": web.signer.csrf_token(f"tok-{MEMBER_REVIEWER}")})
    assert member.status_code == 403 and "member of this export&#39;s project" in member.text, member.text
    csrf = _login(web, AUTHOR)
    page = web.get(f"{P}/requests/{request_id}")
    assert page.status_code == 200 and "Your decision" not in page.text and "hello" not in page.text
    forged = web.post(f"{P}/requests/{request_id}/decision", data={"decision": "approve", "csrf": csrf})
    assert forged.status_code == 403 and "never reviews their own" in forged.text
    _login(web, OTHER_SCHOLAR)
    assert web.get(f"{P}/requests/{request_id}").status_code == 404
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "awaiting_review"


def test_approval_releases_with_a_manifest_signed_by_the_published_key(web):
    request_id = _submit(web, {"table.csv": b"group,count\na,12\n"}).json()["id"]
    _drain(web)
    web.post(f"{P}/api/exports/{request_id}/comments", json={"body": "private note", "visibility": "private"},
             headers=_auth(RITA))
    csrf = _login(web, RITA)
    reply = web.post(f"{P}/requests/{request_id}/decision",
                     data={"decision": "approve", "reason": "fine", "seen": _seen(web, request_id), "csrf": csrf})
    assert reply.status_code == 303, reply.text
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "released"
    published = web.get(f"{P}/api/release-key")
    key_file = web.settings.home / "published.pub"
    key_file.write_bytes(published.content)
    result = verify(web.settings.release_dir / LAB / request_id / "manifest.json", key_file)
    assert result.ok, result.problems
    assert published.headers["X-Key-Id"] == result.key_id == key_id(load_or_create_key(web.settings.signing_key_file).public_key())
    assert result.manifest["approved_by"] == [RITA] and result.manifest["policy"]["version"] == "test-1"
    status = web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()
    assert status["release"]["key_id"] == result.key_id
    assert [c["body"] for c in status["comments"]] == []  # the private note stays with reviewers


def test_everything_from_the_export_is_escaped_and_no_script_can_run(web):
    reply = _submit(web, {NAME_XSS: f"Dear {XSS} 123-45-6789".encode(), "t.csv": f"a,b\n{XSS},3\n".encode()},
                    justification=f"Because {XSS}\"'><img src=x onerror=alert(2)>")
    request_id = reply.json()["id"]
    _drain(web)
    web.post(f"{P}/api/exports/{request_id}/comments", json={"body": f"see {XSS}"}, headers=_auth(AUTHOR))
    for user in (RITA, AUTHOR):
        _login(web, user)
        for url in (f"{P}/requests/{request_id}", f"{P}/"):
            page = web.get(url)
            assert page.status_code == 200
            for raw in ("<script", "<img", "<svg", "onerror=alert(2)>", "onload=alert(3)>"):
                assert raw not in page.text
            assert "&lt;svg onload=alert(3)&gt;.txt" in page.text or url == f"{P}/"
            if url != f"{P}/":
                assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            csp = page.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
            assert page.headers["X-Content-Type-Options"] == "nosniff"
    _login(web, RITA)
    page = web.get(f"{P}/requests/{request_id}").text
    # The finding's span is highlighted in place (evidence chars 0-11 of the file).
    assert '<mark class="sev-block"' in page and ">Dear &lt;scrip</mark>" in page


def test_forms_need_the_sessions_csrf_token(web):
    request_id = _submit(web, {"a.txt": b"fine"}).json()["id"]
    _drain(web)
    csrf = _login(web, RITA)
    for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": web.signer.csrf_token("tok-ravi")}):
        refused = web.post(f"{P}/requests/{request_id}/decision", data={"decision": "approve", **bad})
        assert refused.status_code == 403 and "CSRF" in refused.text
        assert web.post(f"{P}/requests/{request_id}/comments", data={"body": "x", **bad}).status_code == 403
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "awaiting_review"
    ok = web.post(f"{P}/requests/{request_id}/decision",
                  data={"decision": "approve", "csrf": csrf, "seen": _seen(web, request_id)})
    assert ok.status_code == 303 and ok.headers["location"].startswith(f"{P}/requests/{request_id}?done=")
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "released"


def test_pages_without_a_session_go_to_the_hub_login(web):
    assert web.get(f"{P}/").headers["location"] == f"{P}/login?next=/services/review/"
    web.cookies.set(SESSION_COOKIE, "forged.0.abc", path=f"{P}/")
    assert web.get(f"{P}/requests/exp-aaaaaaaaaaaa").status_code == 303
    assert web.post(f"{P}/requests/exp-aaaaaaaaaaaa/decision", data={"decision": "approve"}).status_code == 401
    # Old signed sessions expire.
    web.cookies.set(SESSION_COOKIE, web.signer.sign(SESSION_COOKIE, f"tok-{RITA}", now=1000), path=f"{P}/")
    assert web.get(f"{P}/").status_code == 303


def test_logout_needs_the_csrf_token_and_ends_the_session(web):
    csrf = _login(web, RITA)
    assert web.post(f"{P}/logout", data={"csrf": "0" * 64}).status_code == 403
    out = web.post(f"{P}/logout", data={"csrf": csrf})
    assert out.status_code == 200 and "Logged out" in out.text
    cookie = out.headers["set-cookie"]
    assert cookie.startswith(f'{SESSION_COOKIE}=""') and "Max-Age=0" in cookie and f"Path={P}/" in cookie


def test_reviewer_page_shows_table_cells_and_the_diff_after_changes(web):
    csv_v1 = b"region,count\nnorth,3\nsouth,40\n"
    request_id = _submit(web, {"t.csv": csv_v1, "same.txt": b"unchanged"}).json()["id"]
    _drain(web)
    with session_scope(web.engine) as s:
        # A small-cell finding as the tables check reports it: data row 1 (north), column "count".
        from enclave.registry.models import ExportFinding
        s.add(ExportFinding(request_id=request_id, version=1, check="tables", severity="block", file="t.csv",
                            location="cell (row 1, col count)", message="count 3 < 10",
                            evidence='{"table": "", "row": 1, "col": "count", "value": 3}'))
    csrf = _login(web, RITA)
    page = web.get(f"{P}/requests/{request_id}").text
    assert '<td class="cell-block" title="flagged: block">3</td>' in page and "<td>40</td>" in page
    assert _decision_form(page)["csrf"] == csrf  # the page's own form, with the hashes it showed
    web.post(f"{P}/requests/{request_id}/decision", data={**_decision_form(page), "decision": "request_changes",
                                                         "reason": "suppress north"})
    resubmitted = web.post(f"{P}/api/exports/{request_id}/resubmit", headers=_auth(AUTHOR), data={"note": "done"},
                           files=[("files", ("t.csv", b"region,count\nnorth,<10\nsouth,40\n")),
                                  ("files", ("same.txt", b"unchanged"))])
    assert resubmitted.status_code == 202 and resubmitted.json()["version"] == 2, resubmitted.text
    _drain(web)
    page = web.get(f"{P}/requests/{request_id}").text
    assert "Changes since version 1" in page
    assert '<span class="d-del">-north,3</span>' in page and '<span class="d-add">+north,&lt;10</span>' in page
    assert 'same.txt <span class="diff-status diff-unchanged">' in page
    # Only the author may resubmit, and only when changes were asked for.
    again = web.post(f"{P}/api/exports/{request_id}/resubmit", headers=_auth(AUTHOR), data={"note": "x"},
                     files=[("files", ("t.csv", b"x"))])
    assert again.status_code == 409


def test_withdraw_comment_and_bad_requests(web):
    request_id = _submit(web, {"a.txt": b"a"}).json()["id"]
    assert web.post(f"{P}/api/exports/{request_id}/withdraw", headers=_auth(RITA)).status_code == 403
    assert web.post(f"{P}/api/exports/{request_id}/withdraw", headers=_auth(AUTHOR)).json()["state"] == "withdrawn"
    again = web.post(f"{P}/api/exports/{request_id}/withdraw", headers=_auth(AUTHOR))
    assert again.status_code == 409 and "final" in again.json()["message"]
    assert web.post(f"{P}/api/exports/{request_id}/comments", json={"body": ""}, headers=_auth(AUTHOR)).status_code == 422
    assert web.post(f"{P}/api/exports/{request_id}/comments", content=b"{", headers=_auth(AUTHOR)).status_code == 422
    for bad_id in ("nope", "exp-AAAAAAAAAAAA", "../../etc"):
        assert web.get(f"{P}/api/exports/{bad_id}", headers=_auth(AUTHOR)).status_code == 404
    assert web.get(f"{P}/api/nothing-here").json()["error"] == "not_found"
    # No route serves quarantined bytes to scholars: files leave only through release.
    for guess in (f"{P}/api/exports/{request_id}/files/a.txt", f"{P}/quarantine/", f"{P}/requests/{request_id}/files/1"):
        assert web.get(guess, headers=_auth(AUTHOR)).status_code in (303, 404)


def test_an_upload_cut_off_midway_leaves_no_request_and_no_bytes(engine, tmp_path):
    import socket
    import time

    from tests.review_stack import serve_review

    seed(engine)
    settings = settings_for(tmp_path, engine)
    with serve_review(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS)) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        body = (b"--zz\r\nContent-Disposition: form-data; name=\"justification\"\r\n\r\nwhy\r\n"
                b"--zz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\n\r\n" + b"x" * 50_000)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/exports HTTP/1.1\r\nHost: x\r\nAuthorization: token tok-sofia\r\n"
                         b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 1000000\r\n\r\n" + body)
            time.sleep(0.3)  # the service is now reading the body ... and the notebook dies
        time.sleep(0.5)
        assert _count(engine, "export_request") == 0 and _count(engine, "export_file") == 0
        assert list((settings.quarantine_dir / "tmp").iterdir()) == []
        assert list((settings.quarantine_dir / "sha256").iterdir()) == []


def test_a_restart_finishes_what_a_stopped_service_left(engine, tmp_path):
    from enclave.review.quarantine import Quarantine, StagedFile

    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    with session_scope(engine) as s:
        # Submitted but never checked (the service stopped right after answering) ...
        unchecked = service.submit(s, AUTHOR, LAB, [StagedFile("a.txt", *quarantine.put_bytes(b"a"))], "why").id
        # ... and one stuck half-way through its checks.
        stuck = service.submit(s, AUTHOR, LAB, [StagedFile("b.txt", *quarantine.put_bytes(b"b"))], "why").id
        service.start_check(s, stuck)
    app = create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS))
    with TestClient(app) as client:
        app.state.review.worker.drain()
        for request_id in (unchecked, stuck):
            assert client.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "awaiting_review"
        # Approved, then the service stops before releasing: the next start releases it.
        with session_scope(engine) as s:
            shown = [f.sha256 for f in service.current_files(s, service.get_request(s, unchecked))]
            service.decide(s, RITA, unchecked, "approve", seen=shown,
                           login=service.ReviewerLogin(RITA, service.AuthMethod.hub_session))
    with TestClient(create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(TOKENS))) as client:
        assert client.get(f"{P}/api/exports/{unchecked}", headers=_auth(AUTHOR)).json()["state"] == "released"
    assert verify(settings.release_dir / LAB / unchecked).ok


def test_highlighting_follows_the_checks_offsets():
    import json as _json

    from enclave.registry.models import ExportFinding
    from enclave.review.render import highlight, preview, text_spans

    def finding(i, severity, **evidence):
        return ExportFinding(id=i, request_id="exp-x", version=1, check="c", severity=severity, file="f.txt",
                             location="", message="", evidence=_json.dumps(evidence))

    overlapping = [finding(1, "warn", segment="", start=0, end=6), finding(2, "block", segment="", start=3, end=9),
                   finding(3, "block", segment="cell 2 output 1", start=0, end=4), finding(4, "info", row=0, col=1)]
    assert text_spans(overlapping, 20) == [(0, 3, "warn", [1]), (3, 6, "block", [1, 2]), (6, 9, "block", [2])]
    assert str(highlight("<b>&amp;xyz", overlapping[1:2])) == (
        '&lt;b&gt;<mark class="sev-block" id="span-2-3" title="finding 2">&amp;amp;x</mark>yz')
    # A byte-order mark is not a character of the text the checks saw.
    bom = preview("f.txt", b"\xef\xbb\xbfSSN 123", [finding(5, "block", segment="", start=4, end=7)])
    assert str(bom.html).endswith('>123</mark>')
    utf16 = preview("f.txt", "hi there".encode("utf-16"), [finding(6, "warn", segment="", start=3, end=8)])
    assert utf16.kind == "text" and str(utf16.html).endswith(">there</mark>")
    # Binary content is shown as a hex and text dump, never "not shown".
    binary = preview("f.txt", b"\x00\x01weights", [])
    assert binary.kind == "dump" and binary.dump == [("00000000", "00 01 77 65 69 67 68 74 73", "..weights")]
    # A long text is paged; a span that crosses a page's edge is marked on both pages.
    from enclave.review.render import MAX_PREVIEW_CHARS
    long = ("x" * (MAX_PREVIEW_CHARS - 3) + "SECRET" + "y" * 10).encode()
    crossing = [finding(7, "block", segment="", start=MAX_PREVIEW_CHARS - 3, end=MAX_PREVIEW_CHARS + 3)]
    first, second = preview("f.txt", long, crossing, 1), preview("f.txt", long, crossing, 2)
    assert str(first.html).endswith(">SEC</mark>") and str(second.html).startswith('<mark class="sev-block"')
    assert str(second.html).endswith(">RET</mark>" + "y" * 10) and second.paging.note.endswith("(page 2 of 2)")


@pytest.mark.slow
def test_the_real_checks_run_on_submissions(engine, tmp_path):
    """The scan pipeline itself (output_review/policy.toml): a small cell blocks and needs two
    reviewers, a clean table passes with one, and the policy's version and hash are recorded."""
    import hashlib
    from pathlib import Path

    seed(engine)
    settings = settings_for(tmp_path, engine)
    policy_file = Path(__file__).resolve().parents[1] / "output_review" / "policy.toml"
    with TestClient(create_app(settings, identity=FakeIdentity(TOKENS))) as client:
        small = _submit(client, {"table.csv": b"region,patients\nnorth,3\nsouth,85\n"}).json()["id"]
        clean = _submit(client, {"table.csv": b"region,patients\nnorth,120\nsouth,85\n"}).json()["id"]
        client.app.state.review.worker.drain(timeout=120)
        blocked = client.get(f"{P}/api/exports/{small}", headers=_auth(RITA)).json()
        passed = client.get(f"{P}/api/exports/{clean}", headers=_auth(RITA)).json()
    assert (blocked["state"], blocked["verdict"], blocked["approvals_needed"]) == ("awaiting_review", "block", 2)
    cell = next(f for f in blocked["findings"] if f["check"] == "tables")
    assert cell["severity"] == "block" and cell["evidence"]["row"] == 1 and cell["evidence"]["col"] == "patients"
    assert (passed["verdict"], passed["approvals_needed"]) == ("pass", 1)
    with session_scope(engine) as s:
        request = service.get_request(s, small)
        assert request.policy_sha256 == hashlib.sha256(policy_file.read_bytes()).hexdigest()
        assert request.policy_version


# ----- issue 11: approvals bind to what was seen; comments are not a channel out -----------------

def _seen(web, request_id: str, user: str = RITA) -> list[str]:
    """The file hashes a reviewer is shown for the current version (the API's view)."""
    return [f["sha256"] for f in web.get(f"{P}/api/exports/{request_id}", headers=_auth(user)).json()["files"]]


def _decision_form(page: str) -> dict:
    """What the reviewer's page would post with its decision form: every hidden field."""
    form = page[page.index('class="box decide"'):]
    form = form[:form.index("</form>")]
    fields: dict = {}
    for name, value in re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', form):
        fields.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 and k != "seen" else v for k, v in fields.items()}


def test_a_stale_page_cannot_approve_a_resubmitted_version(web):
    """Attack: a reviewer opens version 1; the scholar gets changes requested by another reviewer
    and resubmits different bytes; the first reviewer's old page (or an API call with what it
    showed) approves version 2, which they never opened. Refused, and nothing is recorded."""
    request_id = _submit(web, {"t.csv": b"region,count\nnorth,120\n", "same.txt": b"unchanged"}).json()["id"]
    _drain(web)
    _login(web, RITA)
    old_page = web.get(f"{P}/requests/{request_id}").text
    old_form = _decision_form(old_page)
    old_seen = _seen(web, request_id)
    assert sorted(old_form["seen"]) == sorted(old_seen) and old_form["version"] == "1"
    _login(web, RAVI)
    changes = web.post(f"{P}/requests/{request_id}/decision",
                       data={**_decision_form(web.get(f"{P}/requests/{request_id}").text),
                             "decision": "request_changes", "reason": "add a row"})
    assert changes.status_code == 303, changes.text
    _login(web, RITA)
    web.post(f"{P}/api/exports/{request_id}/resubmit", headers=_auth(AUTHOR), data={"note": "added"},
             files=[("files", ("t.csv", b"region,count\nnorth,120\nsouth,2\n")), ("files", ("same.txt", b"unchanged"))])
    _drain(web)
    reviews, events = _count(web.engine, "export_review"), _count(web.engine, "audit_event")

    stale = web.post(f"{P}/requests/{request_id}/decision", data={**old_form, "decision": "approve"})
    assert stale.status_code == 409, stale.text
    assert "the files changed since you opened this request (version 1 -&gt; 2)" in stale.text
    assert "reload and review the new files" in stale.text
    for fields in ({"seen": old_seen, "decision": "approve"}, {"seen": old_seen, "decision": "reject", "reason": "no"}):
        again = web.post(f"{P}/requests/{request_id}/decision", data={"csrf": old_form["csrf"], **fields})
        assert again.status_code == 409 and "reload and review the new files" in again.text, again.text
    # Saying nothing about what was seen is no way round it; nor is an API call.
    missing = web.post(f"{P}/requests/{request_id}/decision", data={"csrf": old_form["csrf"], "decision": "approve"})
    assert missing.status_code == 400 and "sha256" in missing.text, missing.text
    api = web.post(f"{P}/api/exports/{request_id}/decision", json={"decision": "approve", "seen": _seen(web, request_id)},
                   headers=_auth(RITA))
    assert api.status_code == 403 and api.json()["error"] == "decision_needs_login", api.text
    assert (_count(web.engine, "export_review"), _count(web.engine, "audit_event")) == (reviews, events)
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "awaiting_review"

    # Reloaded, the page carries version 2's hashes, and its form works.
    new_form = _decision_form(web.get(f"{P}/requests/{request_id}").text)
    assert new_form["version"] == "2" and sorted(new_form["seen"]) == sorted(_seen(web, request_id))
    assert sorted(new_form["seen"]) != sorted(old_seen)
    ok = web.post(f"{P}/requests/{request_id}/decision", data={**new_form, "decision": "approve"})
    assert ok.status_code == 303, ok.text
    assert web.get(f"{P}/api/exports/{request_id}", headers=_auth(AUTHOR)).json()["state"] == "released"


def test_comments_are_capped_and_closed_requests_take_none(web):
    """Attack: comments as a channel out of the enclave. The author writes from the notebook and
    reads back from a laptop; so many comments per person, so many characters each, none once the
    request is closed."""
    limits = web.get(f"{P}/api/limits").json()
    assert (limits["max_comments"], limits["max_comment_chars"]) == (20, 2000)
    request_id = _submit(web, {"a.txt": b"a"}).json()["id"]
    _drain(web)
    url = f"{P}/api/exports/{request_id}/comments"
    long = web.post(url, json={"body": "x" * 2001}, headers=_auth(AUTHOR))
    assert long.status_code == 400 and "2000 characters" in long.json()["message"], long.text
    assert web.post(url, json={"body": "x" * 2000}, headers=_auth(AUTHOR)).status_code == 201
    for i in range(19):
        assert web.post(url, json={"body": f"comment {i}"}, headers=_auth(AUTHOR)).status_code == 201
    over = web.post(url, json={"body": "one more"}, headers=_auth(AUTHOR))
    assert over.status_code == 409 and "20 comments" in over.json()["message"], over.text
    csrf = _login(web, AUTHOR)
    assert web.post(f"{P}/requests/{request_id}/comments", data={"body": "via the page", "csrf": csrf}).status_code == 409
    # The cap is per person: a reviewer still has their own.
    assert web.post(url, json={"body": "noted", "visibility": "private"}, headers=_auth(RITA)).status_code == 201
    assert _count(web.engine, "export_comment") == 21
    # Closed requests take no comments, from anyone.
    other = _submit(web, {"b.txt": b"b"}).json()["id"]
    assert web.post(f"{P}/api/exports/{other}/withdraw", headers=_auth(AUTHOR)).json()["state"] == "withdrawn"
    for user in (AUTHOR, RITA):
        closed = web.post(f"{P}/api/exports/{other}/comments", json={"body": "hi"}, headers=_auth(user))
        assert closed.status_code == 409 and "withdrawn" in closed.json()["message"], closed.text
    assert _count(web.engine, "export_comment") == 21


def test_comment_caps_are_review_settings(monkeypatch, tmp_path):
    from enclave.errors import SettingsError
    from enclave.review.settings import ReviewSettings

    monkeypatch.setenv("ENCLAVE_REVIEW_MAX_COMMENTS", "3")
    monkeypatch.setenv("ENCLAVE_REVIEW_MAX_COMMENT_CHARS", "500")
    settings = ReviewSettings.from_env(home=tmp_path)
    assert (settings.max_comments, settings.max_comment_chars) == (3, 500)
    monkeypatch.setenv("ENCLAVE_REVIEW_MAX_COMMENT_CHARS", str(service.MAX_COMMENT_CHARS + 1))
    with pytest.raises(SettingsError):
        ReviewSettings.from_env(home=tmp_path)
