"""Server-rendered pages whose users log in through the hub's OAuth, as the review UI and the access
pages do: the state such pages are given, who the browser's user is (session cookie -> hub token ->
registered person with their roles), the CSRF check of a posted form, and the login, OAuth callback
and logout routes.

Each service keeps its own FastAPI dependencies (`web_user`, `form_user`) as two-line wrappers
around `session_user` and `form_checked`, so its routes still say plainly what they are given; the
login routes come from `login_router`, mounted on the service's page router.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from sqlalchemy.engine import Engine

from enclave.errors import Forbidden, Unauthenticated, Unavailable
from enclave.registry.people import find_person
from enclave.web.browser_session import BrowserSessions, is_local_page
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
    """A browser's user, checked on this request: their hub token and their registry roles."""

    username: str
    token: str
    roles: list[str]

    def has(self, role: str) -> bool:
        return role in self.roles


class PagesSettings(Protocol):
    @property
    def prefix(self) -> str: ...


@dataclasses.dataclass
class PagesState:
    """What every page of a service needs, made once at start-up (no module-level state); each
    service's own state extends it."""

    settings: PagesSettings
    engine: Engine
    sessions: BrowserSessions
    identity: Identity | None  # None: no hub to check tokens with
    login: HubLogin | None  # None: no hub to log browsers in with
    templates: Environment

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        """`work(session)` as one short transaction (page routes are sync: FastAPI runs them on a
        worker thread, so the event loop never waits on the database)."""
        return in_transaction(self.engine, work)

    def page(self, template: str, user: WebUser | None, *, status: int = 200, headers: dict | None = None,
             flash: str = "", **values) -> HTMLResponse:
        """A page (Jinja2 with autoescape: every value a user or an export supplied is escaped)."""
        html = self.templates.get_template(template).render(
            prefix=self.settings.prefix, user=user, csrf=self.sessions.csrf_token(user.token) if user else "",
            flash=flash, status=status, **values)
        return HTMLResponse(html, status_code=status, headers=headers)


def session_user(request: Request, state: PagesState, user_class: type[WebUser] = WebUser, *,
                 unregistered_hint: str = "") -> WebUser:
    """The person behind a browser's session cookie, with their roles; LoginNeeded without a
    session the hub still honours, Forbidden for someone the hub knows but the registry does not
    (`unregistered_hint` says what to do about it)."""
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
            raise Forbidden(f"{username!r} is not registered in the enclave" + unregistered_hint)
        return sorted(person.role_set)

    return user_class(username, token, state.transaction(work))


def form_checked(user: WebUser, state: PagesState, csrf: str) -> WebUser:
    """A browser's user who posted one of our forms: its CSRF token must match the session."""
    if not state.sessions.check_csrf(user.token, csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return user


def login_router(state_dependency: Callable[[Request], PagesState], form_user: Callable[..., WebUser], *,
                 service: str, logged_out: str) -> APIRouter:
    """`GET /login` (to the hub, remembering a local page to come back to), `GET /oauth_callback`
    (the hub's answer: the token becomes the session cookie) and `POST /logout` (a form, so CSRF
    checked). `service` names the service in its refusal when there is no hub ("review service");
    `logged_out` is the page's message after logging out."""
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    def login(request: Request, next: str = "", host: PagesState = Depends(state_dependency)) -> Response:
        if host.login is None:
            raise Unavailable(f"this {service} has no JupyterHub to log in with")
        prefix = host.settings.prefix
        target = next if is_local_page(next, prefix) else f"{prefix}/"
        url, oauth_state = host.login.login_redirect(target)
        response = RedirectResponse(url, status_code=302)
        host.sessions.begin_login(response, request, oauth_state)
        return response

    @router.get("/oauth_callback")
    def oauth_callback(request: Request, code: str = "", state: str = "", error: str = "",
                       host: PagesState = Depends(state_dependency)) -> Response:
        if error:
            raise Forbidden(f"the hub did not log you in: {error}")
        expected = host.sessions.login_state(request)
        if not code or not state or expected != state or host.login is None or host.identity is None:
            raise Forbidden("the login did not match one this browser started; log in again")
        token, next_url = host.login.finish_login(code, state)
        host.identity.username(token)  # a token without our scope is refused here, not on the next page
        prefix = host.settings.prefix
        response = RedirectResponse(next_url if is_local_page(next_url, prefix) else f"{prefix}/", status_code=302)
        host.sessions.start(response, request, token)
        return response

    @router.post("/logout")
    def logout(host: PagesState = Depends(state_dependency), _user: WebUser = Depends(form_user)) -> Response:
        response = host.page("error.html", None, heading="Logged out", message=logged_out)
        host.sessions.end(response)
        return response

    return router
