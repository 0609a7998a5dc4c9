"""The review service: a JSON API for submissions (notebooks) and the reviewer web UI (browsers).

It is a JupyterHub service, served by the hub's proxy under `/services/review/` (every route lives
below `settings.base_url`); notebooks may also call it directly, without the prefix, and their API
calls are routed as if it were there.

Submission: authenticate and ask the registry *before* reading the body, stream the multipart body
under the size caps into the quarantine, then record request + files + audit event in one
transaction and answer at once with the id; a background worker runs the checks.

The UI is server-rendered (Jinja2, autoescape on); exports are attacker-controlled, so every value
is escaped, responses carry a strict Content-Security-Policy (no scripts at all), and every form
carries a CSRF token. There is no route that returns a quarantined file's bytes to a scholar:
files leave only through release.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine as DbEngine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from enclave.registry import access
from enclave.registry.clock import iso
from enclave.registry.db import check_schema, make_engine, session_scope
from enclave.errors import UserError, BadInput, SettingsError, NotFound, Forbidden, AccessDenied, Conflict, Unavailable, DatabaseUnavailable
from enclave.registry.models import Role
from enclave.registry.people import find_person
from enclave.review import render, service
from enclave.registry.models import ExportState
from enclave.review.quarantine import Quarantine, QuarantineCorrupt, StagedFile, TooLarge
from enclave.review.release import key_id, load_or_create_key, public_pem
from enclave.review.settings import ReviewSettings
from enclave.review.web_auth import (
    SESSION_COOKIE, STATE_COOKIE, STATE_MAX_AGE_S, HubIdentity, Identity, Signer, Unauthenticated, bearer_token,
    load_or_create_secret,
)
from enclave.review.worker import CheckWorker, Scanner

log = logging.getLogger("enclave.review")
TEMPLATES = Path(__file__).parent / "templates"
MAX_FIELD_BYTES = 64 * 1024  # justification and context travel as form fields
FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and headers on top of the files' bytes
RECENT_ON_HOME = 100
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


class LoginNeeded(Exception):
    """A browser without a valid session: send it to the hub to log in."""


@dataclasses.dataclass
class ReviewState:
    """Everything a request handler needs, made once at start-up (no module-level state)."""

    settings: ReviewSettings
    db: DbEngine
    quarantine: Quarantine
    key: Any
    signer: Signer
    hub: Identity | None
    worker: CheckWorker
    templates: Environment

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        with session_scope(self.db) as session:
            return work(session)

    async def run(self, work: Callable[[Any], Any]) -> Any:
        return await run_in_threadpool(self.transaction, work)

    def release_if_approved(self, request_id: str) -> None:
        """Release follows the last approval at once. If it fails (a full disk, say) the request
        stays approved, and a restart or `enclave review release` retries."""
        try:
            service.release_request(self.db, self.quarantine, self.key, self.settings.release_dir, request_id)
        except Exception:
            log.exception("release of %s failed; it stays approved", request_id)


@dataclasses.dataclass(frozen=True)
class WebUser:
    username: str
    token: str
    roles: list[str]


class CommentBody(BaseModel):
    body: str = Field(min_length=1, max_length=service.MAX_COMMENT_CHARS)
    visibility: str = "public"


class DecisionBody(BaseModel):
    decision: str
    reason: str = Field(default="", max_length=service.MAX_COMMENT_CHARS)


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    env.filters["when"] = lambda value: (iso(value) or "")[:19].replace("T", " ") + " UTC" if isinstance(value, dt.datetime) else (value or "")
    return env


def create_app(settings: ReviewSettings, *, scanner: Scanner | None = None, identity: Identity | None = None) -> FastAPI:
    """The review app. `scanner` replaces the scan pipeline and `identity` the hub (tests only)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.db_url)
        check_schema(db)
        quarantine = Quarantine(settings.quarantine_dir).ensure()
        quarantine.sweep_tmp()
        hub = identity or (HubIdentity(settings) if settings.hub_api_url else None)
        worker = CheckWorker(db, settings, quarantine, scanner)
        state = ReviewState(settings=settings, db=db, quarantine=quarantine,
                            key=load_or_create_key(settings.signing_key_file),
                            signer=Signer(load_or_create_secret(settings.cookie_secret_file)),
                            hub=hub, worker=worker, templates=_templates())
        app.state.review = state
        worker.recover()
        with session_scope(db) as session:
            stuck = service.approved_unreleased(session)
        for request_id in stuck:
            await run_in_threadpool(state.release_if_approved, request_id)
        try:
            yield
        finally:
            worker.close()
            db.dispose()

    app = FastAPI(title="Model Enclave output review", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=f"{settings.prefix}/api/openapi.json")
    prefix = settings.prefix
    router = APIRouter(prefix=prefix)
    _install_middleware(app, prefix)
    _install_error_handlers(app, settings)

    def st(request: Request) -> ReviewState:
        return request.app.state.review

    # ----- JSON API: notebooks and tools, token-authenticated -------------------------------------

    def api_user(state: ReviewState, request: Request) -> str:
        if state.hub is None:
            raise Unauthenticated("this review service has no JupyterHub to check tokens with")
        return state.hub.username(bearer_token(request.headers.get("authorization")))

    def registered(session, username: str):
        person = find_person(session, username)
        if person is None:
            raise AccessDenied(f"{username!r} is not registered in the enclave", "unknown_user")
        return person

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/api/limits", summary="Size caps for one submission")
    async def limits() -> dict:
        return {"max_file_bytes": settings.max_file_bytes, "max_request_bytes": settings.max_request_bytes,
                "max_files": settings.max_files}

    @router.get("/api/release-key", summary="The public key that signs release manifests (PEM)")
    async def release_key(request: Request) -> Response:
        public = st(request).key.public_key()
        return PlainTextResponse(public_pem(public).decode("ascii"), media_type="application/x-pem-file",
                                 headers={"X-Key-Id": key_id(public)})

    @router.post("/api/exports", status_code=202, summary="Submit files for output review")
    async def submit_export(request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)
        project = (request.headers.get("x-enclave-project") or "").strip() or None
        # The registry decides before a single byte of the body is read.
        await state.run(lambda s: access.resolve(s, username, project))
        fields, staged = await read_upload(request, state)
        created = await state.run(lambda s: service.submit(
            s, username, project, staged, fields.get("justification", ""), fields.get("context", ""),
            max_files=settings.max_files))
        state.worker.enqueue(created.id)
        return {"id": created.id, "state": created.state, "version": created.version,
                "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in staged],
                "url": f"{prefix}/requests/{created.id}"}

    @router.post("/api/exports/{request_id}/resubmit", status_code=202, summary="New files after changes were requested")
    async def resubmit_export(request_id: str, request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)
        # Only the author of a request waiting for changes may upload to it.
        await state.run(lambda s: _check_resubmit(s, username, request_id))
        fields, staged = await read_upload(request, state)
        updated = await state.run(lambda s: service.resubmit(s, username, request_id, staged, fields.get("note", ""),
                                                             max_files=settings.max_files))
        state.worker.enqueue(updated.id)
        return {"id": updated.id, "state": updated.state, "version": updated.version}

    @router.get("/api/exports", summary="Your exports")
    async def list_exports(request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)

        def work(s):
            registered(s, username)
            return [r.to_json() for r in service.list_own(s, username)]

        return {"exports": await state.run(work)}

    @router.get("/api/exports/{request_id}", summary="One export: status, files, public comments")
    async def get_export(request_id: str, request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)

        def work(s):
            registered(s, username)
            return service.view(s, username, request_id).to_json()

        return await state.run(work)

    @router.post("/api/exports/{request_id}/withdraw", summary="Withdraw your export")
    async def withdraw_export(request_id: str, request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)
        done = await state.run(lambda s: service.withdraw(s, username, request_id))
        return {"id": done.id, "state": done.state}

    @router.post("/api/exports/{request_id}/comments", status_code=201, summary="Comment on an export")
    async def comment_export(request_id: str, body: CommentBody, request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)
        row = await state.run(lambda s: service.comment(s, username, request_id, body.body, body.visibility))
        return {"id": row.id, "visibility": row.visibility}

    @router.post("/api/exports/{request_id}/decision", summary="A reviewer's decision")
    async def decide_export(request_id: str, body: DecisionBody, request: Request) -> dict:
        state = st(request)
        username = await run_in_threadpool(api_user, state, request)
        result = await state.run(lambda s: service.decide(s, username, request_id, body.decision, body.reason))
        if result.approved:
            await run_in_threadpool(state.release_if_approved, request_id)
        final = await state.run(lambda s: service.get_request(s, request_id))
        return {"id": request_id, "state": final.state, "approvals": result.approvals, "needed": result.needed}

    # ----- the web UI: browsers, hub OAuth sessions ----------------------------------------------

    def web_user(request: Request) -> WebUser:
        state = st(request)
        token = state.signer.unsign(SESSION_COOKIE, request.cookies.get(SESSION_COOKIE), settings.session_max_age_s)
        if not token or state.hub is None:
            raise LoginNeeded()
        try:
            username = state.hub.username(token)
        except Unauthenticated:
            raise LoginNeeded() from None

        def work(s):
            person = find_person(s, username)
            if person is None:
                raise Forbidden(f"{username!r} is not registered in the enclave")
            return sorted(person.role_set)

        return WebUser(username, token, state.transaction(work))

    def check_csrf(request_user: WebUser, state: ReviewState, given: str | None) -> None:
        if not state.signer.check_csrf(request_user.token, given):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")

    def page(state: ReviewState, template: str, user: WebUser | None, status: int = 200, **values) -> HTMLResponse:
        html = state.templates.get_template(template).render(
            prefix=prefix, user=user, csrf=state.signer.csrf_token(user.token) if user else "", flash=values.pop("flash", ""),
            **values)
        return HTMLResponse(html, status_code=status)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        state, user = st(request), web_user(request)
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
        return page(state, "home.html", user, queue=queue, others=others, own=own, is_reviewer=is_reviewer,
                    is_scholar=Role.scholar.value in user.roles)

    @router.get("/requests/{request_id}", response_class=HTMLResponse, include_in_schema=False)
    def request_page(request_id: str, request: Request) -> HTMLResponse:
        state, user = st(request), web_user(request)
        shown = state.transaction(lambda s: service.view(s, user.username, request_id))
        previews, diffs = {}, []
        if shown.is_reviewer:
            # Only reviewers see the files' contents; authors see names, sizes and hashes.
            current = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.files}
            previews = {name: render.preview(name, data, shown.findings) for name, (_, data) in current.items()}
            if shown.previous_files:
                previous = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.previous_files}
                diffs = render.diff_files(previous, current)
        return page(state, "request.html", user, v=shown, r=shown.request, previews=previews, diffs=diffs,
                    flash=request.query_params.get("done", "")[:200])

    @router.post("/requests/{request_id}/decision", include_in_schema=False)
    def decision_form(request_id: str, request: Request, decision: str = Form(""), reason: str = Form(""),
                      csrf: str = Form("")) -> Response:
        state, user = st(request), web_user(request)
        check_csrf(user, state, csrf)
        result = state.transaction(lambda s: service.decide(s, user.username, request_id, decision, reason))
        if result.approved:
            state.release_if_approved(request_id)
        done = {"approve": f"approval recorded ({len(result.approvals)} of {result.needed})",
                "request_changes": "changes requested", "reject": "rejected"}.get(decision, "recorded")
        return _back(prefix, request_id, done)

    @router.post("/requests/{request_id}/comments", include_in_schema=False)
    def comment_form(request_id: str, request: Request, body: str = Form(""), visibility: str = Form("public"),
                     csrf: str = Form("")) -> Response:
        state, user = st(request), web_user(request)
        check_csrf(user, state, csrf)
        state.transaction(lambda s: service.comment(s, user.username, request_id, body, visibility))
        return _back(prefix, request_id, "comment added")

    @router.post("/requests/{request_id}/withdraw", include_in_schema=False)
    def withdraw_form(request_id: str, request: Request, csrf: str = Form("")) -> Response:
        state, user = st(request), web_user(request)
        check_csrf(user, state, csrf)
        state.transaction(lambda s: service.withdraw(s, user.username, request_id))
        return _back(prefix, request_id, "withdrawn")

    @router.get("/login", include_in_schema=False)
    def login(request: Request, next: str = "") -> Response:
        state = st(request)
        if not isinstance(state.hub, HubIdentity):
            raise DatabaseUnavailable("this review service has no JupyterHub to log in with")
        target = next if _local_path(next, prefix) else f"{prefix}/"
        url, oauth_state = state.hub.login_redirect(target)
        response = RedirectResponse(url, status_code=302)
        _set_cookie(response, request, STATE_COOKIE, state.signer.sign(STATE_COOKIE, oauth_state), settings,
                    max_age=STATE_MAX_AGE_S)
        return response

    @router.get("/oauth_callback", include_in_schema=False)
    def oauth_callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
        review = st(request)
        if error:
            raise Forbidden(f"the hub did not log you in: {error}")
        expected = review.signer.unsign(STATE_COOKIE, request.cookies.get(STATE_COOKIE), STATE_MAX_AGE_S)
        if not code or not state or expected != state or not isinstance(review.hub, HubIdentity):
            raise Forbidden("the login did not match one this browser started; log in again")
        token, next_url = review.hub.finish_login(code, state)
        review.hub.username(token)  # a token without our scope is refused here, not on the next page
        response = RedirectResponse(next_url if _local_path(next_url, prefix) else f"{prefix}/", status_code=302)
        response.delete_cookie(STATE_COOKIE, path=settings.base_url)
        _set_cookie(response, request, SESSION_COOKIE, review.signer.sign(SESSION_COOKIE, token), settings,
                    max_age=settings.session_max_age_s)
        return response

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")) -> Response:
        state, user = st(request), web_user(request)
        check_csrf(user, state, csrf)
        response = page(state, "error.html", None, heading="Logged out", message="You are logged out of the review service.",
                        status=200)
        response.delete_cookie(SESSION_COOKIE, path=settings.base_url)
        return response

    @router.get("/static/review.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response((TEMPLATES / "review.css").read_text(), media_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})

    async def read_upload(request: Request, state: ReviewState) -> tuple[dict[str, str], list[StagedFile]]:
        return await _read_upload(request, state, settings)

    app.include_router(router)
    return app


def _check_resubmit(session, username: str, request_id: str) -> None:
    from enclave.review.workflow import check_transition

    request = service.get_request(session, request_id)
    _, actor = service.standing(session, request, username)
    check_transition(request.id, ExportState(request.state), "resubmit", actor)


def _back(prefix: str, request_id: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{prefix}/requests/{request_id}?done={quote(done)}", status_code=303)


def _local_path(url: str, prefix: str) -> bool:
    """Only our own pages are redirect targets after login (no open redirect)."""
    return bool(url) and url.startswith(f"{prefix}/") and not url.startswith("//") and "\\" not in url \
        and "://" not in url


def _set_cookie(response: Response, request: Request, name: str, value: str, settings: ReviewSettings,
                max_age: int) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(name, value, max_age=max_age, path=settings.base_url, httponly=True, samesite="lax",
                        secure=secure)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(f"the upload is larger than the cap of {limit} bytes per export")
        yield chunk


async def _read_upload(request: Request, state: ReviewState, settings: ReviewSettings) -> tuple[dict[str, str], list[StagedFile]]:
    """Parse a multipart upload under the caps and put every file in the quarantine."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise _HttpRefusal(415, "unsupported_media_type", "send the files as multipart/form-data")
    cap = settings.max_request_bytes + FORM_OVERHEAD_BYTES
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadInput("bad Content-Length")
        if int(length) > cap:
            raise TooLarge(f"the upload is {int(length)} bytes; an export may carry at most "
                           f"{settings.max_request_bytes} bytes")
    parser = MultiPartParser(request.headers, _limited(request.stream(), cap), max_files=settings.max_files,
                             max_fields=8, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadInput(f"bad upload: {exc.message}") from None
    try:
        fields: dict[str, str] = {}
        uploads: list[UploadFile] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "files":
                    raise BadInput(f"unexpected file field {name!r}: send files as 'files'")
                uploads.append(value)
            elif name in ("justification", "context", "note"):
                fields[name] = value
            else:
                raise BadInput(f"unexpected form field {name[:40]!r}")
        total = 0
        for upload in uploads:
            size = upload.size or 0
            if size > settings.max_file_bytes:
                raise TooLarge(f"{upload.filename!r} is {size} bytes; the cap per file is {settings.max_file_bytes} bytes")
            total += size
        if total > settings.max_request_bytes:
            raise TooLarge(f"the files add up to {total} bytes; the cap per export is {settings.max_request_bytes} bytes")
        staged = []
        for upload in uploads:
            if not upload.filename:
                raise BadInput("a file was sent without a file name")
            sha, size = await run_in_threadpool(state.quarantine.put_file, upload.file, limit=settings.max_file_bytes)
            staged.append(StagedFile(upload.filename, sha, size))
        return fields, staged
    finally:
        await form.close()


class _HttpRefusal(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _install_middleware(app: FastAPI, prefix: str) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path != f"{prefix}/static/review.css":
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


def _install_error_handlers(app: FastAPI, settings: ReviewSettings) -> None:
    prefix = settings.prefix

    def is_api(request: Request) -> bool:
        return request.url.path.startswith(f"{prefix}/api/") or request.url.path == f"{prefix}/healthz"

    def refuse(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> Response:
        if is_api(request):
            return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
        state: ReviewState | None = getattr(request.app.state, "review", None)
        headings = {400: "That did not work", 401: "Please log in", 403: "Not allowed", 404: "Not found",
                    409: "Not possible now", 413: "Too large", 503: "Unavailable"}
        if state is None:
            return PlainTextResponse(message, status_code=status)
        html = state.templates.get_template("error.html").render(
            prefix=prefix, user=None, csrf="", flash="", status=status, heading=headings.get(status, "Error"),
            message=message)
        return HTMLResponse(html, status_code=status, headers=headers)

    @app.exception_handler(LoginNeeded)
    async def login_needed(request: Request, _exc: LoginNeeded):
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{prefix}/login?next={quote(target)}", status_code=303)
        return refuse(request, 401, "unauthenticated", "your session has ended: log in again")

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated):
        return refuse(request, 401, "unauthenticated", exc.message, {"WWW-Authenticate": "token"})

    @app.exception_handler(AccessDenied)
    async def denied(request: Request, exc: AccessDenied):
        return refuse(request, 403, exc.reason, exc.message)

    # The service's own refusals: status, error code, extra headers. (Starlette picks the handler
    # of the most specific class, so UserError only catches what nothing above it names.)
    def refusal_for(status: int, code: str, headers: dict | None = None):
        async def handle(request: Request, exc: UserError):
            return refuse(request, status, code, exc.message, headers)
        return handle

    for exc_class, status, code, headers in (
        (Forbidden, 403, "forbidden", None),
        (NotFound, 404, "not_found", None),
        (Conflict, 409, "conflict", None),
        (TooLarge, 413, "too_large", None),
        (DatabaseUnavailable, 503, "unavailable", {"Retry-After": "5"}),
        (UserError, 400, "bad_request", None),
    ):
        app.add_exception_handler(exc_class, refusal_for(status, code, headers))

    @app.exception_handler(_HttpRefusal)
    async def refusal(request: Request, exc: _HttpRefusal):
        return refuse(request, exc.status, exc.code, exc.message)

    @app.exception_handler(QuarantineCorrupt)
    async def corrupt(request: Request, exc: QuarantineCorrupt):
        log.error("quarantine damaged: %s", exc)
        return refuse(request, 500, "quarantine_damaged", "a quarantined file was changed on disk; an operator must look")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return refuse(request, 422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return refuse(request, exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error")
        return refuse(request, 500, "internal_error", "internal error")


def serve_review(host: str = "127.0.0.1", port: int = 8002, settings: ReviewSettings | None = None) -> None:
    """Run the review service until interrupted (`enclave serve review`). Settings come from the
    environment (JupyterHub passes JUPYTERHUB_* to the services it manages)."""
    import uvicorn

    from enclave.review.settings import SettingsError

    try:
        settings = settings or ReviewSettings.from_env()
    except SettingsError as exc:
        raise BadInput(str(exc)) from None  # one line from `enclave`, not a traceback
    db = make_engine(settings.db_url)
    try:
        check_schema(db)  # refuse to start on a registry that is missing or behind
    finally:
        db.dispose()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
