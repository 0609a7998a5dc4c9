"""People: the registry's view of JupyterHub users and the roles they hold."""

from __future__ import annotations

import re

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.errors import BadInput, NotFound, Forbidden, Conflict
from enclave.registry.models import Person, Role

# JupyterHub normalises names to lower case and puts them in URLs and container names.
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SYSTEM_ACTOR = "system"


def validate_username(username: str) -> str:
    if not USERNAME_RE.match(username or ""):
        raise BadInput(
            f"bad user name {username!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if username == SYSTEM_ACTOR:
        raise BadInput(f"{SYSTEM_ACTOR!r} is reserved for actions the enclave takes by itself")
    return username


def parse_roles(roles: list[str] | tuple[str, ...]) -> list[str]:
    valid = {r.value for r in Role}
    bad = [r for r in roles if r not in valid]
    if bad:
        raise BadInput(f"unknown role {bad[0]!r}: choose from {', '.join(sorted(valid))}")
    return sorted(set(roles))


def find_person(session: Session, username: str) -> Person | None:
    return session.exec(select(Person).where(Person.username == username)).first()


def get_person(session: Session, username: str) -> Person:
    person = find_person(session, username)
    if person is None:
        raise NotFound(f"unknown user {username!r}")
    return person


def require_role(session: Session, actor: str | None, role: Role = Role.operator) -> Person:
    """The acting person, provided they hold `role`; otherwise a clear refusal."""
    if not actor:
        raise Forbidden("who is acting? pass --as USER or set ENCLAVE_OPERATOR")
    person = find_person(session, actor)
    if person is None:
        raise Forbidden(f"unknown acting user {actor!r}")
    if not person.has_role(role):
        raise Forbidden(f"{actor!r} does not hold the {role.value} role")
    return person


def add_person(
    session: Session,
    actor: str,
    username: str,
    name: str,
    email: str,
    affiliation: str = "",
    roles: list[str] | tuple[str, ...] = (Role.scholar.value,),
    *,
    bootstrap: bool = False,
) -> Person:
    """Register a person. `bootstrap` lets `enclave init` create the first operator, and only then."""
    if bootstrap:
        if operators_exist(session):
            raise Conflict("the registry already has an operator; add people with `enclave person add --as OPERATOR`")
    else:
        require_role(session, actor)
    validate_username(username)
    if not name.strip():
        raise BadInput("a person needs a name (--name)")
    if not EMAIL_RE.match(email or ""):
        raise BadInput(f"bad e-mail address {email!r}")
    role_list = parse_roles(roles)
    if not role_list:
        raise BadInput("a person needs at least one role")
    if find_person(session, username):
        raise Conflict(f"user {username!r} already exists")
    person = Person(username=username, name=name.strip(), email=email, affiliation=affiliation, roles=",".join(role_list))
    session.add(person)
    session.flush()
    audit.append(
        session,
        actor=username if bootstrap else actor,
        action="person.add",
        subject=f"person:{username}",
        details={"name": person.name, "email": email, "affiliation": affiliation, "roles": role_list},
    )
    return person


def set_roles(session: Session, actor: str, username: str, add: list[str], remove: list[str]) -> Person:
    require_role(session, actor)
    person = get_person(session, username)
    before = person.role_set
    after = (before | set(parse_roles(add))) - set(parse_roles(remove))
    if not after:
        raise BadInput(f"{username!r} would hold no role; a person needs at least one")
    if Role.operator.value in before and Role.operator.value not in after and _operator_count(session) <= 1:
        raise Conflict(f"{username!r} is the last operator; add another operator first")
    if after == before:
        return person
    person.roles = ",".join(sorted(after))
    session.add(person)
    audit.append(
        session, actor=actor, action="person.roles", subject=f"person:{username}",
        details={"before": sorted(before), "after": sorted(after)},
    )
    return person


def operators_exist(session: Session) -> bool:
    return _operator_count(session) > 0


def _operator_count(session: Session) -> int:
    return sum(1 for p in session.exec(select(Person)).all() if p.has_role(Role.operator))


def list_people(session: Session) -> list[Person]:
    return list(session.exec(select(Person).order_by(Person.username)).all())


def person_json(person: Person) -> dict:
    return {
        "username": person.username,
        "name": person.name,
        "email": person.email,
        "affiliation": person.affiliation,
        "roles": sorted(person.role_set),
    }
