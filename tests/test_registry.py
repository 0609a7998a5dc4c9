"""People, grants, datasets, keys and access decisions, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from enclave.registry import access, audit, datasets, grants, keys, people, projects, views
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope
from enclave.errors import UserError, NotFound, Forbidden, AccessDenied, Conflict
from enclave.registry.models import AuditEvent, Grant, Person

from tests.helpers import OPERATOR, add_scholar, approved_project


def _count(engine, model) -> int:
    with session_scope(engine) as s:
        return len(s.exec(select(model)).all())


def test_migrations_match_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == []


def test_people_and_roles(engine):
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "ana", "Ana", "ana@example.org", "Uni", ["scholar", "reviewer"])
    with session_scope(engine) as s:
        assert people.person_json(people.get_person(s, "ana"))["roles"] == ["reviewer", "scholar"]
    for bad in [dict(username="Bad Name"), dict(email="nope"), dict(roles=["wizard"]), dict(username="system"),
                dict(name="  ")]:
        args = dict(username="newbie", name="N", email="n@example.org", roles=["scholar"]) | bad
        with session_scope(engine) as s, pytest.raises(UserError):
            people.add_person(s, OPERATOR, args["username"], args["name"], args["email"], roles=args["roles"])
    with session_scope(engine) as s, pytest.raises(Conflict):
        people.add_person(s, OPERATOR, "ana", "Ana", "ana@example.org")
    with session_scope(engine) as s, pytest.raises(Forbidden, match="does not hold the operator role"):
        people.add_person(s, "ana", "eve", "Eve", "eve@example.org")
    with session_scope(engine) as s, pytest.raises(Conflict, match="already has an operator"):
        people.add_person(s, "mallory", "mallory", "M", "m@example.org", roles=["operator"], bootstrap=True)
    with session_scope(engine) as s, pytest.raises(Conflict, match="last operator"):
        people.set_roles(s, OPERATOR, OPERATOR, ["scholar"], ["operator"])
    with session_scope(engine) as s:
        people.set_roles(s, OPERATOR, "ana", ["operator"], ["reviewer"])
    with session_scope(engine) as s:
        assert people.get_person(s, "ana").role_set == {"operator", "scholar"}


def test_a_failed_command_leaves_nothing_behind(engine):
    """The change and its audit event commit together or not at all."""
    before = (_count(engine, Person), _count(engine, AuditEvent))
    with pytest.raises(RuntimeError):
        with session_scope(engine) as s:
            people.add_person(s, OPERATOR, "ghost", "Ghost", "g@example.org")
            raise RuntimeError("crash after the write, before commit")
    assert (_count(engine, Person), _count(engine, AuditEvent)) == before


def test_grants_validate_and_record_changes(engine):
    approved_project(engine, "gp", "gina")
    with session_scope(engine) as s, pytest.raises(NotFound, match="no grant yet"):
        grants.get_grant(s, "gp")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "gp", tokens_total=1000, mem_bytes=grants.parse_size("4G"))
    with session_scope(engine) as s:
        grant = grants.get_grant(s, "gp")
        assert grant.tokens_total == 1000 and grant.mem_bytes == 4 * 1024**3
        assert grant.tokens_per_day == grants.DEFAULTS["tokens_per_day"]
        grants.set_grant(s, OPERATOR, "gp", epsilon=2.5)
    for field, value in [("tokens_total", -1), ("requests_per_minute", 0), ("delta", 1.0), ("cpu", 0),
                         ("epsilon", float("nan")), ("tokens_per_day", 1.5), ("mem_bytes", 1024)]:
        with session_scope(engine) as s, pytest.raises(UserError, match=field):
            grants.set_grant(s, OPERATOR, "gp", **{field: value})
    with session_scope(engine) as s:
        grant = grants.get_grant(s, "gp")
        assert (grant.tokens_total, grant.epsilon) == (1000, 2.5)
        last = audit.head(s)
        assert last.action == "grant.set" and '"epsilon":{"from":1.0,"to":2.5}' in last.details
    with session_scope(engine) as s, pytest.raises(Forbidden):
        grants.set_grant(s, "gina", "gp", tokens_total=10**9)


@pytest.mark.parametrize("text, expected", [("4G", 4 * 1024**3), ("512m", 512 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2),
                                             ("1000", 1000), ("2 GB", 2 * 1024**3)])
def test_parse_size(text, expected):
    assert grants.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "four", "-1G", "4X", "G"])
def test_parse_size_rejects(text):
    with pytest.raises(UserError):
        grants.parse_size(text)


def test_datasets_are_fingerprinted_and_checked(engine, tmp_path):
    approved_project(engine, "dp", "dora")
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("name,dob,zip,sex,income\nA,1980-01-01,12345,F,100\n")
    with session_scope(engine) as s:
        ds = datasets.register(s, OPERATOR, "census", str(csv_path), ["dob", "zip", "sex"])
        assert ds.sha256 and ds.size_bytes == csv_path.stat().st_size
        datasets.allow(s, OPERATOR, "census", "dp")
    with session_scope(engine) as s:
        assert datasets.dataset_json(s, datasets.get_dataset(s, "census"))["projects"] == ["dp"]
        assert views.project_json(s, projects.get_project(s, "dp"))["datasets"] == ["census"]
    for name, path, qids, match in [
        ("x", str(tmp_path / "missing.csv"), [], "does not exist"),
        ("y", str(csv_path), ["postcode"], "not a column"),
        ("census", str(csv_path), [], "already exists"),
        ("bad name!", str(csv_path), [], "bad dataset name"),
    ]:
        with session_scope(engine) as s, pytest.raises(UserError, match=match):
            datasets.register(s, OPERATOR, name, path, qids)
    with session_scope(engine) as s, pytest.raises(Conflict):
        datasets.allow(s, OPERATOR, "census", "dp")


def test_unreadable_dataset_is_refused():
    """Root reads everything, so as root the check runs in a child that dropped to `nobody`."""
    folder = Path(tempfile.mkdtemp(prefix="enclave-unreadable-"))
    try:
        folder.chmod(0o755)
        secret = folder / "secret.csv"
        secret.write_text("a\n")
        secret.chmod(0)
        pid = os.fork()
        if pid == 0:  # child: report through the exit status, never return into pytest
            status = 3
            try:
                if os.geteuid() == 0:
                    os.setgid(pwd.getpwnam("nobody").pw_gid)
                    os.setuid(pwd.getpwnam("nobody").pw_uid)
                datasets.check_readable(str(secret))
                status = 1
            except UserError as exc:
                status = 0 if "is not readable" in exc.message else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(folder)


def test_keys_issue_authenticate_revoke_expire(engine):
    approved_project(engine, "kp", "kim", days=30)
    add_scholar(engine, "lee")
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "kp")
        row, plaintext = keys.issue(s, OPERATOR, "kim", "kp")
    assert plaintext.startswith("enk_") and row.secret_sha256 not in plaintext
    with session_scope(engine) as s:
        person, project, _ = keys.authenticate(s, plaintext)
        assert (person.username, project.slug) == ("kim", "kp")
        # The stored row never holds the secret itself.
        assert plaintext.rsplit("_", 1)[1] not in repr(s.get(type(row), row.id).model_dump())
    for forged in ["enk_" + row.id + "_wrong", "enk_nope_x", "garbage", plaintext + "x"]:
        with session_scope(engine) as s, pytest.raises(AccessDenied):
            keys.authenticate(s, forged)
    with session_scope(engine) as s, pytest.raises(UserError, match="not a member"):
        keys.issue(s, OPERATOR, "lee", "kp")
    with session_scope(engine) as s, pytest.raises(UserError, match="outlive"):
        keys.issue(s, OPERATOR, "kim", "kp", end_of_day(utcnow().date() + dt.timedelta(days=400)))
    with session_scope(engine) as s:
        later = row.expires_at + dt.timedelta(seconds=1)
        with pytest.raises(AccessDenied) as expired:
            keys.authenticate(s, plaintext, now=later)
        assert expired.value.reason == "key_expired"
        keys.revoke(s, OPERATOR, row.id)
    with session_scope(engine) as s:
        with pytest.raises(AccessDenied) as revoked:
            keys.authenticate(s, plaintext)
        assert revoked.value.reason == "key_revoked"
        assert keys.key_json(s, s.get(type(row), row.id))["state"] == "revoked"
    with session_scope(engine) as s, pytest.raises(Conflict, match="already revoked"):
        keys.revoke(s, OPERATOR, row.id)


def test_access_decisions_give_reasons(engine):
    approved_project(engine, "main", "mia")
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "rev", "Rev", "rev@example.org", roles=["reviewer"])
    add_scholar(engine, "outsider")

    def refused(user, slug=None):
        with session_scope(engine) as s, pytest.raises(AccessDenied) as info:
            access.resolve(s, user, slug)
        return info.value.reason

    assert refused("mia") == "no_grant"
    with session_scope(engine) as s:
        grants.set_grant(s, OPERATOR, "main")
    with session_scope(engine) as s:
        granted = access.resolve(s, "mia")
        assert (granted.project.slug, isinstance(granted.grant, Grant)) == ("main", True)
    assert refused("nobody") == "unknown_user"
    assert refused("rev") == "not_scholar"
    assert refused("outsider") == "no_project"
    assert refused("outsider", "main") == "not_member"
    approved_project(engine, "second", "mia")
    assert refused("mia") == "project_ambiguous"
    with session_scope(engine) as s:
        assert access.resolve(s, "mia", "main").project.slug == "main"
    for action, reason in [("suspend", "suspended"), ("reinstate", None), ("revoke", "revoked")]:
        with session_scope(engine) as s:
            projects.transition(s, OPERATOR, "main", action, reason="policy breach" if action == "revoke" else "")
        if reason:
            assert refused("mia", "main") == reason
    with session_scope(engine) as s:
        projects.create_project(s, OPERATOR, "new", "New", "mia", "Purpose.")
    assert refused("mia", "new") == "not_approved"


def test_membership(engine):
    approved_project(engine, "mp", "max")
    add_scholar(engine, "ned")
    with session_scope(engine) as s:
        projects.add_member(s, OPERATOR, "mp", "ned")
    with session_scope(engine) as s, pytest.raises(Conflict, match="already a member"):
        projects.add_member(s, OPERATOR, "mp", "ned")
    with session_scope(engine) as s, pytest.raises(Conflict, match="PI"):
        projects.remove_member(s, OPERATOR, "mp", "max")
    with session_scope(engine) as s:
        projects.remove_member(s, OPERATOR, "mp", "ned")
    with session_scope(engine) as s, pytest.raises(NotFound):
        projects.remove_member(s, OPERATOR, "mp", "ned")
    with session_scope(engine) as s:
        projects.transition(s, OPERATOR, "mp", "close")
    with session_scope(engine) as s, pytest.raises(Conflict, match="closed"):
        projects.add_member(s, OPERATOR, "mp", "ned")
