"""How the gateway answers when a call does not succeed: always JSON `{"error": code, "message": ...}`.

A `UserError` (bad input, unknown or unauthorised caller, an exhausted grant, a busy engine, a
registry that is down) takes its status, code and headers from the one table in
`enclave.web.errors`; a refusal of the caller (401, 402, 403, 429) is also counted for the audit
log (`refusals`). Besides those there are only: a body that fails validation (422), a client
that went away mid-call (499, which nobody reads but the log), and a bug (500, never with detail:
no traceback reaches a scholar; the server log keeps it).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from enclave.errors import UserError
from enclave.gateway import refusals
from enclave.web.errors import refusal

log = logging.getLogger("enclave.gateway")


class ClientGone(Exception):
    """The HTTP client disconnected while its call was running."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def user_error(request: Request, exc: UserError) -> JSONResponse:
    answer = refusal(exc)
    state = getattr(request.app.state, "gateway", None)
    if state is not None and refusals.is_refusal(exc):
        state.refused(request, exc, answer.status)
    return JSONResponse(answer.body(), status_code=answer.status, headers=answer.headers)


async def client_gone(_request: Request, _exc: ClientGone) -> JSONResponse:
    return _error(499, "client_closed_request", "the client went away")


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
    return _error(422, "invalid_request", problems)


async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    log.exception("internal error")
    return _error(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(ClientGone, client_gone)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
