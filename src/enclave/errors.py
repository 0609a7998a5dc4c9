"""The one family of errors for things a *user* did or met, as opposed to bugs.

Every layer raises these (the registry, the services, the CLI); each carries one line fit to show
to an operator, a reviewer or a scholar. The CLI prints the line and exits 2; each HTTP app turns
the class into a status in one table (`enclave.web.errors.STATUS`). Anything else that escapes is
a bug: a 500 with no detail for HTTP, a short message for the CLI (ENCLAVE_DEBUG=1 shows the trace).

    UserError
    ├── BadInput            malformed or out-of-range input (400)
    │   ├── SettingsError       a setting that cannot be used
    │   ├── TooLarge            more bytes than allowed (413)
    │   └── UnsupportedMediaType  a body in a format the endpoint does not take (415)
    ├── Unauthenticated     no credentials, or credentials nobody issued (401)
    ├── NotFound            an unknown person, project, dataset, key, request (404)
    ├── Refused             well-formed, but not allowed now (403)
    │   ├── Forbidden           the actor lacks the role
    │   ├── AccessDenied        a scholar may not use the enclave now (`reason` is a code)
    │   ├── QuotaExhausted      the grant has no more of what was asked for (402)
    │   ├── RateLimited         too many calls just now; `retry_after` seconds (429)
    │   └── Conflict            exists already, or contradicts the current state (409)
    │       └── InvalidTransition   a lifecycle move the state machine does not allow
    └── Unavailable         a part the request needs is down or not configured (503)
        └── DatabaseUnavailable

`code` is the machine-readable name an HTTP answer carries (`{"error": code, "message": ...}`);
a subclass or an instance may set its own.
"""

from __future__ import annotations


class UserError(Exception):
    """Something a user can understand and act on; `message` says what and, where it can, how."""

    code = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(UserError):
    """Malformed or out-of-range input: a bad date, an unreadable file, a malformed upload."""


class SettingsError(BadInput):
    """A setting that cannot be used; the message names the variable and what is wrong."""

    code = "bad_setting"


class TooLarge(BadInput):
    """More bytes (or files, or tokens) than one request may carry."""

    code = "too_large"


class UnsupportedMediaType(BadInput):
    """A body in a format the endpoint does not take (an upload that is not multipart/form-data)."""

    code = "unsupported_media_type"


class Unauthenticated(UserError):
    """No credentials, or credentials nobody issued (HTTP 401, or a login page for a browser)."""

    code = "unauthenticated"


class NotFound(UserError):
    """An unknown person, project, dataset, key or request."""

    code = "not_found"


class Refused(UserError):
    """Well-formed, but not allowed now."""

    code = "refused"


class Forbidden(Refused):
    """The acting person lacks the role the operation needs."""

    code = "forbidden"


class AccessDenied(Refused):
    """A scholar may not use the enclave right now; `reason` (also the `code`) says why in a word."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason
        self.code = reason


class QuotaExhausted(Refused):
    """The grant has no more of what was asked for (tokens, privacy budget, export bytes)."""

    code = "quota_exhausted"


class RateLimited(Refused):
    """Too many calls just now; `retry_after` says how many seconds to wait."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Conflict(Refused):
    """The thing already exists, or the change contradicts the current state."""

    code = "conflict"


class InvalidTransition(Conflict):
    """A lifecycle move that the state machine does not allow from the current state."""


class Unavailable(UserError):
    """A part the request needs (the database, Docker, the hub, a model) is down or not configured."""

    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """The registry database cannot be reached or is not initialised."""
