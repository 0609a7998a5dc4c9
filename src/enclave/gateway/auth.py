"""Who is calling, and may they use the model now?

Identity comes from `Authorization: token ...` (or `Bearer ...`): an enclave API key from the
registry, or a JupyterHub token, which the shared `enclave.web.hub_auth.HubIdentity` resolves
through the hub's REST API and accepts only if it carries an explicit scope for this service
(`access:services!service=gateway`). Authorisation is then decided by the registry on every request
(`enclave.registry.access.resolve`), never from a cache, so a revocation bites on the very next call.
"""

from __future__ import annotations

import dataclasses

from sqlmodel import Session

from enclave.errors import AccessDenied, Unauthenticated
from enclave.registry import access, keys
from enclave.web.hub_auth import HubIdentity, bearer_token

KEY_PREFIX = keys.PREFIX


@dataclasses.dataclass(frozen=True)
class Caller:
    username: str
    via: str  # "api_key" or "hub"
    # An API key is bound to one project; a hub token is not.
    key_project: str | None = None


def identify(session: Session, header: str | None, hub: HubIdentity) -> Caller:
    """The caller behind an Authorization header (raises Unauthenticated)."""
    token = bearer_token(header)
    if token.startswith(KEY_PREFIX):
        try:
            person, project, _ = keys.authenticate(session, token)
        except AccessDenied as exc:
            raise Unauthenticated(exc.message) from None
        return Caller(username=person.username, via="api_key", key_project=project.slug)
    if not hub.api_url:
        raise Unauthenticated("not an enclave API key, and this gateway has no JupyterHub to ask about other tokens")
    return Caller(username=hub.username(token), via="hub")


def authorize(session: Session, caller: Caller, project_header: str | None) -> access.Access:
    """The registry's decision for this request (raises AccessDenied with a reason)."""
    slug = project_header.strip() if project_header and project_header.strip() else None
    if caller.key_project is not None:
        if slug is not None and slug != caller.key_project:
            raise AccessDenied(f"this API key belongs to project {caller.key_project!r}, not {slug!r}", "wrong_project")
        slug = caller.key_project
    return access.resolve(session, caller.username, slug)
