"""API keys for the model gateway: per person and project, expiring, revocable, stored hashed.

A key reads `enk_<id>_<secret>`. The id is public (it names the key in the audit log and in
`enclave key revoke`); only SHA-256 of the secret is stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.registry.clock import iso, last_day, utcnow
from enclave.errors import BadInput, NotFound, AccessDenied, Conflict
from enclave.registry.lifecycle import require_live
from enclave.registry.models import ApiKey, Membership, Person, Project
from enclave.registry.people import get_person, require_role
from enclave.registry.projects import get_project

PREFIX = "enk_"
DEFAULT_LIFETIME = dt.timedelta(days=90)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def issue(
    session: Session, actor: str, username: str, slug: str, expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the plaintext, which is never stored or shown again."""
    now = now or utcnow()
    require_role(session, actor)
    person = get_person(session, username)
    project = get_project(session, slug)
    require_live(project, f"issue a key for {username!r}", now)
    if session.get(Membership, (project.id, person.id)) is None:
        raise BadInput(f"{username!r} is not a member of {slug!r}")
    if expires_at is None:
        expires_at = now + DEFAULT_LIFETIME
        if project.expires_at is not None:
            expires_at = min(expires_at, project.expires_at)
    if expires_at <= now:
        raise BadInput(f"the key's last day {last_day(expires_at)} is not in the future")
    if project.expires_at is not None and expires_at > project.expires_at:
        raise BadInput(f"a key cannot outlive its project: the last day of {slug!r} is {last_day(project.expires_at)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, person_id=person.id, project_id=project.id, secret_sha256=_digest(secret),
                 created_by=actor, created_at=now, expires_at=expires_at)
    session.add(row)
    session.flush()
    audit.append(session, actor=actor, action="key.issue", subject=f"key:{key_id}",
                 details={"user": username, "project": slug, "expires_at": iso(expires_at)})
    return row, f"{PREFIX}{key_id}_{secret}"


def revoke(session: Session, actor: str, key_id: str, now: dt.datetime | None = None) -> ApiKey:
    require_role(session, actor)
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"unknown key {key_id!r}")
    if row.revoked_at is not None:
        raise Conflict(f"key {key_id!r} was already revoked at {iso(row.revoked_at)}")
    row.revoked_at, row.revoked_by = now or utcnow(), actor
    session.add(row)
    audit.append(session, actor=actor, action="key.revoke", subject=f"key:{key_id}", details={})
    return row


def authenticate(session: Session, presented: str, now: dt.datetime | None = None) -> tuple[Person, Project, ApiKey]:
    """Who a presented key belongs to. Says nothing about whether the project is usable; the
    caller goes on to `access.resolve` so one set of rules decides."""
    now = now or utcnow()
    if not presented.startswith(PREFIX) or presented.count("_") < 2:
        raise AccessDenied("not an enclave API key", "bad_key")
    key_id, _, secret = presented[len(PREFIX):].partition("_")
    row = session.get(ApiKey, key_id)
    # Compare digests in constant time; an unknown id costs the same as a wrong secret.
    expected = row.secret_sha256 if row else "0" * 64
    if not hmac.compare_digest(expected, _digest(secret)) or row is None:
        raise AccessDenied("unknown or wrong API key", "bad_key")
    if row.revoked_at is not None:
        raise AccessDenied(f"API key {key_id} was revoked", "key_revoked")
    if row.expires_at <= now:
        raise AccessDenied(f"API key {key_id} expired at {iso(row.expires_at)}", "key_expired")
    return session.get(Person, row.person_id), session.get(Project, row.project_id), row


def list_keys(session: Session, username: str | None = None, slug: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if username:
        query = query.where(ApiKey.person_id == get_person(session, username).id)
    if slug:
        query = query.where(ApiKey.project_id == get_project(session, slug).id)
    return list(session.exec(query).all())


def key_json(session: Session, row: ApiKey, now: dt.datetime | None = None) -> dict:
    now = now or utcnow()
    state = "revoked" if row.revoked_at else ("expired" if row.expires_at <= now else "active")
    return {"id": row.id, "user": session.get(Person, row.person_id).username,
            "project": session.get(Project, row.project_id).slug, "state": state,
            "created_at": iso(row.created_at), "expires_at": iso(row.expires_at),
            "revoked_at": iso(row.revoked_at), "revoked_by": row.revoked_by}
