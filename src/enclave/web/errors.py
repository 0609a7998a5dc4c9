"""The one table from the `enclave.errors` family to HTTP statuses, used by every HTTP app.

Each app installs one handler for `UserError` that asks `refusal(exc)` for the status, the
machine-readable code and the headers, and renders them its own way (JSON for the gateway; JSON or
an HTML page for the review service). Anything that is not a `UserError` is a bug: a 500 with no
detail, the traceback in the server's log only.
"""

from __future__ import annotations

import dataclasses
import math

from enclave.errors import (
    AccessDenied, BadInput, Conflict, Forbidden, NotFound, QuotaExhausted, RateLimited, Refused, TooLarge,
    Unauthenticated, Unavailable, UnsupportedMediaType, UserError,
)

# Most specific first: the first class the error is an instance of decides.
STATUS: tuple[tuple[type[UserError], int], ...] = (
    (Unauthenticated, 401),
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (BadInput, 400),
    (NotFound, 404),
    (QuotaExhausted, 402),
    (RateLimited, 429),
    (Conflict, 409),
    (AccessDenied, 403),
    (Forbidden, 403),
    (Refused, 403),
    (Unavailable, 503),
    (UserError, 400),
)


@dataclasses.dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


def status_of(exc: UserError) -> int:
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def refusal(exc: UserError) -> Refusal:
    """Status, code, message and headers for a user error (Retry-After where waiting helps,
    WWW-Authenticate for a missing or unknown token)."""
    status = status_of(exc)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(max(1, int(math.ceil(retry_after))))
    elif status == 503:
        headers["Retry-After"] = "5"
    if status == 401:
        headers["WWW-Authenticate"] = "token"
    return Refusal(status, exc.code, exc.message, headers or None)
