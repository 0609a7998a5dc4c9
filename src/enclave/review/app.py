"""The review service: a JSON API for submissions (notebooks; `routes_api`) and the reviewer web UI
(browsers; `routes_pages`), with one error handler (`http_errors`).

It is a JupyterHub service, served by the hub's proxy under `/services/review/` (every route lives
below `settings.base_url`); notebooks may also call it directly, without the prefix, and their API
calls are routed as if it were there.

The service's parts (registry engine, quarantine, signing key, browser sessions, hub identity and
login, check worker, templates) are made once at start-up into `app.state.review`; routes get them,
and the caller, through `Depends` (`deps`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from enclave.registry.db import check_schema, make_engine, session_scope
from enclave.review import routes_api, routes_pages, service
from enclave.review.deps import Identity, ReviewState
from enclave.review.http_errors import install_error_handlers
from enclave.review.quarantine import Quarantine
from enclave.review.release import load_or_create_key
from enclave.review.settings import ReviewSettings
from enclave.review.worker import CheckWorker, Scanner
from enclave.web.browser_session import BrowserSessions, Signer, load_or_create_secret
from enclave.web.hub_auth import HubIdentity, HubLogin

log = logging.getLogger("enclave.review")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SESSION_COOKIE_PREFIX = "enclave-review"  # cookies enclave-review-session and enclave-review-oauth-state


def create_app(settings: ReviewSettings, *, scanner: Scanner | None = None, identity: Identity | None = None,
               login: HubLogin | None = None) -> FastAPI:
    """The review app. `scanner` replaces the scan pipeline, `identity` the hub's token check and
    `login` the hub's OAuth login (tests); by default both come from the hub the settings name."""
    if settings.scorer_model_dir:
        # The review service scores in-process from a read-only model directory
        # (ENCLAVE_REVIEW_SCORER_MODEL), so it must never try the model hub; the scan library sets
        # nothing itself. (The gateway scorer is for a host without torch.)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _start(settings, scanner, identity, login)
        app.state.review = state
        state.worker.recover()
        with session_scope(state.engine) as session:
            stuck = service.approved_unreleased(session)
        for request_id in stuck:
            await run_in_threadpool(state.release_if_approved, request_id)
        try:
            yield
        finally:
            state.worker.close()
            state.engine.dispose()

    prefix = settings.prefix
    app = FastAPI(title="Model Enclave output review", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=f"{prefix}/api/openapi.json")
    _install_middleware(app, prefix)
    install_error_handlers(app, prefix)
    app.include_router(routes_api.router, prefix=prefix)
    app.include_router(routes_pages.router, prefix=prefix)
    return app


def _start(settings: ReviewSettings, scanner: Scanner | None, identity: Identity | None,
           login: HubLogin | None) -> ReviewState:
    engine = make_engine(settings.db_url)
    check_schema(engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    quarantine.sweep_tmp()
    # Blobs a crash left between storing an upload and recording its export (`enclave review gc`
    # does the same while the service runs).
    collected = service.collect_orphans(engine, quarantine, settings.orphan_grace_s)
    if collected.removed:
        log.info("removed %d unreferenced quarantine blob(s), %d bytes", len(collected.removed), collected.bytes)
    if settings.hub_api_url:
        identity = identity or HubIdentity(settings.hub_api_url, settings.service_name, cache_seconds=60)
        login = login or HubLogin(api_url=settings.hub_api_url, api_token=settings.hub_api_token,
                                  service_name=settings.service_name, base_url=settings.base_url,
                                  oauth_client_id=settings.oauth_client_id, callback_url=settings.oauth_callback_url,
                                  authorize_url=settings.oauth_authorize_url)
    sessions = BrowserSessions(Signer(load_or_create_secret(settings.cookie_secret_file)),
                               cookie_prefix=SESSION_COOKIE_PREFIX, path=settings.base_url,
                               max_age_s=settings.session_max_age_s)
    return ReviewState(settings=settings, engine=engine, quarantine=quarantine,
                       signing_key=load_or_create_key(settings.signing_key_file), sessions=sessions,
                       identity=identity, login=login, worker=CheckWorker(engine, settings, quarantine, scanner),
                       templates=routes_pages.load_templates())


def _install_middleware(app: FastAPI, prefix: str) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path != prefix + routes_pages.STYLESHEET:
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    if prefix:
        inner = app.build_middleware_stack

        # A notebook may call the service directly (http://review:8002/api/...) rather than through
        # the hub's proxy, which keeps the /services/review prefix: route those calls as if it were there.
        class PrefixApiCalls:
            def __init__(self, asgi):
                self.asgi = asgi

            async def __call__(self, scope, receive, send):
                if scope["type"] == "http" and (scope["path"].startswith("/api/") or scope["path"] == "/healthz"):
                    scope = dict(scope, path=prefix + scope["path"], raw_path=(prefix + scope["path"]).encode())
                await self.asgi(scope, receive, send)

        app.build_middleware_stack = lambda: PrefixApiCalls(inner())  # type: ignore[method-assign]


def serve_review(host: str = "127.0.0.1", port: int = 8002, settings: ReviewSettings | None = None) -> None:
    """Run the review service until interrupted (`enclave serve review`). Settings come from the
    environment (JupyterHub passes JUPYTERHUB_* to the services it manages), read once here."""
    import uvicorn

    settings = settings or ReviewSettings.from_env()  # a SettingsError is a UserError: one line from `enclave`
    db = make_engine(settings.db_url)
    try:
        check_schema(db)  # refuse to start on a registry that is missing or behind
    finally:
        db.dispose()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
