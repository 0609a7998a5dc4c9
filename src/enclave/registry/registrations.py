"""Self-registration of applicants: anyone may ask, on the access service's public page, for an
account with the `applicant` role; an operator confirms or refuses (`enclave registration ...`).

A request holds the name, e-mail, affiliation and the scrypt hash of the password chosen (never
the password). It gives nothing: the hub and the services know only `person`, where the request
becomes a person with the applicant role, and that hash as their hub password, when confirmed.
Every field has a bound and the number of pending requests is capped, so an anonymous page cannot
fill the registry."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from enclave.errors import BadInput, Conflict, NotFound, Unavailable
from enclave.registry import audit
from enclave.registry.clock import iso
from enclave.registry.credentials import MIN_LENGTH, hash_password, set_password_hash
from enclave.registry.models import Registration, Role
from enclave.registry.people import EMAIL_RE, add_person, find_person, require_role, validate_username

MAX_NAME = 200
MAX_EMAIL = 254
MAX_AFFILIATION = 200
MAX_PASSWORD = 1024
MAX_REASON = 2000
# Past this many requests waiting, the page says to come back later instead of storing more.
MAX_PENDING = 500


def check_fields(username: str, name: str, email: str, affiliation: str, password: str) -> None:
    """Every bound, before anything is hashed or stored (scrypt is deliberately costly)."""
    validate_username(username)
    if not name.strip() or len(name) > MAX_NAME:
        raise BadInput(f"give your name (at most {MAX_NAME} characters)")
    if len(email) > MAX_EMAIL or not EMAIL_RE.match(email or ""):
        raise BadInput("give a valid e-mail address")
    if len(affiliation) > MAX_AFFILIATION:
        raise BadInput(f"the affiliation may be at most {MAX_AFFILIATION} characters")
    if len(password) < MIN_LENGTH or len(password) > MAX_PASSWORD:
        raise BadInput(f"choose a password of {MIN_LENGTH} to {MAX_PASSWORD} characters")


def _taken(session: Session, username: str) -> bool:
    return find_person(session, username) is not None or _pending(session, username) is not None


def _pending(session: Session, username: str) -> Registration | None:
    return session.exec(select(Registration).where(Registration.username == username)).first()


def request(session: Session, username: str, name: str, email: str, affiliation: str, password: str) -> Registration:
    """Record a pending registration; a user name already registered or pending is refused."""
    check_fields(username, name, email, affiliation, password)
    if _taken(session, username):
        raise Conflict(f"the user name {username!r} is taken: choose another")
    if session.exec(select(func.count()).select_from(Registration)).one() >= MAX_PENDING:
        raise Unavailable("too many registrations are waiting for an operator: try again later")
    row = Registration(username=username, name=name.strip(), email=email, affiliation=affiliation.strip(),
                       password_hash=hash_password(password))
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # The same name asked for at the same moment (PostgreSQL): the unique index decides.
        raise Conflict(f"the user name {username!r} is taken: choose another") from None
    audit.append(session, actor=username, action="registration.requested", subject=f"registration:{username}",
                 details={"name": row.name, "email": email, "affiliation": row.affiliation})
    return row


def list_pending(session: Session, actor: str) -> list[Registration]:
    require_role(session, actor)
    return list(session.exec(select(Registration).order_by(Registration.requested_at, Registration.id)).all())


def registration_json(row: Registration) -> dict:
    return {"username": row.username, "name": row.name, "email": row.email, "affiliation": row.affiliation,
            "requested_at": iso(row.requested_at)}


def _get(session: Session, username: str) -> Registration:
    row = _pending(session, username)
    if row is None:
        raise NotFound(f"no pending registration for {username!r}")
    return row


def confirm(session: Session, actor: str, username: str):
    """The person, created with the applicant role and the password they chose; the request goes."""
    require_role(session, actor)
    row = _get(session, username)
    if find_person(session, username) is not None:
        raise Conflict(f"user {username!r} already exists (added since the request): refuse the request instead")
    person = add_person(session, actor, username, row.name, row.email, row.affiliation, [Role.applicant.value])
    set_password_hash(session, actor, person.id, row.password_hash)
    session.delete(row)
    session.flush()
    audit.append(session, actor=actor, action="registration.confirmed", subject=f"person:{username}",
                 details={"roles": [Role.applicant.value]})
    return person


def refuse(session: Session, actor: str, username: str, reason: str) -> None:
    require_role(session, actor)
    if not reason.strip() or len(reason) > MAX_REASON:
        raise BadInput(f"give a reason (--reason, at most {MAX_REASON} characters)")
    row = _get(session, username)
    session.delete(row)
    session.flush()
    audit.append(session, actor=actor, action="registration.refused", subject=f"registration:{username}",
                 details={"reason": reason.strip(), "email": row.email})
