"""What the review service's routes are given (FastAPI `Depends`): the service's parts, made once
at start-up, short registry transactions, the caller (a notebook's token or a browser's session)
and the CSRF check of a browser's form.

Transactions are short and explicit (`state.run(work)`), not one session held for the whole
request: a write takes the registry's writer lock, an upload must not hold it while bytes stream
in, and release reads the decision that the request committed just before.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from sqlalchemy.engine import Engine

from enclave.errors import AccessDenied, Forbidden, Unauthenticated
from enclave.registry.people import find_person
from enclave.review import service
from enclave.review.quarantine import Quarantine
from enclave.review.settings import ReviewSettings
from enclave.review.worker import CheckWorker
from enclave.web.browser_session import BrowserSessions
from enclave.web.hub_auth import HubLogin, bearer_token
from enclave.web.transactions import in_transaction, in_transaction_thread

log = logging.getLogger("enclave.review")


class Identity(Protocol):
    """Hub tokens -> user names (`enclave.web.hub_auth.HubIdentity`; a stand-in in tests)."""

    def username(self, token: str) -> str: ...


class LoginNeeded(Unauthenticated):
    """A browser without a valid session: a page it asks for sends it to the hub to log in."""

    def __init__(self) -> None:
        super().__init__("your session has ended: log in again")


@dataclasses.dataclass
class ReviewState:
    """Everything a request handler needs, made once at start-up (no module-level state); the app
    keeps it as `app.state.review`."""

    settings: ReviewSettings
    engine: Engine
    quarantine: Quarantine
    signing_key: Any
    sessions: BrowserSessions
    identity: Identity | None  # None: no hub to check tokens with
    login: HubLogin | None  # None: no hub to log browsers in with
    worker: CheckWorker
    templates: Environment

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        return in_transaction(self.engine, work)

    async def run(self, work: Callable[[Any], Any]) -> Any:
        """`work(session)` as one transaction in a worker thread (see `enclave.web.transactions`)."""
        return await in_transaction_thread(self.engine, work)

    def release_if_approved(self, request_id: str) -> None:
        """Release follows the last approval at once. If it fails (a full disk, say) the request
        stays approved, and a restart or `enclave review release` retries."""
        try:
            service.release_request(self.engine, self.quarantine, self.signing_key, self.settings.release_dir, request_id)
        except Exception:
            log.exception("release of %s failed; it stays approved", request_id)

    def page(self, template: str, user: WebUser | None, *, status: int = 200, headers: dict | None = None,
             flash: str = "", **values) -> HTMLResponse:
        """A page of the reviewer UI (Jinja2, autoescaped: every value from an export is escaped)."""
        html = self.templates.get_template(template).render(
            prefix=self.settings.prefix, user=user, csrf=self.sessions.csrf_token(user.token) if user else "",
            flash=flash, status=status, **values)
        return HTMLResponse(html, status_code=status, headers=headers)


def review_state(request: Request) -> ReviewState:
    return request.app.state.review


State = Annotated[ReviewState, Depends(review_state)]


def api_caller(request: Request, state: State) -> str:
    """The user name behind a notebook's or tool's `Authorization: token ...` header."""
    if state.identity is None:
        raise Unauthenticated("this review service has no JupyterHub to check tokens with")
    return state.identity.username(bearer_token(request.headers.get("authorization")))


ApiCaller = Annotated[str, Depends(api_caller)]


def registered(session, username: str):
    """The caller's person row; someone the hub knows but the registry does not is refused."""
    person = find_person(session, username)
    if person is None:
        raise AccessDenied(f"{username!r} is not registered in the enclave", "unknown_user")
    return person


@dataclasses.dataclass(frozen=True)
class WebUser:
    username: str
    token: str
    roles: list[str]

    @property
    def login(self) -> service.ReviewerLogin:
        """How this user authenticated, for a decision (`service.decide`): a browser session that
        the hub's OAuth login began (`web_user` has just checked its cookie and token). Only the
        pages' form routes, behind the CSRF check, take decisions with it."""
        return service.ReviewerLogin(self.username, service.AuthMethod.hub_session, "review page")


def web_user(request: Request, state: State) -> WebUser:
    """The person behind a browser's session cookie, with their roles; LoginNeeded without one."""
    token = state.sessions.token(request)
    if not token or state.identity is None:
        raise LoginNeeded()
    try:
        username = state.identity.username(token)
    except Unauthenticated:
        raise LoginNeeded() from None

    def work(s):
        person = find_person(s, username)
        if person is None:
            raise Forbidden(f"{username!r} is not registered in the enclave")
        return sorted(person.role_set)

    return WebUser(username, token, state.transaction(work))


BrowserUser = Annotated[WebUser, Depends(web_user)]


def form_user(user: BrowserUser, state: State, csrf: str = Form("")) -> WebUser:
    """A browser's user who posted one of our forms: its CSRF token must match the session."""
    if not state.sessions.check_csrf(user.token, csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return user


FormUser = Annotated[WebUser, Depends(form_user)]
