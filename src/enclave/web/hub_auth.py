"""Who is calling an enclave service: the one home of the security code that turns a request's
token into a user name, shared by the gateway and the review service.

JupyterHub is the identity provider. A request carries `Authorization: token <t>` (or `Bearer <t>`);
`HubIdentity` asks the hub (`GET {api_url}/user` with that token, as `HubAuth.user_for_token`
does) who it belongs to, and accepts it only if it is a user's token whose scopes include access to
*this* service (`access:services!service=<name>`, or the unrestricted `access:services`). HubAuth
treats an empty `access_scopes` as allow-all, which we never want, so we check ourselves.

Only the identity is cached (briefly, by token digest); what the user may do is decided by the
registry on every request, so a revocation bites at once.

Browsers log in with the hub's OAuth flow (`HubLogin`, a thin wrapper of
`jupyterhub.services.auth.HubOAuth`); the token that flow yields is checked by `HubIdentity` like
any other.
"""

from __future__ import annotations

import hashlib
import threading
import time

import httpx

from enclave.errors import Unauthenticated


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: token <t>` or `Bearer <t>` header."""
    if not header:
        raise Unauthenticated("missing Authorization header: send 'Authorization: token <your token>'")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise Unauthenticated("malformed Authorization header: use 'Authorization: token <your token>'")
    return value.strip()


def service_scopes(service_name: str) -> set[str]:
    """Scopes that let a token reach `service_name`."""
    return {f"access:services!service={service_name}", "access:services"}


class HubIdentity:
    """Hub tokens -> user names, for one service (`service_name`)."""

    def __init__(self, api_url: str | None, service_name: str, *, cache_seconds: float = 60.0, timeout: float = 5.0):
        self.api_url = api_url.rstrip("/") if api_url else None
        self.service_name = service_name
        self.required_scopes = service_scopes(service_name)
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def username(self, token: str) -> str:
        if not self.api_url:
            raise Unauthenticated(f"the {self.service_name} service has no JupyterHub to ask about this token")
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
        try:
            model = reply.json()
        except ValueError:
            raise Unauthenticated("JupyterHub's answer about this token was not JSON") from None
        if not isinstance(model, dict) or model.get("kind", "user") != "user" or not model.get("name"):
            raise Unauthenticated("this token does not belong to a user")
        if not self.required_scopes & set(model.get("scopes") or []):
            raise Unauthenticated(f"this token has no scope for the {self.service_name} service "
                                  f"(needs access:services!service={self.service_name})")
        with self._lock:
            if len(self._cache) > 10_000:  # tokens come and go; never grow without bound
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[digest] = (now + self.cache_seconds, model["name"])
        return model["name"]


class HubLogin:
    """The hub's OAuth login flow for a service's browser pages (needs the `jupyterhub` package,
    which the gateway's image does not carry, hence the imports inside)."""

    def __init__(self, *, api_url: str | None, api_token: str, service_name: str, base_url: str,
                 oauth_client_id: str, callback_url: str = "", authorize_url: str = ""):
        from jupyterhub.services.auth import HubOAuth

        kwargs = dict(api_url=api_url, api_token=api_token, base_url=base_url, oauth_client_id=oauth_client_id,
                      access_scopes={f"access:services!service={service_name}"})
        if callback_url:
            kwargs["oauth_redirect_uri"] = callback_url
        if authorize_url:
            kwargs["oauth_authorization_url"] = authorize_url
        self.auth = HubOAuth(**kwargs)

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
