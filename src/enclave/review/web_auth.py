"""Who is calling the review service.

Two ways in, both ending at a JupyterHub token that the hub resolves to a user name:
- notebooks (`enclave.client.export`) send `Authorization: token <JUPYTERHUB_API_TOKEN>`;
- browsers log in through the hub with OAuth (`jupyterhub.services.auth.HubOAuth`: this service is
  a hub service with an OAuth client id and `/services/review/oauth_callback` as its redirect).
  The resulting token sits in a signed, HttpOnly, SameSite=Lax cookie.

A token counts only if its scopes include access to this service (`access:services!service=review`;
HubAuth would accept any token with empty `access_scopes`). The hub's answer about *who* a token
belongs to is cached briefly; *what they may do* is decided by the registry on every request.

Forms carry a CSRF token derived from the session (HMAC of the session token under the service's
secret), so a page on another origin cannot make a logged-in reviewer's browser approve anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

from enclave.review.settings import ReviewSettings

SESSION_COOKIE = "enclave-review-session"
STATE_COOKIE = "enclave-review-oauth-state"
STATE_MAX_AGE_S = 600


class Unauthenticated(Exception):
    """No credentials, or credentials the hub does not vouch for (401, or a login redirect)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Identity(Protocol):
    def username(self, token: str) -> str: ...


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization header: send 'Authorization: token <your JupyterHub token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise Unauthenticated("malformed Authorization header: use 'Authorization: token <your token>'")
    return value.strip()


class HubIdentity:
    """Tokens -> user names through the hub (`HubOAuth.user_for_token`), plus the OAuth login flow."""

    def __init__(self, settings: ReviewSettings, cache_seconds: int = 60):
        from jupyterhub.services.auth import HubOAuth

        self.service_name = settings.service_name
        self.required_scopes = {f"access:services!service={settings.service_name}", "access:services"}
        kwargs = dict(
            api_url=settings.hub_api_url, api_token=settings.hub_api_token, base_url=settings.base_url,
            oauth_client_id=settings.oauth_client_id,
            access_scopes={f"access:services!service={settings.service_name}"},
            cache_max_age=cache_seconds,
        )
        if settings.oauth_callback_url:
            kwargs["oauth_redirect_uri"] = settings.oauth_callback_url
        if settings.oauth_authorize_url:
            kwargs["oauth_authorization_url"] = settings.oauth_authorize_url
        self.auth = HubOAuth(**kwargs)

    def username(self, token: str) -> str:
        from tornado.web import HTTPError

        try:
            model = self.auth.user_for_token(token, sync=True)
        except HTTPError as exc:
            raise Unauthenticated(f"could not check the token with JupyterHub ({exc.log_message or exc.status_code})") from None
        if not model:
            raise Unauthenticated("JupyterHub does not recognise this token")
        if model.get("kind", "user") != "user" or not model.get("name"):
            raise Unauthenticated("this token does not belong to a user")
        if not self.required_scopes & set(model.get("scopes") or []):
            raise Unauthenticated(f"this token has no scope for the review service "
                                  f"(needs access:services!service={self.service_name})")
        return model["name"]

    def login_redirect(self, next_url: str) -> tuple[str, str]:
        """(URL of the hub's authorize page, OAuth state id to keep in a cookie)."""
        from tornado.httputil import url_concat

        verifier, challenge, method = self.auth.generate_pkce_code_challenge()
        state = self.auth.generate_state(next_url, code_verifier=verifier)
        url = url_concat(self.auth.login_url, {"state": state, "code_challenge": challenge,
                                               "code_challenge_method": method})
        return url, state

    def finish_login(self, code: str, state: str) -> tuple[str, str]:
        """Trade the OAuth code for a token; returns (token, the page to go to next)."""
        from tornado.web import HTTPError

        next_url = self.auth.get_next_url(state)
        verifier = self.auth.get_code_verifier(state)
        self.auth.clear_oauth_state(state)
        try:
            token = self.auth.token_for_code(code, code_verifier=verifier, sync=True)
        except HTTPError as exc:
            raise Unauthenticated(f"the hub refused the login ({exc.log_message or exc.status_code}); try again") from None
        return token, next_url


def load_or_create_secret(path: Path) -> bytes:
    """32 random bytes kept in a 0600 file (created on first start), so sessions survive restarts."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
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
