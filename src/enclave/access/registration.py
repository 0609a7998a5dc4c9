"""The one page of the access service that needs no login: someone without an account asks for
one with the `applicant` role. The request waits for an operator (`enclave registration confirm`);
until then it gives no role and no login (`enclave.registry.registrations`).

The same rules as the other pages (escaped text, the app's CSP, a CSRF token), with what an
anonymous page needs besides: the CSRF token is a double submit bound to a signed, HttpOnly,
SameSite=Strict cookie this page sets (there is no session to derive it from), the body is read
up to a small bound before anything is parsed, and the requests one service process accepts are
rate-limited, so neither the scrypt hashing nor the registry can be flooded."""

from __future__ import annotations

import secrets
import threading
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from enclave.access.deps import State
from enclave.errors import BadInput, Forbidden, RateLimited, TooLarge, UserError
from enclave.registry import registrations
from enclave.registry.credentials import MIN_LENGTH
from enclave.web.errors import refusal

router = APIRouter(include_in_schema=False)

COOKIE = "enclave-access-register"
COOKIE_MAX_AGE_S = 3600
MAX_BODY_BYTES = 8192
FIELDS = ("username", "name", "email", "affiliation")
# Registration requests one process accepts: a burst of this many, refilled at RATE_PER_S.
BURST, RATE_PER_S = 10, 10 / 60


class Bucket:
    """A token bucket: anonymous requests are few, so one bucket for the whole page is enough."""

    def __init__(self, burst: int, rate_per_s: float):
        self.burst, self.rate, self.level, self.at = burst, rate_per_s, float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
            if self.level < 1:
                raise RateLimited("too many registrations just now: try again in a minute",
                                  retry_after=int((1 - self.level) / self.rate) + 1)
            self.level -= 1


def _csrf_for(state, nonce: str) -> str:
    return state.sessions.signer.csrf_token(f"register:{nonce}")


def _form(state, *, status: int = 200, values: dict | None = None, message: str = "",
          headers: dict | None = None) -> HTMLResponse:
    """The form with a fresh double-submit pair: the nonce in a signed cookie, its HMAC in the form."""
    nonce = secrets.token_urlsafe(24)
    response = state.page("register.html", None, status=status, headers=headers, values=values or {},
                          message=message, done="", register_csrf=_csrf_for(state, nonce), min_length=MIN_LENGTH,
                          limits={"name": registrations.MAX_NAME, "email": registrations.MAX_EMAIL,
                                  "affiliation": registrations.MAX_AFFILIATION})
    response.set_cookie(COOKIE, state.sessions.signer.sign(COOKIE, nonce), max_age=COOKIE_MAX_AGE_S,
                        path=state.settings.base_url, httponly=True, samesite="strict")
    return response


def _check_csrf(request: Request, state, given: str) -> None:
    nonce = state.sessions.signer.unsign(COOKIE, request.cookies.get(COOKIE), COOKIE_MAX_AGE_S)
    if not nonce or not given or not secrets.compare_digest(_csrf_for(state, nonce), given):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")


async def _body(request: Request) -> dict[str, str]:
    """The posted form, read up to MAX_BODY_BYTES (a longer body is refused before parsing)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise BadInput("post the registration form")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise TooLarge("the form is too large")
    try:
        parsed = parse_qs(data.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise BadInput("the form could not be read") from None
    return {key: values[0] for key, values in parsed.items() if values}


@router.get("/register", response_class=HTMLResponse)
def register_page(state: State) -> HTMLResponse:
    return _form(state)


@router.post("/register")
async def register_form(request: Request, state: State) -> Response:
    form = await _body(request)
    _check_csrf(request, state, form.get("csrf", ""))
    _bucket(request).take()
    values = {name: form.get(name, "").strip() for name in FIELDS}
    password = form.get("password", "")
    try:
        if password != form.get("password_again", ""):
            raise BadInput("the two passwords differ")
        registrations.check_fields(values["username"], values["name"], values["email"], values["affiliation"],
                                   password)
        await run_in_threadpool(state.transaction, lambda s: registrations.request(
            s, values["username"], values["name"], values["email"], values["affiliation"], password))
    except UserError as exc:
        answer = refusal(exc)
        # The form again with what was typed (never the password) and why it was refused.
        return _form(state, status=answer.status, values=values, message=answer.message, headers=answer.headers)
    response = state.page("register.html", None, done=values["username"])
    response.delete_cookie(COOKIE, path=state.settings.base_url)  # one form, one request
    return response


def _bucket(request: Request) -> Bucket:
    """The app's bucket, made on first use (kept on the app, so each test app has its own)."""
    app_state = request.app.state
    bucket = getattr(app_state, "register_bucket", None)
    if bucket is None:
        bucket = app_state.register_bucket = Bucket(BURST, RATE_PER_S)
    return bucket
