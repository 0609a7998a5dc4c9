"""The access service: web pages for applicants (apply, save drafts, submit, follow the decision)
and panel members (declare conflicts, open, score), served by the hub's proxy under
`/services/access/` and logged in through the hub's OAuth, like the review UI. Operators screen,
assign, rank and allocate with the `enclave` command.

The pages follow the review UI's rules: every value escaped (Jinja2 autoescape), a
Content-Security-Policy without scripts, a CSRF token on every form, the registry deciding on
every request (`enclave.registry.applications`, `panel`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclave.access import pages, registration
from enclave.access.deps import AccessState, Identity, LoginNeeded
from enclave.access.settings import AccessSettings
from enclave.errors import UserError
from enclave.registry.db import check_schema, make_engine
from enclave.web.browser_session import BrowserSessions, Signer, load_or_create_secret
from enclave.web.errors import refusal
from enclave.web.hub_auth import HubIdentity, HubLogin

log = logging.getLogger("enclave.access")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SESSION_COOKIE_PREFIX = "enclave-access"
HEADINGS = {400: "That did not work", 401: "Please log in", 403: "Not allowed", 404: "Not found",
            409: "Not possible now", 422: "That did not work", 503: "Unavailable"}


def create_app(settings: AccessSettings, *, identity: Identity | None = None, login: HubLogin | None = None) -> FastAPI:
    """The access app; `identity` and `login` replace the hub's (by default both come from the hub
    the settings name)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _start(settings, identity, login)
        app.state.access = state
        try:
            yield
        finally:
            state.engine.dispose()

    prefix = settings.prefix
    app = FastAPI(title="Model Enclave access by application", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    _install_middleware(app, prefix)
    _install_error_handlers(app, prefix)
    app.include_router(pages.router, prefix=prefix)
    app.include_router(registration.router, prefix=prefix)  # the one page without a login
    return app


def _start(settings: AccessSettings, identity: Identity | None, login: HubLogin | None) -> AccessState:
    engine = make_engine(settings.db_url)
    check_schema(engine)
    if settings.hub_api_url:
        identity = identity or HubIdentity(settings.hub_api_url, settings.service_name, cache_seconds=60)
        login = login or HubLogin(api_url=settings.hub_api_url, api_token=settings.hub_api_token,
                                  service_name=settings.service_name, base_url=settings.base_url,
                                  oauth_client_id=settings.oauth_client_id, callback_url=settings.oauth_callback_url,
                                  authorize_url=settings.oauth_authorize_url)
    sessions = BrowserSessions(Signer(load_or_create_secret(settings.cookie_secret_file)),
                               cookie_prefix=SESSION_COOKIE_PREFIX, path=settings.base_url,
                               max_age_s=settings.session_max_age_s)
    return AccessState(settings=settings, engine=engine, sessions=sessions, identity=identity, login=login,
                       templates=pages.load_templates())


def _install_middleware(app: FastAPI, prefix: str) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path != prefix + pages.STYLESHEET:
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _install_error_handlers(app: FastAPI, prefix: str) -> None:
    """One HTML error page for the `UserError` family (status from `enclave.web.errors`); a page
    asked for without a session goes to the hub's login; anything else is a bug: 500, no detail."""

    def refuse(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
        state: AccessState | None = getattr(request.app.state, "access", None)
        if state is None:
            return PlainTextResponse(message, status_code=status)
        return state.page("error.html", None, status=status, headers=headers, heading=HEADINGS.get(status, "Error"),
                          message=message)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        if isinstance(exc, LoginNeeded) and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{prefix}/login?next={quote(target)}", status_code=303)
        answer = refusal(exc)
        return refuse(request, answer.status, answer.message, answer.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return refuse(request, 422, problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return refuse(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error")
        return refuse(request, 500, "internal error")


def serve_access(host: str = "127.0.0.1", port: int = 8005, settings: AccessSettings | None = None) -> None:
    """Run the access service until interrupted (`enclave serve access`)."""
    import uvicorn

    settings = settings or AccessSettings.from_env()
    db = make_engine(settings.db_url)
    try:
        check_schema(db)  # refuse to start on a registry that is missing or behind
    finally:
        db.dispose()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
