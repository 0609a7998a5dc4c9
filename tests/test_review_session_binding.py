"""Exports filed under another project, tried from a notebook session: a scholar in two projects
works in a session of one and submits (or resubmits) under the other, with the session's own token
or another token from the container's address. The review service files it under the session's
project or refuses it."""
from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from enclave.registry import projects, sessions
from enclave.registry.db import session_scope
from enclave.registry.models import ExportRequest, Project
from enclave.review.app import create_app
from tests.review_stack import AUTHOR, LAB, OPERATOR, OTHER, REVIEWERS, FakeIdentity, fake_scanner, seed, settings_for

P = "/services/review"
TOKENS = {"tok-session": AUTHOR, "tok-personal": AUTHOR, "tok-rita": REVIEWERS[0]}


@pytest.fixture
def web(engine, tmp_path):
    seed(engine)
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, OTHER, AUTHOR)  # she works in LAB and OTHER
    app = create_app(settings_for(tmp_path, engine), scanner=fake_scanner(), identity=FakeIdentity(TOKENS))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        client.engine = engine
        yield client


def _submit(web, token: str, **headers):
    return web.post(f"{P}/api/exports", files=[("files", ("t.csv", b"a,b\n1,2\n", "text/csv"))],
                    data={"justification": "j", "context": "c"}, headers={"Authorization": f"token {token}", **headers})


def _projects_of_requests(engine) -> list[str]:
    with session_scope(engine) as s:
        return sorted(s.get(Project, r.project_id).slug for r in s.exec(select(ExportRequest)).all())


def test_a_session_files_exports_under_its_own_project_only(web):
    engine = web.engine
    with session_scope(engine) as s:
        sessions.open_session(s, username=AUTHOR, project=OTHER, mode="docker", container_ip="testclient",
                              token_sha256=hashlib.sha256(b"tok-session").hexdigest())
    for token in ("tok-session", "tok-personal"):  # its own token, or one typed in from outside
        refused = _submit(web, token, **{"X-Enclave-Project": LAB})
        assert refused.status_code == 403 and refused.json()["error"] == "wrong_project", refused.text
        assert f"works for project '{OTHER}', not '{LAB}'" in refused.json()["message"]
    assert _projects_of_requests(engine) == []  # nothing stored
    # With no header she has two projects; from the session there is only one.
    assert _submit(web, "tok-session").status_code == 202
    assert _projects_of_requests(engine) == [OTHER]


def test_a_session_cannot_resubmit_to_another_projects_request(web):
    engine = web.engine
    lab = _submit(web, "tok-personal", **{"X-Enclave-Project": LAB})  # from her laptop: fine
    assert lab.status_code == 202
    with session_scope(engine) as s:
        request = s.get(ExportRequest, lab.json()["id"])
        request.state = "changes_requested"  # as a reviewer's decision would leave it
        s.add(request)
        sessions.open_session(s, username=AUTHOR, project=OTHER, mode="docker", container_ip="testclient")
    reply = web.post(f"{P}/api/exports/{lab.json()['id']}/resubmit", files=[("files", ("t.csv", b"x", "text/csv"))],
                     data={"note": "n"}, headers={"Authorization": "token tok-personal"})
    assert reply.status_code == 403 and reply.json()["error"] == "wrong_project", reply.text


def test_the_reviewer_page_shows_what_the_authors_sessions_sent_to_browsers(web):
    from enclave.web.browser_session import Signer, load_or_create_secret

    engine = web.engine
    with session_scope(engine) as s:
        record = sessions.open_session(s, username=AUTHOR, project=OTHER, mode="docker", container_ip="testclient")
        sessions.record_egress(s, record, 5 * 1024**2)
        sessions.set_stop_reason(s, record.id, "view_budget: spent")
        sessions.close_session(s, record.id)
        sid = record.id
    request_id = _submit(web, "tok-personal", **{"X-Enclave-Project": OTHER}).json()["id"]
    settings = web.app.state.review.settings
    signer = Signer(load_or_create_secret(settings.cookie_secret_file))
    web.cookies.set("enclave-review-session", signer.sign("enclave-review-session", "tok-rita"), path=f"{P}/")
    page = web.get(f"{P}/requests/{request_id}").text
    assert "Browser egress" in page and f"<code>{sid[:12]}</code>" in page, page[:3000]
    assert "<td>5M</td>" in page and "view_budget: spent" in page and "5M of 128M a day" in page
    # The author does not see it (it is the reviewers' context).
    web.cookies.set("enclave-review-session", signer.sign("enclave-review-session", "tok-session"), path=f"{P}/")
    assert "Browser egress" not in web.get(f"{P}/requests/{request_id}").text
