"""One project per notebook session, for every service a notebook can call.

A request made with a notebook server's own hub token, or coming from a notebook container's
address on the enclave network (whatever token it carries: a personal token typed into the notebook
would otherwise act for any of the scholar's projects), belongs to that live session, and acts
for the session's project and person only. `X-Enclave-Project` can name that project or nothing;
naming another is refused. Anything else (a laptop script with a personal token, an API key) is
decided by the registry as before."""

from __future__ import annotations

import hashlib

from sqlmodel import Session

from enclave.errors import AccessDenied
from enclave.registry.models import Person, Project
from enclave.registry.sessions import bound_session


def token_digest(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def session_project(session: Session, username: str, requested: str | None, *, token: str | None,
                    address: str | None) -> str | None:
    """The project the request acts for: the bound session's, else `requested` (which may be None,
    for the registry to pick the person's only live project). Raises AccessDenied."""
    bound = bound_session(session, token_sha256=token_digest(token), address=address)
    if bound is None:
        return requested
    project = session.get(Project, bound.project_id).slug
    owner = session.get(Person, bound.person_id).username
    if owner != username:
        raise AccessDenied(f"this request comes from {owner}'s notebook session (project {project!r}); it cannot act "
                           f"for {username!r}", "wrong_session")
    if requested and requested != project:
        raise AccessDenied(f"this notebook session works for project {project!r}, not {requested!r}: one project per "
                           f"session (start a session for {requested!r} to work there)", "wrong_project")
    return project
