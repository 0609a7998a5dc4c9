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
from typing import Annotated, Any

from fastapi import Depends, Form, Request

from enclave.errors import AccessDenied, Unauthenticated
from enclave.registry.people import find_person
from enclave.review import service
from enclave.review.quarantine import Quarantine
from enclave.review.settings import ReviewSettings
from enclave.review.worker import CheckWorker
from enclave.web.hub_auth import bearer_token
from enclave.web.oauth_pages import Identity, LoginNeeded, PagesState, WebUser as PagesUser, form_checked, session_user
from enclave.web.transactions import in_transaction_thread

log = logging.getLogger("enclave.review")


__all__ = ["ApiCaller", "BrowserUser", "FormUser", "Identity", "LoginNeeded", "ReviewState", "State", "WebUser",
           "api_caller", "form_user", "registered", "review_state", "web_user"]


@dataclasses.dataclass
class ReviewState(PagesState):
    """Everything a request handler needs, made once at start-up (no module-level state); the app
    keeps it as `app.state.review`. The pages' parts (settings, engine, browser sessions, hub
    identity and login, templates; `transaction` and `page`) come from `PagesState`."""

    settings: ReviewSettings
    quarantine: Quarantine
    signing_key: Any
    worker: CheckWorker

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
class WebUser(PagesUser):
    @property
    def login(self) -> service.ReviewerLogin:
        """How this user authenticated, for a decision (`service.decide`): a browser session that
        the hub's OAuth login began (`web_user` has just checked its cookie and token). Only the
        pages' form routes, behind the CSRF check, take decisions with it."""
        return service.ReviewerLogin(self.username, service.AuthMethod.hub_session, "review page")


def web_user(request: Request, state: State) -> WebUser:
    """The person behind a browser's session cookie, with their roles; LoginNeeded without one."""
    return session_user(request, state, WebUser)


BrowserUser = Annotated[WebUser, Depends(web_user)]


def form_user(user: BrowserUser, state: State, csrf: str = Form("")) -> WebUser:
    """A browser's user who posted one of our forms: its CSRF token must match the session."""
    return form_checked(user, state, csrf)


FormUser = Annotated[WebUser, Depends(form_user)]
