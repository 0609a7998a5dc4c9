"""Browser sessions for an enclave service's web pages (the review UI today; the access service's
pages later): signed cookies, the OAuth login's state cookie, and CSRF tokens.

A browser logs in through the hub (`enclave.web.hub_auth.HubLogin`); the hub token that login
yields sits in a signed, HttpOnly, SameSite=Lax cookie under the service's own path, and is
checked with the hub (`HubIdentity`) on every page like any other token. The cookie's signature
and age are ours: a session ends `max_age_s` after login, whatever the token's own lifetime.

Forms carry a CSRF token derived from the session (HMAC of the session token under the service's
secret), so a page on another origin cannot make a logged-in user's browser act for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

# How long a login may take between leaving for the hub and coming back to the callback.
LOGIN_STATE_MAX_AGE_S = 600


def load_or_create_secret(path: Path) -> bytes:
    """32 random bytes kept in a 0600 file (created on first start), so sessions survive restarts."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked into place: a second process starting
        # at the same moment sees either no file or a complete one, never an empty one.
        staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            try:
                os.link(staging, path)
            except FileExistsError:
                pass  # another process won: use its secret
        finally:
            staging.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) < 32:
        raise ValueError(f"the cookie secret {path} is shorter than 32 bytes")
    return secret


class Signer:
    """HMAC-SHA256-signed cookie values bound to their cookie name and creation time."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.secret, "|".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()

    def sign(self, name: str, value: str, now: float | None = None) -> str:
        stamp = str(int(now if now is not None else time.time()))
        encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii")
        return f"{encoded}.{stamp}.{self._mac(name, encoded, stamp)}"

    def unsign(self, name: str, signed: str | None, max_age: float, now: float | None = None) -> str | None:
        if not signed:
            return None
        try:
            encoded, stamp, mac = signed.split(".")
            if not hmac.compare_digest(mac, self._mac(name, encoded, stamp)):
                return None
            if (now if now is not None else time.time()) - int(stamp) > max_age:
                return None
            return base64.urlsafe_b64decode(encoded.encode("ascii")).decode("utf-8")
        except (ValueError, UnicodeError):
            return None

    def csrf_token(self, session_token: str) -> str:
        """A per-session form token; a forged form cannot know it, and it changes at each login."""
        return self._mac("csrf", hashlib.sha256(session_token.encode("utf-8")).hexdigest())

    def check_csrf(self, session_token: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_token(session_token), given)


def is_local_page(url: str, prefix: str) -> bool:
    """Only the service's own pages are redirect targets after login (no open redirect)."""
    return bool(url) and url.startswith(f"{prefix}/") and not url.startswith("//") and "\\" not in url \
        and "://" not in url


class BrowserSessions:
    """The cookies of one service's browser pages, all under its `path`: `<cookie_prefix>-session`
    (the hub token) and `<cookie_prefix>-oauth-state` (a login in progress)."""

    def __init__(self, signer: Signer, *, cookie_prefix: str, path: str, max_age_s: int):
        self.signer = signer
        self.session_cookie = f"{cookie_prefix}-session"
        self.state_cookie = f"{cookie_prefix}-oauth-state"
        self.path = path
        self.max_age_s = max_age_s

    def token(self, request: Request) -> str | None:
        """The hub token of the browser's session, if it has a valid one that has not expired."""
        return self.signer.unsign(self.session_cookie, request.cookies.get(self.session_cookie), self.max_age_s)

    def begin_login(self, response: Response, request: Request, oauth_state: str) -> None:
        """Remember the OAuth state of a login this browser starts, to match it at the callback."""
        self._set(response, request, self.state_cookie, self.signer.sign(self.state_cookie, oauth_state),
                  LOGIN_STATE_MAX_AGE_S)

    def login_state(self, request: Request) -> str | None:
        return self.signer.unsign(self.state_cookie, request.cookies.get(self.state_cookie), LOGIN_STATE_MAX_AGE_S)

    def start(self, response: Response, request: Request, token: str) -> None:
        """The login is done: forget its state, keep the token."""
        response.delete_cookie(self.state_cookie, path=self.path)
        self._set(response, request, self.session_cookie, self.signer.sign(self.session_cookie, token), self.max_age_s)

    def end(self, response: Response) -> None:
        response.delete_cookie(self.session_cookie, path=self.path)

    def csrf_token(self, token: str) -> str:
        return self.signer.csrf_token(token)

    def check_csrf(self, token: str, given: str | None) -> bool:
        return self.signer.check_csrf(token, given)

    def _set(self, response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        # Secure whenever the browser reached us over HTTPS (directly or through the hub's proxy).
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(name, value, max_age=max_age, path=self.path, httponly=True, samesite="lax",
                            secure=secure)
