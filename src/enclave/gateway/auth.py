"""Who is calling, and may they use the model now?

Identity comes from `Authorization: token ...` (or `Bearer ...`): an enclave API key from the
registry, or a JupyterHub token, which we resolve through the hub's REST API and accept only if it
carries an explicit scope for this service (`access:services!service=gateway`). Authorisation is
then decided by the registry on every request (`enclave.registry.access.resolve`), never from a
cache, so a revocation bites on the very next call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time

import httpx
from sqlmodel import Session

from enclave.registry import access, keys
from enclave.errors import AccessDenied

KEY_PREFIX = keys.PREFIX


class Unauthenticated(Exception):
    """No credentials, or credentials nobody issued (HTTP 401)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True)
class Caller:
    username: str
    via: str  # "api_key" or "hub"
    # An API key is bound to one project; a hub token is not.
    key_project: str | None = None


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization header: send 'Authorization: token <your token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise Unauthenticated("malformed Authorization header: use 'Authorization: token <your token>'")
    return value.strip()


class HubIdentity:
    """Resolves JupyterHub tokens to user names through `GET {api_url}/user`.

    Only the identity is cached (briefly, by token digest), never the authorisation. A token is
    accepted only if its scopes include access to this service: HubAuth treats an empty
    `access_scopes` as allow-all, which we never want.
    """

    def __init__(self, api_url: str | None, service_name: str = "gateway", cache_seconds: float = 60.0,
                 timeout: float = 5.0):
        self.api_url = api_url.rstrip("/") if api_url else None
        self.required_scopes = {f"access:services!service={service_name}", "access:services"}
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def username(self, token: str) -> str:
        if not self.api_url:
            raise Unauthenticated("not an enclave API key, and this gateway has no JupyterHub to ask about other tokens")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
            if hit and hit[0] > now:
                return hit[1]
        try:
            reply = httpx.get(f"{self.api_url}/user", headers={"Authorization": f"token {token}"}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise Unauthenticated(f"could not reach JupyterHub to check the token ({exc.__class__.__name__})") from None
        if reply.status_code in (401, 403):
            raise Unauthenticated("JupyterHub does not recognise this token")
        if reply.status_code != 200:
            raise Unauthenticated(f"JupyterHub answered {reply.status_code} when asked about this token")
        model = reply.json()
        if model.get("kind", "user") != "user" or not model.get("name"):
            raise Unauthenticated("this token does not belong to a user")
        if not self.required_scopes & set(model.get("scopes") or []):
            raise Unauthenticated("this token has no scope for the gateway (needs access:services!service=gateway)")
        with self._lock:
            self._cache[digest] = (now + self.cache_seconds, model["name"])
        return model["name"]


def identify(session: Session, header: str | None, hub: HubIdentity) -> Caller:
    token = bearer_token(header)
    if token.startswith(KEY_PREFIX):
        try:
            person, project, _ = keys.authenticate(session, token)
        except AccessDenied as exc:
            raise Unauthenticated(exc.message) from None
        return Caller(username=person.username, via="api_key", key_project=project.slug)
    return Caller(username=hub.username(token), via="hub")


def authorize(session: Session, caller: Caller, project_header: str | None) -> access.Access:
    """The registry's decision for this request (raises AccessDenied with a reason)."""
    slug = project_header.strip() if project_header and project_header.strip() else None
    if caller.key_project is not None:
        if slug is not None and slug != caller.key_project:
            raise AccessDenied(f"this API key belongs to project {caller.key_project!r}, not {slug!r}", "wrong_project")
        slug = caller.key_project
    return access.resolve(session, caller.username, slug)
