"""What the access pages' routes are given (FastAPI `Depends`): the service's parts, made once at
start-up, short registry transactions, the browser's user (from the session cookie the hub's
OAuth login set) and the CSRF check of a posted form. The same shared parts as the review UI
(`enclave.web.oauth_pages`), wired the same way."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Form, Request

from enclave.access.settings import AccessSettings
from enclave.web.oauth_pages import Identity, LoginNeeded, PagesState, WebUser, form_checked, session_user

__all__ = ["AccessState", "BrowserUser", "FormUser", "Identity", "LoginNeeded", "State", "WebUser",
           "access_state", "form_user", "web_user"]


@dataclasses.dataclass
class AccessState(PagesState):
    """Everything a request handler needs, made once at start-up; the app keeps it as
    `app.state.access`."""

    settings: AccessSettings


def access_state(request: Request) -> AccessState:
    return request.app.state.access


State = Annotated[AccessState, Depends(access_state)]


def web_user(request: Request, state: State) -> WebUser:
    """The person behind a browser's session cookie, with their roles; LoginNeeded without one."""
    return session_user(request, state, unregistered_hint="; ask an operator for the applicant role")


BrowserUser = Annotated[WebUser, Depends(web_user)]


def form_user(user: BrowserUser, state: State, csrf: str = Form("")) -> WebUser:
    """A browser's user who posted one of our forms: its CSRF token must match the session."""
    return form_checked(user, state, csrf)


FormUser = Annotated[WebUser, Depends(form_user)]
