"""What the access pages' routes are given (FastAPI `Depends`): the service's parts, made once at
start-up, short registry transactions, the browser's user (from the session cookie the hub's
OAuth login set) and the CSRF check of a posted form. The same shared parts as the review UI
(`enclave.web`), wired the same way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from sqlalchemy.engine import Engine

from enclave.access.settings import AccessSettings
from enclave.errors import Forbidden, Unauthenticated
from enclave.registry.people import find_person
from enclave.web.browser_session import BrowserSessions
from enclave.web.hub_auth import HubLogin
from enclave.web.transactions import in_transaction


class Identity(Protocol):
    """Hub tokens -> user names (`enclave.web.hub_auth.HubIdentity`)."""

    def username(self, token: str) -> str: ...


class LoginNeeded(Unauthenticated):
    """A browser without a valid session: a page it asks for sends it to the hub to log in."""

    def __init__(self) -> None:
        super().__init__("your session has ended: log in again")


@dataclasses.dataclass(frozen=True)
class WebUser:
    username: str
    token: str
    roles: list[str]

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclasses.dataclass
class AccessState:
    """Everything a request handler needs, made once at start-up; the app keeps it as
    `app.state.access`."""

    settings: AccessSettings
    engine: Engine
    sessions: BrowserSessions
    identity: Identity | None
    login: HubLogin | None
    templates: Environment

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        """`work(session)` as one short transaction (the routes are sync: FastAPI runs them on a
        worker thread, so the event loop never waits on the database)."""
        return in_transaction(self.engine, work)

    def page(self, template: str, user: WebUser | None, *, status: int = 200, headers: dict | None = None,
             flash: str = "", **values) -> HTMLResponse:
        """A page (Jinja2 with autoescape: every applicant's and panel member's text is escaped)."""
        html = self.templates.get_template(template).render(
            prefix=self.settings.prefix, user=user, csrf=self.sessions.csrf_token(user.token) if user else "",
            flash=flash, status=status, **values)
        return HTMLResponse(html, status_code=status, headers=headers)


def access_state(request: Request) -> AccessState:
    return request.app.state.access


State = Annotated[AccessState, Depends(access_state)]


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
            raise Forbidden(f"{username!r} is not registered in the enclave; ask an operator for the applicant role")
        return sorted(person.role_set)

    return WebUser(username, token, state.transaction(work))


BrowserUser = Annotated[WebUser, Depends(web_user)]


def form_user(user: BrowserUser, state: State, csrf: str = Form("")) -> WebUser:
    """A browser's user who posted one of our forms: its CSRF token must match the session."""
    if not state.sessions.check_csrf(user.token, csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return user


FormUser = Annotated[WebUser, Depends(form_user)]
