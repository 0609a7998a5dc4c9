"""Configuration from the notebook's environment, and one way to make a request and read errors."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import httpx


class EnclaveError(Exception):
    """A refused or failed call; the message says why (the service's own words where it gave any)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


@dataclasses.dataclass(frozen=True)
class Config:
    token: str | None = None
    gateway_url: str | None = None
    review_url: str | None = None
    privacy_url: str | None = None
    project: str | None = None
    timeout: float = 300.0

    @classmethod
    def from_env(cls) -> "Config":
        return cls(
            token=os.environ.get("JUPYTERHUB_API_TOKEN") or None,
            gateway_url=os.environ.get("ENCLAVE_GATEWAY_URL") or None,
            review_url=os.environ.get("ENCLAVE_REVIEW_URL") or None,
            privacy_url=os.environ.get("ENCLAVE_PRIVACY_URL") or None,
            project=os.environ.get("ENCLAVE_PROJECT") or None,
        )

    def headers(self) -> dict[str, str]:
        if not self.token:
            raise EnclaveError("JUPYTERHUB_API_TOKEN is not set: run this in an enclave notebook (or set it)")
        headers = {"Authorization": f"token {self.token}"}
        if self.project:
            headers["X-Enclave-Project"] = self.project
        return headers

    def url(self, service: str, path: str) -> str:
        var = _URL_VARIABLES[service]
        # The privacy service came later: a Config made without its URL still finds it in the environment.
        base = getattr(self, f"{service}_url") or (os.environ.get(var) if service == "privacy" else None)
        if not base:
            raise EnclaveError(f"{var} is not set: the enclave's notebook environment provides it")
        return base.rstrip("/") + path


_URL_VARIABLES = {"gateway": "ENCLAVE_GATEWAY_URL", "review": "ENCLAVE_REVIEW_URL", "privacy": "ENCLAVE_PRIVACY_URL"}
# What errors call each service.
_LABELS = {"privacy": "privacy service"}


def call(config: Config | None, service: str, method: str, path: str, **kwargs: Any) -> Any:
    """One request; returns the decoded JSON body, or raises EnclaveError with the service's reason."""
    config = config or Config.from_env()
    url = config.url(service, path)
    label = _LABELS.get(service, service)
    headers = {**config.headers(), **kwargs.pop("headers", {})}
    try:
        reply = httpx.request(method, url, headers=headers, timeout=kwargs.pop("timeout", config.timeout), **kwargs)
    except httpx.TimeoutException:
        raise EnclaveError(f"the {label} did not answer in time ({url})") from None
    except httpx.HTTPError as exc:
        raise EnclaveError(f"cannot reach the {label} at {url} ({exc.__class__.__name__})") from None
    return decode(reply, label)


def decode(reply: httpx.Response, service: str) -> Any:
    try:
        body = reply.json()
    except ValueError:
        body = None
    if reply.is_success:
        if body is None:
            raise EnclaveError(f"the {service} sent a reply that is not JSON (HTTP {reply.status_code})", reply.status_code)
        return body
    if isinstance(body, dict) and "message" in body:
        message, code = str(body["message"]), str(body.get("error") or "")
    else:
        message, code = f"HTTP {reply.status_code}: {reply.text[:200]}", None
    retry = reply.headers.get("Retry-After")
    if retry:
        message += f" (retry after {retry} s)"
    raise EnclaveError(f"{service} refused: {message}", reply.status_code, code)
