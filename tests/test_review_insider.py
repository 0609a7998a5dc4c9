"""Issue 11, item 5: the two-person rule holds against one insider.

A decision needs a reviewer who authenticated as themselves: in the CLI their own registry
password (the one their hub login takes), never just an operator's `--as NAME`; in the review UI
the browser session the hub's OAuth login began. A hub API token carries no decision, because a hub
admin (or a service with the `tokens` scope) can mint one for anyone; the real JupyterHub at the
end shows both halves: the minted token is refused, and it cannot start a browser session either.
And a reviewer who was a member of the export's project at any time during its life (joined and
left again, or joined after approving) cannot review it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import select as sql_select

from enclave import client
from enclave.client import Config
from enclave.errors import Forbidden, NotFound, Unauthenticated
from enclave.registry import people, projects
from enclave.registry.credentials import set_password
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import AuditEvent
from enclave.review import service
from enclave.review.app import create_app
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.settings import ReviewSettings
from enclave.review.worker import run_checks

from tests.conftest import OPERATOR
from tests.review_stack import (
    AUTHOR, LAB, REVIEWERS, FakeIdentity, HubPlan, fake_scanner, hub_with_review, seed, serve_review, settings_for,
    warn,
)

RITA, RAVI = REVIEWERS
P = "/services/review"
PASSWORDS = {RITA: "rita's own secret 1", RAVI: "ravi's own secret 2"}


def _count(engine, table: str) -> int:
    with session_scope(engine) as s:
        return s.exec(text(f"SELECT count(*) FROM {table}")).one()[0]


def _events(engine, action: str) -> list[AuditEvent]:
    with session_scope(engine) as s:
        return list(s.exec(sql_select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all())


def _warned_export(engine, settings, name: str = "t.csv") -> tuple[str, list[str]]:
    """An export awaiting review whose checks warned, so it needs two approvals; and its hashes."""
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, [StagedFile(name, *quarantine.put_bytes(b"call 555-0100"))],
                                    "why").id
    assert run_checks(engine, settings, quarantine, request_id, fake_scanner({name: [warn(name)]})) == "awaiting_review"
    with session_scope(engine) as s:
        return request_id, [f.sha256 for f in service.current_files(s, service.get_request(s, request_id))]


def _state(engine, request_id: str) -> str:
    with session_scope(engine) as s:
        return service.get_request(s, request_id).state


@pytest.fixture
def cli_env(engine, tmp_path, monkeypatch):
    """A registry with the review cast, reviewers with their own passwords, and the CLI's
    environment pointing at it."""
    seed(engine)
    settings = settings_for(tmp_path, engine)
    with session_scope(engine) as s:
        for reviewer, password in PASSWORDS.items():
            set_password(s, OPERATOR, reviewer, password)
    for name in [n for n in os.environ if n.startswith(("ENCLAVE_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DB_URL", settings.db_url)
    monkeypatch.setenv("ENCLAVE_HOME", str(settings.home))
    return engine, settings


def _password_file(tmp_path: Path, name: str, password: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(password + "\n")
    path.chmod(mode)
    return str(path)


def test_an_operator_naming_two_reviewers_cannot_meet_the_two_person_rule(cli_env, tmp_path, capsys):
    """Attack (the old hole): `enclave review approve --as rita`, then `--as ravi`, run by one
    operator, released an export that needed two independent reviewers. Now each decision needs
    that reviewer's own password: without it, or with the wrong one (even the other reviewer's),
    nothing is decided, the command exits 2 with one line, and the attempt is on the audit log
    with the operating-system user who made it."""
    from enclave.cli import run

    engine, settings = cli_env
    request_id, seen = _warned_export(engine, settings)
    seen_arg = ("--seen", ",".join(seen))

    def cli(*args, code=0):
        capsys.readouterr()
        assert run(list(args)) == code, args
        return capsys.readouterr()

    for reviewer in REVIEWERS:  # what used to release it
        refused = cli("review", "approve", request_id, "--as", reviewer, *seen_arg, code=2).err
        assert len(refused.strip().splitlines()) == 1 and f"needs {reviewer}'s own password" in refused, refused
    wrong = _password_file(tmp_path, "guess", "operator's guess 123")
    others = _password_file(tmp_path, "ritas", PASSWORDS[RITA])
    assert "did not authenticate" in cli("review", "approve", request_id, "--as", RAVI, *seen_arg,
                                         "--password-file", wrong, code=2).err
    assert "did not authenticate" in cli("review", "reject", request_id, "--as", RAVI, "--reason", "no", *seen_arg,
                                         "--password-file", others, code=2).err
    assert "did not authenticate" in cli("review", "request-changes", request_id, "--as", "nobody", "--reason", "x",
                                         *seen_arg, "--password-file", others, code=2).err
    assert _state(engine, request_id) == "awaiting_review" and _count(engine, "export_review") == 0
    failed = [json.loads(e.details) for e in _events(engine, service.LOGIN_FAILED_ACTION)]
    assert [(e["request"], e["decision"], e["password_given"]) for e in failed] == [
        (request_id, "approve", False), (request_id, "approve", False), (request_id, "approve", True),
        (request_id, "reject", True), (request_id, "request_changes", True)]
    assert all(e["via"].startswith("cli, os user ") for e in failed)
    assert [e.subject for e in _events(engine, service.LOGIN_FAILED_ACTION)][-1] == "person:nobody"

    # Each reviewer with their own password: the first approval waits for the second.
    out = cli("review", "approve", request_id, "--as", RITA, *seen_arg, "--password-file", others).out
    assert "1 of 2" in out and _state(engine, request_id) == "awaiting_review"
    ravi = _password_file(tmp_path, "ravis", PASSWORDS[RAVI])
    assert "released to" in cli("review", "approve", request_id, "--as", RAVI, *seen_arg, "--password-file", ravi).out
    decisions = [json.loads(e.details) for e in _events(engine, "export.add_approval") + _events(engine, "export.approve")]
    assert [d["auth"] for d in decisions] == ["password", "password"]
    assert all(d["password_set_by"] == OPERATOR and d["via"].startswith("cli, os user ") for d in decisions)


def test_a_password_file_others_can_read_is_refused(cli_env, tmp_path, capsys):
    from enclave.cli import run

    engine, settings = cli_env
    request_id, seen = _warned_export(engine, settings)
    loose = _password_file(tmp_path, "loose", PASSWORDS[RITA], mode=0o644)
    capsys.readouterr()
    assert run(["review", "approve", request_id, "--as", RITA, "--seen", ",".join(seen), "--password-file", loose]) == 2
    assert "readable by others" in capsys.readouterr().err
    assert _count(engine, "export_review") == 0


def _on_a_terminal(argv: list[str], typed: str, timeout: float = 90) -> tuple[int, str]:
    """Run `enclave ARGV` on a pseudo-terminal, typing `typed` when it asks for a password;
    returns (exit status, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, with the terminal as its controlling tty
        os.execv(sys.executable, [sys.executable, "-m", "enclave.cli", *argv])
    shown, sent, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not sent and b"password for" in shown:
                os.write(fd, typed.encode() + b"\n")
                sent = True
        else:
            os.kill(pid, 9)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_a_reviewer_types_the_password_at_a_prompt_that_does_not_echo(cli_env):
    engine, settings = cli_env
    request_id, seen = _warned_export(engine, settings)
    argv = ["review", "approve", request_id, "--as", RITA, "--seen", ",".join(seen)]
    code, shown = _on_a_terminal(argv, "not rita's password")
    assert code == 2 and "did not authenticate" in shown and "not rita's password" not in shown, shown
    code, shown = _on_a_terminal(argv, PASSWORDS[RITA])
    assert code == 0 and "approval recorded (1 of 2)" in shown and PASSWORDS[RITA] not in shown, shown


def test_the_service_takes_a_decision_only_from_its_reviewers_own_login(cli_env):
    """Every caller of `service.decide` says how the reviewer authenticated, and a login of one
    person never decides for another."""
    engine, settings = cli_env
    request_id, seen = _warned_export(engine, settings)
    ravis = service.password_login(engine, RAVI, PASSWORDS[RAVI], request_id=request_id, decision="approve")
    with session_scope(engine) as s, pytest.raises(Forbidden, match="decides only as themselves"):
        service.decide(s, RITA, request_id, "approve", seen=seen, login=ravis)
    with session_scope(engine) as s, pytest.raises(Unauthenticated):
        service.decide(s, RITA, request_id, "approve", seen=seen, login=None)
    with pytest.raises(Unauthenticated):
        service.password_login(engine, RITA, PASSWORDS[RAVI], request_id=request_id, decision="approve")
    assert _count(engine, "export_review") == 0


def test_no_hub_token_carries_a_decision(engine, tmp_path):
    """Attack: a hub admin mints a token for each of two reviewers and posts their decisions to
    the API. Refused before the token is looked at, whoever it belongs to; nothing recorded."""
    seed(engine)
    settings = settings_for(tmp_path, engine)
    request_id, seen = _warned_export(engine, settings)
    tokens = {f"tok-{name}": name for name in (AUTHOR, *REVIEWERS)}
    with TestClient(create_app(settings, scanner=fake_scanner(), identity=FakeIdentity(tokens))) as web:
        for reviewer in REVIEWERS:
            for path in (f"{P}/api/exports/{request_id}/decision", f"/api/exports/{request_id}/decision"):
                reply = web.post(path, headers={"Authorization": f"token tok-{reviewer}"},
                                 json={"decision": "approve", "reason": "ok", "seen": seen, "version": 1})
                assert reply.status_code == 403, reply.text
                assert reply.json()["error"] == "decision_needs_login" and "own password" in reply.json()["message"]
        # Reading is still open to them: only decisions need the reviewer's own login.
        assert web.get(f"{P}/api/exports/{request_id}", headers={"Authorization": f"token tok-{RITA}"}).status_code == 200
    assert _state(engine, request_id) == "awaiting_review" and _count(engine, "export_review") == 0


# ----- membership at any time during the export's life ----------------------------------------------

REX2 = "rhea"  # a reviewer who also holds the scholar role, so she may join projects


def _decide(engine, who, request_id, decision="approve", reason="ok"):
    with session_scope(engine) as s:
        seen = [f.sha256 for f in service.current_files(s, service.get_request(s, request_id))]
    with session_scope(engine) as s:
        return service.decide(s, who, request_id, decision, reason, seen=seen,
                              login=service.ReviewerLogin(who, service.AuthMethod.hub_session))


def test_a_reviewer_who_was_a_member_while_the_export_was_open_cannot_review_it(cli_env):
    """Attack: a co-author leaves the project for a moment (or the PI has them removed), reviews
    the export as an "independent" reviewer, and rejoins. Membership changes are audit events;
    anyone added or removed since the export's submission was a member during its life, and is
    refused, sees nothing, and is not in their queue. Someone who left before it was submitted
    may review it."""
    engine, settings = cli_env
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, REX2, "Rhea", "rhea@example.org", roles=["reviewer", "scholar"])
    during, _ = _warned_export(engine, settings, "during.csv")
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, LAB, REX2)
    with session_scope(engine) as s:
        projects.remove_member(s, OPERATOR, LAB, REX2)
    after, _ = _warned_export(engine, settings, "after.csv")

    with pytest.raises(Forbidden, match="was a member of this export's project while the export was open"):
        _decide(engine, REX2, during)
    for decision in ("request_changes", "reject"):
        with pytest.raises(Forbidden, match="was a member"):
            _decide(engine, REX2, during, decision)
    with session_scope(engine) as s, pytest.raises(NotFound):
        service.view(s, REX2, during)
    with session_scope(engine) as s:
        assert [r.id for r in service.review_queue(s, REX2)] == [after]
        assert [r.id for r in service.review_queue(s, RITA)] == [during, after]
    assert _decide(engine, REX2, after).approvals == [REX2]  # she left before this one was submitted
    assert _count(engine, "export_review") == 1


def test_an_approval_stops_counting_when_its_reviewer_joins_the_project(cli_env):
    """Attack: a reviewer approves an export of a project, then is added to it (say, as a
    co-author of the paper); the second approval must not complete the two-person rule with hers.
    Her approval no longer counts; two independent approvals are still needed."""
    engine, settings = cli_env
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, REX2, "Rhea", "rhea@example.org", roles=["reviewer", "scholar"])
    request_id, _ = _warned_export(engine, settings)
    assert _decide(engine, REX2, request_id).approvals == [REX2]
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, LAB, REX2)
    second = _decide(engine, RITA, request_id)
    assert not second.approved and second.approvals == [RITA]
    third = _decide(engine, RAVI, request_id)
    assert third.approved and third.approvals == [RITA, RAVI]


# ----- a real JupyterHub ----------------------------------------------------------------------------

def _hub_login(browser: httpx.Client, user: str, password: str) -> None:
    page = browser.get("/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    reply = browser.post("/hub/login?next=", data={"username": user, "password": password,
                                                    "_xsrf": xsrf.group(1) if xsrf else ""}, follow_redirects=False)
    assert reply.status_code == 302, reply.text


def _hidden_fields(page: str) -> dict:
    fields: dict = {}
    for name, value in re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page):
        fields.setdefault(name, []).append(value)
    return {k: v if k == "seen" else v[0] for k, v in fields.items()}


@pytest.mark.slow
def test_with_a_real_hub_a_minted_token_neither_decides_nor_logs_in(tmp_path):
    """JupyterHub's admins (and any service with the `tokens` scope) can mint a token for any
    user: here the hub's admin service mints one for each reviewer. The review API refuses their
    decisions, and the hub will not start a browser session (OAuth) with such a token: its
    authorize page takes only the hub's login cookie. The reviewers themselves, logged in
    through the hub, decide in the review pages, and their decisions say so."""
    home = tmp_path / "home"
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    seed(db)
    plan = HubPlan()
    settings = ReviewSettings.for_home(home, db.url.render_as_string(hide_password=False), hub_api_url=plan.api_url,
                                       hub_api_token=plan.service_token,
                                       oauth_callback_url="/services/review/oauth_callback")
    users = [AUTHOR, *REVIEWERS]
    scanner = fake_scanner({"t.csv": [warn("t.csv")]})
    with serve_review(settings, port=plan.review_port, scanner=scanner) as (url, app), \
            hub_with_review(tmp_path / "hub", plan, users) as hub:
        for user in users:
            hub.add_user(user)
        results = tmp_path / "t.csv"
        results.write_text("call 555-0100\n")
        author = Config(token=hub.token(AUTHOR, ["access:services!service=review"]), review_url=url)
        request_id = client.export(results, justification="Table 2", config=author)["id"]
        app.state.review.worker.drain(timeout=60)
        assert client.export_status(request_id, config=author)["approvals_needed"] == 2

        for reviewer in REVIEWERS:
            minted = hub.token(reviewer, ["access:services!service=review"])
            seen = [f["sha256"] for f in httpx.get(f"{url}/api/exports/{request_id}",
                                                   headers={"Authorization": f"token {minted}"}).json()["files"]]
            for base in (url, f"{hub.url}/services/review"):
                refused = httpx.post(f"{base}/api/exports/{request_id}/decision", headers={"Authorization": f"token {minted}"},
                                     json={"decision": "approve", "reason": "ok", "seen": seen})
                assert refused.status_code == 403 and refused.json()["error"] == "decision_needs_login", refused.text
            # Nor does the token open the pages: the hub's authorize step wants its login cookie.
            with httpx.Client(base_url=hub.url, follow_redirects=False, timeout=30) as browser:
                authorize = browser.get(f"{P}/login").headers["location"]
                for attempt in (browser.get(authorize, headers={"Authorization": f"token {minted}"}),
                                browser.get(authorize + f"&token={minted}")):
                    assert attempt.status_code == 302, attempt.text
                    assert attempt.headers["location"].startswith("/hub/login"), attempt.headers["location"]
        assert client.export_status(request_id, config=author)["approvals"] == 0

        # The reviewers themselves: logged in through the hub, deciding on the page.
        from tests.review_stack import PASSWORD

        for reviewer in REVIEWERS:
            with httpx.Client(base_url=hub.url, follow_redirects=True, timeout=30) as browser:
                _hub_login(browser, reviewer, PASSWORD)
                page = browser.get(f"{P}/requests/{request_id}")
                assert page.status_code == 200 and reviewer in page.text, page.text[:500]
                form = _hidden_fields(page.text)
                done = browser.post(f"{P}/requests/{request_id}/decision", follow_redirects=False, data={
                    "csrf": form["csrf"], "seen": form["seen"], "version": form["version"], "decision": "approve",
                    "reason": f"{reviewer}: the number is the study's public line"})
                assert done.status_code == 303, done.text
        assert client.export_status(request_id, config=author)["state"] == "released"
    decisions = [json.loads(e.details) for e in _events(db, "export.add_approval") + _events(db, "export.approve")]
    assert [d["auth"] for d in decisions] == ["hub_session", "hub_session"]
    db.dispose()
