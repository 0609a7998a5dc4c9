"""The reviewer web UI: server-rendered pages for browsers, logged in through the hub's OAuth.

Exports are attacker-controlled, so every value is escaped (Jinja2, autoescape on), responses carry
a strict Content-Security-Policy (no scripts at all), and every form carries a CSRF token. Only
reviewers see the files' contents; authors see names, sizes and hashes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from enclave.errors import Forbidden, Unavailable
from enclave.registry.clock import iso
from enclave.registry.models import ExportState, Role
from enclave.review import render, service
from enclave.review.deps import BrowserUser, FormUser, State
from enclave.review.workflow import TERMINAL
from enclave.web.browser_session import is_local_page

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = "/static/review.css"
RECENT_ON_HOME = 100

router = APIRouter(include_in_schema=False)


def load_templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    env.filters["when"] = lambda value: (iso(value) or "")[:19].replace("T", " ") + " UTC" if isinstance(value, dt.datetime) else (value or "")
    return env


def _back(prefix: str, request_id: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{prefix}/requests/{request_id}?done={quote(done)}", status_code=303)


@router.get("/", response_class=HTMLResponse)
def home(state: State, user: BrowserUser) -> HTMLResponse:
    is_reviewer = Role.reviewer.value in user.roles

    def work(s):
        own = service.list_own(s, user.username)
        if not is_reviewer:
            return [], [], own
        queue = service.review_queue(s, user.username)
        others = service.review_queue(s, user.username, [e.value for e in ExportState
                                                         if e is not ExportState.awaiting_review])
        # The most recent decisions and releases, for context; the queue is what needs work.
        return queue, sorted(others, key=lambda r: r.updated_at, reverse=True)[:RECENT_ON_HOME], own

    queue, others, own = state.transaction(work)
    return state.page("home.html", user, queue=queue, others=others, own=own, is_reviewer=is_reviewer,
                      is_scholar=Role.scholar.value in user.roles)


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request_id: str, request: Request, state: State, user: BrowserUser) -> HTMLResponse:
    shown = state.transaction(lambda s: service.view(s, user.username, request_id))
    previews, diffs = {}, []
    if shown.is_reviewer:
        current = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.files}
        previews = {name: render.preview(name, data, shown.findings) for name, (_, data) in current.items()}
        if shown.previous_files:
            previous = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.previous_files}
            diffs = render.diff_files(previous, current)
    return state.page("request.html", user, v=shown, r=shown.request, previews=previews, diffs=diffs,
                      flash=request.query_params.get("done", "")[:200],
                      comments_open=shown.state not in TERMINAL, max_comment_chars=state.settings.max_comment_chars)


@router.post("/requests/{request_id}/decision")
def decision_form(request_id: str, state: State, user: FormUser, decision: str = Form(""),
                  reason: str = Form(""), seen: list[str] = Form([]), version: str = Form("")) -> Response:
    # The form carries the sha256 of each file the page showed and the version it showed: a page
    # opened before a resubmission cannot approve files its reviewer never saw.
    shown = int(version) if version.isdigit() else None
    result = state.transaction(lambda s: service.decide(s, user.username, request_id, decision, reason,
                                                        seen=seen, seen_version=shown))
    if result.approved:
        state.release_if_approved(request_id)
    done = {"approve": f"approval recorded ({len(result.approvals)} of {result.needed})",
            "request_changes": "changes requested", "reject": "rejected"}.get(decision, "recorded")
    return _back(state.settings.prefix, request_id, done)


@router.post("/requests/{request_id}/comments")
def comment_form(request_id: str, state: State, user: FormUser, body: str = Form(""),
                 visibility: str = Form("public")) -> Response:
    state.transaction(lambda s: service.comment(s, user.username, request_id, body, visibility,
                                                max_comments=state.settings.max_comments,
                                                max_chars=state.settings.max_comment_chars))
    return _back(state.settings.prefix, request_id, "comment added")


@router.post("/requests/{request_id}/withdraw")
def withdraw_form(request_id: str, state: State, user: FormUser) -> Response:
    state.transaction(lambda s: service.withdraw(s, user.username, request_id))
    return _back(state.settings.prefix, request_id, "withdrawn")


@router.get("/login")
def login(request: Request, review: State, next: str = "") -> Response:
    if review.login is None:
        raise Unavailable("this review service has no JupyterHub to log in with")
    prefix = review.settings.prefix
    target = next if is_local_page(next, prefix) else f"{prefix}/"
    url, oauth_state = review.login.login_redirect(target)
    response = RedirectResponse(url, status_code=302)
    review.sessions.begin_login(response, request, oauth_state)
    return response


@router.get("/oauth_callback")
def oauth_callback(request: Request, review: State, code: str = "", state: str = "", error: str = "") -> Response:
    if error:
        raise Forbidden(f"the hub did not log you in: {error}")
    expected = review.sessions.login_state(request)
    if not code or not state or expected != state or review.login is None or review.identity is None:
        raise Forbidden("the login did not match one this browser started; log in again")
    token, next_url = review.login.finish_login(code, state)
    review.identity.username(token)  # a token without our scope is refused here, not on the next page
    prefix = review.settings.prefix
    response = RedirectResponse(next_url if is_local_page(next_url, prefix) else f"{prefix}/", status_code=302)
    review.sessions.start(response, request, token)
    return response


@router.post("/logout")
def logout(state: State, _user: FormUser) -> Response:
    response = state.page("error.html", None, heading="Logged out", message="You are logged out of the review service.")
    state.sessions.end(response)
    return response


@router.get(STYLESHEET)
async def stylesheet() -> Response:
    return Response((TEMPLATES / "review.css").read_text(), media_type="text/css",
                    headers={"Cache-Control": "max-age=3600"})
