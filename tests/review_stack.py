"""Fixtures for the output-review tests: people and projects in the registry, a review service
(in-process or served by uvicorn), and a real JupyterHub whose login page works (the shared-password
authenticator) with the review service registered as an OAuth client behind its proxy."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
import time
from pathlib import Path

from enclave.errors import Unauthenticated
from enclave.registry import grants, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from enclave.review.scan.findings import Finding, Severity, verdict
from enclave.review.settings import ReviewSettings
from enclave.review.worker import ScanOutcome
from tests.helpers import free_port
from tests.hub_fixtures import Hub, hub_process

OPERATOR = "op"
AUTHOR = "sofia"  # scholar in LAB
OTHER_SCHOLAR = "bob"  # scholar in OTHER
REVIEWERS = ("rita", "ravi")  # independent reviewers
MEMBER_REVIEWER = "rex"  # reviewer *and* member of LAB: not independent
LAB, OTHER = "lab", "other"
PASSWORD = "correct horse battery"


def seed(engine) -> None:
    """The cast of the review tests (the `engine` fixture has already made OPERATOR)."""
    until = end_of_day((utcnow() + dt.timedelta(days=30)).date())
    with session_scope(engine) as s:
        for name in (AUTHOR, OTHER_SCHOLAR):
            people.add_person(s, OPERATOR, name, name.title(), f"{name}@example.org", roles=["scholar"])
        for name in REVIEWERS:
            people.add_person(s, OPERATOR, name, name.title(), f"{name}@example.org", roles=["reviewer"])
        people.add_person(s, OPERATOR, MEMBER_REVIEWER, "Rex", "rex@example.org", roles=["reviewer", "scholar"])
        for slug, pi in ((LAB, AUTHOR), (OTHER, OTHER_SCHOLAR)):
            projects.create_project(s, OPERATOR, slug, f"Project {slug}", pi, "Study things.")
            projects.transition(s, OPERATOR, slug, "approve", until=until)
            grants.set_grant(s, OPERATOR, slug)
        projects.add_member(s, OPERATOR, LAB, MEMBER_REVIEWER)


def settings_for(tmp_path: Path, engine, **overrides) -> ReviewSettings:
    return ReviewSettings.for_home(tmp_path / "home", engine.url.render_as_string(hide_password=False), **overrides)


def fake_scanner(findings_for: dict[str, list[Finding]] | None = None):
    """A stand-in for the scan pipeline in workflow tests: findings by file name."""
    findings_for = findings_for or {}

    def scan(_db, _settings, _quarantine, _job, files):
        found = [f for name, _ in files for f in findings_for.get(name, [])]
        return ScanOutcome(findings=found, verdict=verdict(found).value, policy_version="test-1", policy_sha256="0" * 64)

    return scan


def warn(file: str, message: str = "looks like a phone number") -> Finding:
    return Finding(check="identifiers", severity=Severity.warn, file=file, location="line 1, chars 0-5",
                   message=message, evidence={"start": 0, "end": 5})


def block(file: str, message: str = "an SSN") -> Finding:
    return Finding(check="identifiers", severity=Severity.block, file=file, location="line 1, chars 0-11",
                   message=message, evidence={"start": 0, "end": 11})


class FakeIdentity:
    """Tokens -> user names, standing in for the hub in in-process tests (the hub-backed tests use
    the real thing)."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens

    def username(self, token: str) -> str:
        try:
            return self.tokens[token]
        except KeyError:
            raise Unauthenticated("JupyterHub does not recognise this token") from None


@contextlib.contextmanager
def serve_review(settings: ReviewSettings, *, scanner=None, identity=None, port: int | None = None):
    """The review app under uvicorn on a loopback port; yields (base URL of the service, app)."""
    import uvicorn

    from enclave.review.app import create_app

    port = port or free_port()
    app = create_app(settings, scanner=scanner, identity=identity)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the review service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


class HubPlan:
    """Ports and tokens chosen before anything starts: the review service must be up before the
    hub (the hub waits for its services' URLs), and it must know the hub's API URL and its token."""

    def __init__(self):
        self.port, self.hub_port, self.review_port = free_port(), free_port(), free_port()
        self.admin_token, self.service_token = secrets.token_hex(16), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/hub/api"


@contextlib.contextmanager
def hub_with_review(workdir: Path, plan: HubPlan, users: list[str]):
    """JupyterHub (with configurable-http-proxy) whose login page takes PASSWORD for any of
    `users`, with the review service registered at /services/review/ as an OAuth client."""
    services = [
        {"name": "review", "url": f"http://127.0.0.1:{plan.review_port}", "api_token": plan.service_token,
         "oauth_no_confirm": True, "oauth_client_id": "service-review",
         "oauth_redirect_uri": "/services/review/oauth_callback"},
    ]
    authenticator = (f'c.JupyterHub.authenticator_class = "shared-password"\n'
                     f"c.SharedPasswordAuthenticator.user_password = {PASSWORD!r}\n"
                     f"c.Authenticator.allowed_users = {set(users)!r}")
    with hub_process(workdir, port=plan.port, hub_port=plan.hub_port, admin_token=plan.admin_token,
                     services=services, user_scopes=["access:services!service=review"],
                     authenticator=authenticator) as api_url:
        yield Hub(api_url, plan.admin_token, url=plan.url, service_token=plan.service_token)
