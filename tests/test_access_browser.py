"""The access-by-application pages (issue 13): in-process checks of what an attacker would try
(forged forms, someone else's application, a conflicted or unassigned panel member, script in an
applicant's text), then the whole path in Debian's Chromium driven by Playwright behind a real
JupyterHub: an applicant applies (a draft, then the submission), two panel members score, a
conflicted one cannot open it, the operator allocates the pool across three applications, and the
winning scholar calls a real gateway with a key for the new project. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from enclave.access.app import create_app
from enclave.access.settings import AccessSettings
from enclave.errors import NotFound
from enclave.registry import applications, awards, calls, keys, panel, people
from enclave.registry.clock import end_of_day
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import AccessApplication, AuditEvent, PanelAssignment

from tests.gateway_fixtures import serve as serve_gateway, tiny_model_dir  # noqa: F401 (a fixture)
from tests.helpers import free_port
from tests.hub_fixtures import Hub, hub_process
from tests.review_stack import FakeIdentity

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
OPERATOR = "op"
PASSWORD = "correct horse battery"
TODAY = dt.date.today()
TRAINED = (TODAY - dt.timedelta(days=100)).isoformat()
PEOPLE = [  # username, affiliation, roles
    ("ann", "Uni A", ["applicant"]), ("ben", "Uni B", ["applicant"]), ("cat", "Uni C", ["applicant"]),
    ("p1", "Inst X", ["panel"]), ("p2", "Inst Y", ["panel"]), ("p3", "uni a", ["panel"]),  # p3: ann's institution
]
CALL = "c1"
POOL = 60_000  # ann asks 50,000, ben 40,000, cat 30,000: ann in full, ben what is left, cat deferred
FIELDS = dict(lay_summary="Does the model repeat what it read?", research_question="How often does GPT-2 repeat text?",
              least_access="Sampling answers it.", token_justification="100 prompts x 500 tokens.",
              planned_outputs="Aggregate rates.", risk_assessment="Low.", ethics_reference="IRB-17")
CRITERIA = ("significance", "least_access", "feasibility", "risk")


def _registry(path: Path):
    db = make_engine(f"sqlite:///{path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
        for username, affiliation, roles in PEOPLE:
            people.add_person(s, OPERATOR, username, username.title(), f"{username}@example.org", affiliation, roles)
        calls.open_call(s, OPERATOR, CALL, "Memorisation <i>in</i> GPT-2", end_of_day(TODAY + dt.timedelta(days=10)),
                        POOL, ["sample", "score"])
    return db


def _apply(db, who: str, title: str, requests: int, submit: bool = True) -> int:
    with session_scope(db) as s:
        app = applications.create(s, who, CALL, "sample", title=title, requests=requests, tokens_per_request=500,
                                  team=[f"{who}:{TRAINED}"], **FIELDS)
        if submit:
            applications.submit(s, who, app.id, calls.get_call(s, CALL).terms_sha256)
        return app.id


def _to_review(db, app_id: int, members) -> None:
    with session_scope(db) as s:
        applications.screen(s, OPERATOR, app_id)
        panel.assign(s, OPERATOR, app_id, list(members))
        panel.start_review(s, OPERATOR, app_id)


# --- in-process: what an attacker would try ----------------------------------------------------

class Browsers:
    """The access app in-process, with one cookie jar per user (their session as the hub's
    OAuth login would have set it; the hub itself is stood in for by FakeIdentity here, and is
    real in the browser test below)."""

    def __init__(self, app):
        self.app = app

    def as_user(self, client: TestClient, user: str) -> TestClient:
        state = self.app.state.access
        client.cookies.clear()
        client.cookies.set(state.sessions.session_cookie, state.sessions.signer.sign(state.sessions.session_cookie, f"tok-{user}"))
        return client


@pytest.fixture
def web(tmp_path):
    db = _registry(tmp_path)
    settings = AccessSettings.for_home(tmp_path, db.url.render_as_string(hide_password=False))
    app = create_app(settings, identity=FakeIdentity({f"tok-{u}": u for u, _, _ in PEOPLE}))
    with TestClient(app) as client:
        yield db, Browsers(app), client
    db.dispose()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_a_forged_form_is_refused_and_changes_nothing(web):
    db, browsers, client = web
    page = browsers.as_user(client, "ann").get("/services/access/calls/c1/apply")
    assert page.status_code == 200
    form = dict(action="save", tier="sample", title="Forged", team=f"ann:{TRAINED}")
    for csrf in ("", "0" * 64, _csrf(browsers.as_user(client, "ben").get("/services/access/").text)):
        browsers.as_user(client, "ann")
        refused = client.post("/services/access/calls/c1/apply", data={**form, "csrf": csrf}, follow_redirects=False)
        assert refused.status_code == 403 and "CSRF" in refused.text
    with session_scope(db) as s:
        assert s.exec(select(AccessApplication)).all() == []
    saved = client.post("/services/access/calls/c1/apply", data={**form, "csrf": _csrf(page.text)}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("done=draft%20saved")


def test_without_a_session_pages_go_to_the_hub_login_and_forms_are_refused(web):
    _, _, client = web
    page = client.get("/services/access/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/services/access/login?next=")
    assert client.post("/services/access/calls/c1/apply", data={"title": "x"}).status_code == 401


def test_an_applicant_sees_only_their_own_applications(web):
    db, browsers, client = web
    ann = _apply(db, "ann", "Ann's secret plan", 100)
    browsers.as_user(client, "ben")
    for path in (f"/services/access/applications/{ann}", f"/services/access/applications/{ann + 1}"):
        answer = client.get(path)
        assert answer.status_code == 404 and "Ann's secret plan" not in answer.text
    home = client.get("/services/access/")
    assert "Ann&#39;s secret plan" not in home.text and "secret plan" not in home.text
    # Nor may ben change it, with a valid form of his own.
    edit = client.post(f"/services/access/applications/{ann}", data={"csrf": _csrf(home.text), "title": "mine now"})
    assert edit.status_code == 404
    # Panel pages are for the panel: an applicant has no panel role.
    assert client.get(f"/services/access/panel/{ann}").status_code == 403


def test_panel_members_declare_before_they_see_anything_and_a_conflict_keeps_them_out(web):
    db, browsers, client = web
    ann = _apply(db, "ann", "Ann's plan", 100)
    _to_review(db, ann, ["p1", "p2", "p3"])
    # Before declaring: who applied, never the content.
    first = browsers.as_user(client, "p1").get(f"/services/access/panel/{ann}")
    assert first.status_code == 200 and "declare your conflicts" in first.text
    assert FIELDS["research_question"] not in first.text
    # A same-institution member was flagged at assignment and can neither open nor declare it away.
    browsers.as_user(client, "p3")
    refused = client.get(f"/services/access/panel/{ann}")
    assert refused.status_code == 403 and "conflict" in refused.text and FIELDS["research_question"] not in refused.text
    home = client.get("/services/access/")
    assert "institution" in home.text and f'href="/services/access/panel/{ann}"' not in home.text
    declared = client.post(f"/services/access/panel/{ann}/declare", data={"csrf": _csrf(home.text), "answer": "none"})
    assert declared.status_code == 409
    scored = client.post(f"/services/access/panel/{ann}/score",
                         data={"csrf": _csrf(home.text), **{f"score_{c}": "1" for c in CRITERIA}})
    assert scored.status_code == 403
    # A member who declares a conflict is out as well; an unassigned one never gets in.
    browsers.as_user(client, "p2")
    csrf = _csrf(client.get("/services/access/").text)
    client.post(f"/services/access/panel/{ann}/declare", data={"csrf": csrf, "answer": "conflict", "conflict": "co-author"})
    assert client.get(f"/services/access/panel/{ann}").status_code == 403
    with session_scope(db) as s:
        opened = s.exec(select(AuditEvent).where(AuditEvent.action == "panel.open")).all()
        assert opened == []  # nobody opened it
        assert s.get(PanelAssignment, (ann, people.get_person(s, "p2").id)).conflict == "declared"


def test_applicants_text_is_escaped_and_pages_carry_no_script(web):
    db, browsers, client = web
    ann = _apply(db, "ann", "<script>alert(1)</script><img src=x onerror=alert(2)>", 100, submit=False)
    page = browsers.as_user(client, "ann").get(f"/services/access/applications/{ann}")
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in page.text  # the pages themselves use none
    assert "Memorisation &lt;i&gt;in&lt;/i&gt; GPT-2" in page.text


# --- the whole path in Chromium behind a real JupyterHub --------------------------------------

@contextlib.contextmanager
def _serve_access(settings: AccessSettings, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the access service did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def _hub_with_access(workdir: Path, users: list[str]):
    """JupyterHub whose login page takes PASSWORD for `users`, with the access service at
    /services/access/ as its OAuth client (the service must be up before the hub)."""
    port, hub_port, access_port = free_port(), free_port(), free_port()
    admin_token, service_token = secrets.token_hex(16), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    settings_kw = dict(hub_api_url=f"{url}/hub/api", hub_api_token=service_token,
                       oauth_callback_url="/services/access/oauth_callback")
    services = [{"name": "access", "url": f"http://127.0.0.1:{access_port}", "api_token": service_token,
                 "oauth_no_confirm": True, "oauth_client_id": "service-access",
                 "oauth_redirect_uri": "/services/access/oauth_callback"}]
    authenticator = (f'c.JupyterHub.authenticator_class = "shared-password"\n'
                     f"c.SharedPasswordAuthenticator.user_password = {PASSWORD!r}\n"
                     f"c.Authenticator.allowed_users = {set(users)!r}")
    yield access_port, settings_kw, lambda: hub_process(
        workdir, port=port, hub_port=hub_port, admin_token=admin_token, services=services,
        user_scopes=["access:services!service=access"], authenticator=authenticator), \
        Hub(f"{url}/hub/api", admin_token, url=url, service_token=service_token)


def _login(browser, hub: Hub, user: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{hub.url}/services/access/")
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(f"{hub.url}/services/access/**")
    return context, page


def _flash(page) -> str:
    return page.locator("p.flash").inner_text()


@pytest.mark.chromium
@pytest.mark.slow
def test_apply_score_allocate_and_use_the_model_in_the_browser(tmp_path, chromium, tiny_model_dir):  # noqa: F811
    db = _registry(tmp_path)
    users = [u for u, _, _ in PEOPLE]
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with _hub_with_access(tmp_path / "hub", users) as (access_port, settings_kw, start_hub, hub):
        settings = AccessSettings.for_home(tmp_path, db.url.render_as_string(hide_password=False), **settings_kw)
        with _serve_access(settings, access_port), start_hub():
            for user in users:
                hub.add_user(user)
            base = f"{hub.url}/services/access"

            # The applicant logs in through the hub and applies: a draft first, then the submission.
            ann_ctx, ann = _login(chromium, hub, "ann")
            ann.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            ann.click("a.apply")
            ann.fill("#title", "Memorisation of <b>census</b> records")
            ann.fill("#lay_summary", "Does the model repeat what it read? <script>alert('x')</script>")
            ann.fill("#team", f"ann:{TRAINED}")
            ann.click("#save")
            assert _flash(ann) == "draft saved" and ann.locator("#state").inner_text() == "draft"
            app_id = int(re.search(r"/applications/(\d+)", ann.url).group(1))
            for name, value in FIELDS.items():
                if name != "lay_summary":
                    ann.fill(f"#{name}", value)
            ann.fill("#requests", "100")
            ann.fill("#tokens_per_request", "500")
            ann.click("#submit")  # without ticking the terms: still a draft, nothing lost
            assert "accept the call's terms" in _flash(ann) and ann.locator("#state").inner_text() == "draft"
            assert ann.input_value("#research_question") == FIELDS["research_question"]
            terms_hash = ann.locator("#terms-hash").inner_text()
            ann.check("#accept_terms")
            ann.screenshot(path=str(ARTIFACTS / "access-apply.png"), full_page=True)
            ann.click("#submit")
            assert _flash(ann).startswith("submitted") and ann.locator("#state").inner_text() == "submitted"
            assert "<b>census</b>" in ann.locator("h1").inner_text()  # shown as text, not markup
            with session_scope(db) as s:
                version = applications.versions(s, s.get(AccessApplication, app_id))[0]
                assert version.terms_sha256 == terms_hash == calls.get_call(s, CALL).terms_sha256

            # Two more applications, through the registry; the operator screens all three and
            # assigns the panel (p3 shares ann's institution: flagged at once).
            ben, cat = _apply(db, "ben", "Ben's study", 80), _apply(db, "cat", "Cat's study", 60)
            _to_review(db, app_id, ["p1", "p2", "p3"])
            for other in (ben, cat):
                _to_review(db, other, ["p1", "p2"])

            # The conflicted member cannot open it.
            p3_ctx, p3 = _login(chromium, hub, "p3")
            assert "institution" in p3.locator("#assigned").inner_text()
            refused = p3.goto(f"{base}/panel/{app_id}")
            assert refused.status == 403 and FIELDS["research_question"] not in p3.content()
            p3.screenshot(path=str(ARTIFACTS / "access-conflicted.png"), full_page=True)
            p3_ctx.close()

            # Two members declare no conflict, open and score it, criterion by criterion.
            for member, value, comment in (("p1", "2", "Clear question; <i>tight</i> budget."), ("p2", "3", "")):
                ctx, page = _login(chromium, hub, member)
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.click(f"#assigned a >> text={app_id}")
                assert "declare your conflicts" in page.locator("h1").inner_text()
                page.check("#no-conflict")
                page.click("#declare")
                assert _flash(page) == "no conflict declared"
                assert FIELDS["research_question"] in page.locator("dl.facts").inner_text()  # opened: the content shows
                for criterion in CRITERIA:
                    page.select_option(f"#score_{criterion}", value)
                page.fill("#comment", comment)
                page.fill("#private", f"{member}: private note")
                if member == "p1":
                    page.screenshot(path=str(ARTIFACTS / "access-panel.png"), full_page=True)
                page.click("#score")
                assert _flash(page) == "scores recorded"
                ctx.close()
            # The others are scored through the registry: ben next best, cat last.
            with session_scope(db) as s:
                for other, value in ((ben, 4), (cat, 4)):
                    for member in ("p1", "p2"):
                        panel.declare(s, member, other)
                        panel.score(s, member, other, {c: value if other == ben else 5 for c in CRITERIA})

            # Before the decision the applicant sees the state, not the scores.
            ann.goto(f"{base}/applications/{app_id}")
            assert ann.locator("#state").inner_text() == "in review" and ann.locator("#summary").count() == 0

            # The operator closes the call and allocates the pool down the ranking.
            with session_scope(db) as s:
                calls.close_call(s, OPERATOR, CALL)
            rows = {r.application: r for r in awards.allocate(db, OPERATOR, CALL)}
            assert [rows[a].rank for a in (app_id, ben, cat)] == [1, 2, 3]
            assert (rows[app_id].recommended, rows[ben].recommended, rows[cat].recommended) == (50_000, 10_000, 0)
            assert (rows[app_id].outcome, rows[ben].outcome, rows[cat].outcome) == ("approved", "approved", "deferred")

            # The winner sees the decision, the panel's summary and the comment addressed to them
            # (not the private notes, not who wrote what).
            ann.goto(f"{base}/applications/{app_id}")
            assert ann.locator("#state").inner_text() == "decided"
            assert "approved" in ann.locator("#decision").inner_text()
            project = f"{CALL}-{app_id}"
            assert project in ann.locator("#award").inner_text() and "50,000" in ann.locator("#award").inner_text()
            summary = ann.locator("#summary").inner_text()
            assert "2.50" in summary and "Clear question; <i>tight</i> budget." in summary
            assert "private note" not in ann.content() and "p1" not in summary
            ann.screenshot(path=str(ARTIFACTS / "access-decision.png"), full_page=True)
            ann_ctx.close()
            assert dialogs == []  # no script from anyone's text ever ran

    # The winning scholar uses the model: a key for the new project, a call to a real gateway.
    with session_scope(db) as s:
        assert people.get_person(s, "ann").has_role(people.Role.scholar)
        _, key = keys.issue(s, OPERATOR, "ann", project)
    with serve_gateway(db, tiny_model_dir) as gateway, gateway.client(key=key) as client:
        answer = client.post("/v1/generate", json={"prompt": "The census counted", "max_new_tokens": 8})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1
        usage = client.get("/v1/usage").json()
        # The first tranche: half the award, the rest after a progress report.
        assert usage["project"] == project and usage["tokens"]["limit"] == 25_000, usage
        assert usage["tokens"]["used"] == answer.json()["usage"]["total_tokens"] and usage["tier"] == "sample"
        # The deferred applicant got no project: there is nothing to issue her a key for.
        with session_scope(db) as s, pytest.raises(NotFound):
            keys.issue(s, OPERATOR, "cat", f"{CALL}-{cat}")
    for name in ("access-apply.png", "access-conflicted.png", "access-panel.png", "access-decision.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
    db.dispose()


def test_the_hub_serves_the_access_pages_on_loopback_for_browsers_only(tmp_path):
    """Wiring: with a command, the hub manages an `access` service on loopback (browsers reach it
    through the proxy; a notebook's own loopback is not the host's), logs browsers in without a
    confirmation page, and lets users (not notebook tokens) reach it."""
    from traitlets.config import Config

    from enclave.hub.config import EnclaveHubSettings, configure
    from enclave.hub.spawner import SERVER_TOKEN_SCOPES

    off = Config()
    configure(off, EnclaveHubSettings(environ={}, mode="unisolated", state_dir=str(tmp_path / "off")))
    assert "access" not in [s["name"] for s in off.JupyterHub.services]
    c = Config()
    settings = EnclaveHubSettings(environ={"ENCLAVE_ACCESS_PORT": "18005"}, mode="docker",
                                  state_dir=str(tmp_path / "on"), access_command="enclave serve access --port 18005")
    configure(c, settings)
    [service] = [s for s in c.JupyterHub.services if s["name"] == "access"]
    assert service["url"] == "http://127.0.0.1:18005" and settings.service_ip != "127.0.0.1"
    assert service["oauth_no_confirm"] and "access" in service["command"]
    [user] = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert "access:services!service=access" in user["scopes"]
    assert not {"access:services!service=access", "access:services"} & set(SERVER_TOKEN_SCOPES)
    # The hub's login page points newcomers to the registration page; developer mode keeps its banner.
    assert '<a href="/services/access/register">' in c.JupyterHub.template_vars["announcement_login"]
    assert "announcement_login" not in (off.JupyterHub.template_vars if "template_vars" in off.JupyterHub else {})
    dev = Config()
    configure(dev, EnclaveHubSettings(environ={}, mode="unisolated", state_dir=str(tmp_path / "dev"),
                                      access_command="enclave serve access"))
    assert "DEVELOPER MODE" in dev.JupyterHub.template_vars["announcement_login"]
    assert "register" in dev.JupyterHub.template_vars["announcement_login"]


@pytest.mark.chromium
@pytest.mark.slow
def test_make_up_seeds_a_call_the_demo_applicant_finds_behind_the_hub(tmp_path, chromium):
    """`enclave up`'s seed (demo people, then the demo call and its cast) and `enclave serve
    access` run by the hub as a managed service, configured from the environment the hub gives it:
    the demo applicant logs in and finds the demo call open; a panel member finds no call to apply to."""
    from enclave.demo.seed import ACCESS_PEOPLE, DEMO_CALL, seed_demo, seed_demo_call

    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    seed_demo(db)
    assert any(DEMO_CALL in line for line in seed_demo_call(db))
    assert seed_demo_call(db) == seed_demo_call(db)  # idempotent: nothing more is created
    users = [u for u, *_ in ACCESS_PEOPLE]
    port, hub_port, access_port = free_port(), free_port(), free_port()
    admin_token = secrets.token_hex(16)
    env = {"ENCLAVE_DB_URL": db.url.render_as_string(hide_password=False), "ENCLAVE_HOME": str(tmp_path / "home")}
    services = [{"name": "access", "url": f"http://127.0.0.1:{access_port}", "oauth_no_confirm": True,
                 "command": [sys.executable, "-m", "enclave.cli", "serve", "access", "--port", str(access_port)],
                 "environment": env}]
    authenticator = (f'c.JupyterHub.authenticator_class = "shared-password"\n'
                     f"c.SharedPasswordAuthenticator.user_password = {PASSWORD!r}\n"
                     f"c.Authenticator.allowed_users = {set(users)!r}")
    with hub_process(tmp_path / "hub", port=port, hub_port=hub_port, admin_token=admin_token, services=services,
                     user_scopes=["access:services!service=access"], authenticator=authenticator):
        hub = Hub(f"http://127.0.0.1:{port}/hub/api", admin_token, url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 60
        while True:  # the hub starts its managed service; it needs a moment to listen
            try:
                httpx.get(f"http://127.0.0.1:{access_port}/services/access/static/access.css", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        _, page = _login(chromium, hub, "applicant")
        assert DEMO_CALL in page.locator("table.list").first.inner_text()
        page.click("a.apply")
        assert page.locator("#terms-hash").inner_text() == _terms_hash(db)
        page.screenshot(path=str(ARTIFACTS / "access-demo-call.png"), full_page=True)
        _, panel_page = _login(chromium, hub, "panel1")
        assert "Nothing is assigned to you." in panel_page.content() and panel_page.locator("a.apply").count() == 0
    db.dispose()


def _terms_hash(db) -> str:
    from enclave.demo.seed import DEMO_CALL

    with session_scope(db) as s:
        return calls.get_call(s, DEMO_CALL).terms_sha256


def test_a_deferred_applicant_revises_as_a_new_version_and_a_rejected_one_appeals_once(web):
    db, browsers, client = web
    ann, ben = _apply(db, "ann", "Ann's plan", 100), _apply(db, "ben", "Ben's plan", 100)
    with session_scope(db) as s:
        for app_id, outcome in ((ann, "deferred"), (ben, "rejected")):
            applications.screen(s, OPERATOR, app_id)
            awards.decide_by_operator(s, OPERATOR, app_id, outcome, reason="out of scope <b>for now</b>")
    page = browsers.as_user(client, "ann").get(f"/services/access/applications/{ann}")
    assert "out of scope &lt;b&gt;for now&lt;/b&gt;" in page.text and 'id="revise"' in page.text
    # Someone else cannot revise it, even with a valid form of their own.
    ben_csrf = _csrf(browsers.as_user(client, "ben").get("/services/access/").text)
    assert client.post(f"/services/access/applications/{ann}/revise", data={"csrf": ben_csrf}).status_code == 404
    browsers.as_user(client, "ann")
    revised = client.post(f"/services/access/applications/{ann}/revise", data={"csrf": _csrf(page.text)})
    assert revised.status_code == 200 and "version 2 is a draft" in revised.text and 'id="save"' in revised.text
    browsers.as_user(client, "ben")
    page = client.get(f"/services/access/applications/{ben}")
    assert 'id="revise"' not in page.text and 'id="appeal"' in page.text
    appealed = client.post(f"/services/access/applications/{ben}/appeal",
                           data={"csrf": _csrf(page.text), "reason": "It is in scope: see section 2."})
    assert appealed.status_code == 200 and "appealed" in appealed.text
    with session_scope(db) as s:
        assert s.get(AccessApplication, ann).version == 2 and s.get(AccessApplication, ann).state == "draft"
        assert s.get(AccessApplication, ben).state == "appealed"
        assert len(applications.versions(s, s.get(AccessApplication, ann))) == 1  # version 1, frozen
