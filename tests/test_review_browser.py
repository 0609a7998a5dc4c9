"""The review service behind a real JupyterHub: notebook tokens from the hub (scoped), browser
logins through the hub's OAuth, and a reviewer approving an export in Debian's Chromium driven by
Playwright. The checks are the real scan pipeline. A screenshot of the review page is saved under
test-artifacts/."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest

from enclave import client
from enclave.client import Config, EnclaveError
from enclave.registry import grants, people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.review.release import verify
from enclave.review.settings import ReviewSettings

from tests.review_stack import (
    AUTHOR, LAB, OPERATOR, OTHER_SCHOLAR, PASSWORD, REVIEWERS, HubPlan, hub_with_review, serve_review,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
RITA, RAVI = REVIEWERS
SCOPE = "access:services!service=review"


class Stack:
    def __init__(self, hub, review_url: str, app, settings: ReviewSettings, db):
        self.hub, self.review_url, self.app, self.settings, self.db = hub, review_url, app, settings, db

    def config(self, user: str, scopes=(SCOPE,)) -> Config:
        """What a notebook of `user` would have: a hub token, the service's direct URL."""
        return Config(token=self.hub.token(user, list(scopes)), review_url=self.review_url)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("review-hub")
    db = make_engine(f"sqlite:///{home / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
        for name in (AUTHOR, OTHER_SCHOLAR):
            people.add_person(s, OPERATOR, name, name.title(), f"{name}@example.org", roles=["scholar"])
        for name in REVIEWERS:
            people.add_person(s, OPERATOR, name, name.title(), f"{name}@example.org", roles=["reviewer"])
        projects.create_project(s, OPERATOR, LAB, "Lab", AUTHOR, "Study things.")
        projects.transition(s, OPERATOR, LAB, "approve", until=end_of_day((utcnow() + dt.timedelta(days=30)).date()))
        grants.set_grant(s, OPERATOR, LAB)
    plan = HubPlan()
    users = [AUTHOR, OTHER_SCHOLAR, *REVIEWERS, "stranger"]
    settings = ReviewSettings.for_home(
        home, db.url.render_as_string(hide_password=False), hub_api_url=plan.api_url,
        hub_api_token=plan.service_token, oauth_callback_url="/services/review/oauth_callback")
    with serve_review(settings, port=plan.review_port) as (url, app), hub_with_review(home / "hub", plan, users) as hub:
        for user in users:
            hub.add_user(user)
        yield Stack(hub, url, app, settings, db)
    db.dispose()


def _wait_for_review(stack: Stack, request_id: str, config: Config) -> dict:
    stack.app.state.review.worker.drain(timeout=120)
    status = client.export_status(request_id, config=config)
    assert status["state"] == "awaiting_review", status
    return status


def test_notebook_tokens_from_the_hub_are_scoped_and_the_registry_decides(stack, tmp_path):
    results = tmp_path / "results.csv"
    results.write_text("region,patients\nnorth,120\nsouth,85\n")
    receipt = client.export(results, justification="Counts by region for the paper", config=stack.config(AUTHOR))
    assert receipt["state"] == "submitted"
    # Through the hub's proxy (with the prefix) as well as directly.
    proxied = Config(token=stack.hub.token(AUTHOR, [SCOPE]), review_url=f"{stack.hub.url}/services/review")
    assert client.export_status(receipt["id"], config=proxied)["id"] == receipt["id"]
    with pytest.raises(EnclaveError, match="no scope for the review service"):
        client.exports(config=stack.config(AUTHOR, scopes=["read:users:name!user"]))
    with pytest.raises(EnclaveError, match="does not recognise"):
        client.exports(config=Config(token="f" * 32, review_url=stack.review_url))
    with pytest.raises(EnclaveError, match="not registered") as stranger:
        client.export(results, justification="x", config=stack.config("stranger"))
    assert stranger.value.code == "unknown_user"
    with pytest.raises(EnclaveError, match="no export"):
        client.export_status(receipt["id"], config=stack.config(OTHER_SCHOLAR))
    _wait_for_review(stack, receipt["id"], stack.config(AUTHOR))


def _login(browser, stack: Stack, user: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{stack.hub.url}/services/review/")
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(f"{stack.hub.url}/services/review/**")
    return context, page


@pytest.mark.chromium
@pytest.mark.slow
def test_a_reviewer_approves_in_the_browser_and_the_release_verifies(stack, tmp_path, chromium):
    table = tmp_path / "table2.csv"
    table.write_text("region,patients\nnorth,3\nsouth,85\n")
    note = tmp_path / "method.txt"
    note.write_text("Counts of patients by region <script>alert('x')</script>; questions to jane.doe@example.org.\n")
    author = stack.config(AUTHOR)
    receipt = client.export([table, note], justification="Table 2 <b>bold</b>", config=author)
    status = _wait_for_review(stack, receipt["id"], author)
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    # The author sees the state and no decision form; another scholar sees nothing.
    _, page = _login(chromium, stack, AUTHOR)
    page.goto(f"{stack.hub.url}/services/review/requests/{receipt['id']}")
    assert page.locator("button.approve").count() == 0 and "awaiting review" in page.content()
    _, other = _login(chromium, stack, OTHER_SCHOLAR)
    assert other.goto(f"{stack.hub.url}/services/review/requests/{receipt['id']}").status == 404

    approvals = 0
    for reviewer in REVIEWERS:
        context, page = _login(chromium, stack, reviewer)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.click(f"text={receipt['id']}")
        page.wait_for_selector("h1 >> text=Export")
        assert page.locator("pre.content").count() + page.locator("table.content-table").count() == 2
        # The checks' findings are marked where they are: the e-mail address in the text,
        # the small count in the table.
        assert page.locator("pre.content mark.sev-block").inner_text() == "jane.doe@example.org"
        assert page.locator("td.cell-block").inner_text() == "3"
        if approvals == 0:
            page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
        page.fill("#reason", "The address is the study's public contact; the count of 3 is a public statistic.")
        page.click("button.approve")
        page.wait_for_selector("p.flash")
        approvals += 1
        context.close()
        if client.export_status(receipt["id"], config=author)["state"] == "released":
            break
    assert dialogs == []  # no script from the export ever ran
    assert approvals == status["approvals_needed"]
    final = client.export_status(receipt["id"], config=author)
    assert final["state"] == "released"
    key = tmp_path / "published.pub"
    key.write_bytes(httpx.get(f"{stack.hub.url}/services/review/api/release-key").content)
    result = verify(stack.settings.release_dir / LAB / receipt["id"] / "manifest.json", key)
    assert result.ok, result.problems
    assert result.manifest["approved_by"] == list(REVIEWERS[:approvals])
    assert result.manifest["policy"]["sha256"] and result.manifest["policy"]["version"]
    assert (ARTIFACTS / "review-page.png").stat().st_size > 10_000
