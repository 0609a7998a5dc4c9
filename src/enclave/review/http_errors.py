"""How the review service answers when a request fails: one handler for the `UserError` family
(its status, code and headers come from the one table, `enclave.web.errors.refusal`), plus the
failures that are not user errors (a damaged quarantine, a malformed request, an unknown path, a
bug).

API calls get JSON (`{"error": code, "message": ...}`); browser pages get an HTML error page, and a
browser page asked for without a valid session goes to the hub's login instead.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclave.errors import UserError
from enclave.review.deps import LoginNeeded, ReviewState
from enclave.review.quarantine import QuarantineCorrupt
from enclave.web.errors import refusal

log = logging.getLogger("enclave.review")

HEADINGS = {400: "That did not work", 401: "Please log in", 403: "Not allowed", 404: "Not found",
            409: "Not possible now", 413: "Too large", 415: "Not a file upload", 503: "Unavailable"}
# Refusals by HTTP itself (no such route, wrong method) and their machine-readable codes.
HTTP_CODES = {404: "not_found"}


def install_error_handlers(app: FastAPI, prefix: str) -> None:
    def is_api(request: Request) -> bool:
        return request.url.path.startswith(f"{prefix}/api/") or request.url.path == f"{prefix}/healthz"

    def refuse(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> Response:
        if is_api(request):
            return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
        state: ReviewState | None = getattr(request.app.state, "review", None)
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
        return refuse(request, answer.status, answer.code, answer.message, answer.headers)

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
        return refuse(request, exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error")
        return refuse(request, 500, "internal_error", "internal error")
