"""Hub login passwords for the embedded setup. Deployments plug an upstream authenticator
(OAuth, LDAP) in instead and never store a password here.

scrypt (stdlib) with a per-password salt: slow enough to make an offline guess costly, and it
needs no extra dependency in the hub's environment."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from sqlmodel import Session

from enclave.registry import audit
from enclave.registry.clock import utcnow
from enclave.errors import BadInput
from enclave.registry.models import Credential
from enclave.registry.people import find_person, get_person, require_role

# RFC 7914's interactive-login parameters: 16 MiB and about 50 ms per check here.
_N, _R, _P = 2**14, 8, 1
MIN_LENGTH = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def generate_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 bits


def set_password(session: Session, actor: str, username: str, password: str | None = None) -> str:
    """Set (or reset) `username`'s hub password on an operator's authority; returns the password
    (generated when none is given) so the operator can hand it over once."""
    require_role(session, actor)
    person = get_person(session, username)
    if password is None:
        password = generate_password()
    if len(password) < MIN_LENGTH:
        raise BadInput(f"password too short: use at least {MIN_LENGTH} characters")
    credential = session.get(Credential, person.id)
    if credential is None:
        credential = Credential(person_id=person.id, password_hash="", set_by=actor)
    credential.password_hash = hash_password(password)
    credential.set_at = utcnow()
    credential.set_by = actor
    session.add(credential)
    # The event says that a password changed, never what it is.
    audit.append(session, actor=actor, action="person.password_set", subject=f"person:{username}", details={})
    return password


def set_password_hash(session: Session, actor: str, person_id: int, password_hash: str) -> None:
    """Give a person a hub password already hashed by `hash_password` (a confirmed self-registration,
    whose password the operator never sees); the caller checks the actor and writes the audit event."""
    if not password_hash.startswith("scrypt$"):
        raise BadInput("not a password hash this enclave made")
    session.add(Credential(person_id=person_id, password_hash=password_hash, set_at=utcnow(), set_by=actor))


def check_password(session: Session, username: str, password: str) -> bool:
    person = find_person(session, username)
    if person is None:
        hash_password(password)  # same cost whether or not the user exists: no user enumeration by timing
        return False
    credential = session.get(Credential, person.id)
    if credential is None:
        hash_password(password)
        return False
    return verify_password(password, credential.password_hash)
