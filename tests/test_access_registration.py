"""Self-registration of applicants (issue 13) and the datasets an award grants.

Someone without an account asks for one on the access service's public page; nothing is given
until an operator confirms it (`enclave registration confirm`), which makes them a person with the
`applicant` role and the password they chose. From the attacker's side: a forged form, a name
already taken or pending, an oversized or flooding post, script in a field, and logging in to the
hub (our real authenticator) before confirmation. Then: an award lets the new project use the
registered datasets its application named, and records the ones it could not."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from enclave.access.app import create_app
from enclave.access.settings import AccessSettings
from enclave.errors import BadInput, Conflict, Forbidden, NotFound
from enclave.hub.admission import login_decision
from enclave.hub.authenticator import EnclavePasswordAuthenticator
from enclave.registry import applications, audit, awards, calls, datasets, people, registrations
from enclave.registry.credentials import check_password
from enclave.registry.db import make_engine, session_scope, upgrade
from enclave.registry.models import AuditEvent, Credential, DatasetAccess, Person, Project, Registration

from tests.helpers import OPERATOR
from tests.review_stack import FakeIdentity
from tests.test_access_applications import FIELDS, TRAINED, _open, _people, _score, _to_review

PASSWORD = "a long enough secret"
REGISTER = "/services/access/register"


def _events(engine, action: str) -> list[AuditEvent]:
    with session_scope(engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action)).all())


def _request(engine, username="newt", password=PASSWORD, **kw) -> None:
    fields = dict(name="Newt Scamander", email="newt@uni.example", affiliation="Uni N") | kw
    with session_scope(engine) as s:
        registrations.request(s, username, fields["name"], fields["email"], fields["affiliation"], password)


def _hub_login(engine, username: str, password: str):
    """Our real hub authenticator, as JupyterHub's login handler calls it."""
    auth = EnclavePasswordAuthenticator(enclave_db_url=engine.url.render_as_string(hide_password=False))
    return asyncio.run(auth.get_authenticated_user(None, {"username": username, "password": password}))


# --- the registry ------------------------------------------------------------------------------

def test_a_request_is_pending_gives_nothing_and_keeps_only_a_hash(engine):
    _request(engine)
    with session_scope(engine) as s:
        row = s.exec(select(Registration)).one()
        assert row.password_hash.startswith("scrypt$") and PASSWORD not in row.password_hash
        assert people.find_person(s, "newt") is None
        assert not check_password(s, "newt", PASSWORD)
        decision = login_decision(s, "newt")
        assert not decision.allowed and "not registered" in decision.reason
    [event] = _events(engine, "registration.requested")
    assert event.subject == "registration:newt" and PASSWORD not in event.details
    assert _hub_login(engine, "newt", PASSWORD) is None  # the hub's login form refuses


def test_taken_or_pending_names_and_bad_fields_are_refused_and_store_nothing(engine):
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "ann", "Ann", "ann@example.org", roles=["applicant"])
    _request(engine)
    for username in ("ann", "newt", OPERATOR):
        with pytest.raises(Conflict, match="taken"):
            _request(engine, username, name="Someone Else")
    for bad, match in ((dict(password="short"), "password"), (dict(email="nope"), "e-mail"),
                       (dict(name=" "), "name"), (dict(name="x" * 201), "name"),
                       (dict(affiliation="x" * 201), "affiliation"), (dict(username="Bad Name"), "user name"),
                       (dict(password="p" * 1025), "password")):
        with pytest.raises(BadInput, match=match):
            _request(engine, **{"username": "other"} | bad)
    with session_scope(engine) as s:
        assert [r.username for r in s.exec(select(Registration)).all()] == ["newt"]
        assert s.exec(select(Person).where(Person.name == "Someone Else")).first() is None
    assert len(_events(engine, "registration.requested")) == 1


def test_confirm_makes_an_applicant_who_logs_in_with_their_password(engine):
    _request(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "sam", "Sam", "sam@example.org", roles=["scholar"])
    with pytest.raises(Forbidden, match="operator"), session_scope(engine) as s:
        registrations.confirm(s, "sam", "newt")
    with pytest.raises(Forbidden), session_scope(engine) as s:
        registrations.list_pending(s, "sam")
    with session_scope(engine) as s:
        assert [r.username for r in registrations.list_pending(s, OPERATOR)] == ["newt"]
        registrations.confirm(s, OPERATOR, "newt")
    with session_scope(engine) as s:
        newt = people.get_person(s, "newt")
        assert newt.role_set == {"applicant"} and newt.affiliation == "Uni N"
        assert s.get(Credential, newt.id).set_by == OPERATOR
        assert check_password(s, "newt", PASSWORD) and not check_password(s, "newt", PASSWORD + "x")
        assert login_decision(s, "newt").allowed
        assert s.exec(select(Registration)).all() == []
    assert _hub_login(engine, "newt", PASSWORD)["name"] == "newt"
    assert _hub_login(engine, "newt", "a wrong password!") is None
    assert [e.subject for e in _events(engine, "registration.confirmed")] == ["person:newt"]
    with pytest.raises(NotFound), session_scope(engine) as s:
        registrations.confirm(s, OPERATOR, "newt")  # once only


def test_confirm_refuses_a_name_an_operator_gave_away_meanwhile(engine):
    _request(engine)
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, "newt", "Another Newt", "other@example.org", roles=["scholar"])
    with pytest.raises(Conflict, match="already exists"), session_scope(engine) as s:
        registrations.confirm(s, OPERATOR, "newt")
    with session_scope(engine) as s:
        assert not check_password(s, "newt", PASSWORD)  # the request's password never reaches that person


def test_refuse_needs_a_reason_and_frees_the_name(engine):
    _request(engine)
    with pytest.raises(BadInput, match="reason"), session_scope(engine) as s:
        registrations.refuse(s, OPERATOR, "newt", " ")
    with session_scope(engine) as s:
        registrations.refuse(s, OPERATOR, "newt", "not a researcher")
    with session_scope(engine) as s:
        assert s.exec(select(Registration)).all() == [] and people.find_person(s, "newt") is None
        assert not login_decision(s, "newt").allowed
    [event] = _events(engine, "registration.refused")
    assert "not a researcher" in event.details
    _request(engine)  # the name may be asked for again


# --- the page ----------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    settings = AccessSettings.for_home(tmp_path, db.url.render_as_string(hide_password=False))
    app = create_app(settings, identity=FakeIdentity({}))
    with TestClient(app) as client:
        yield db, client
    db.dispose()


def _form(client) -> tuple[str, str]:
    page = client.get(REGISTER)
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1), page.text


def _fields(**kw) -> dict:
    return dict(username="newt", name="Newt", email="newt@uni.example", affiliation="Uni N", password=PASSWORD,
                password_again=PASSWORD) | kw


def _pending(db) -> list[str]:
    with session_scope(db) as s:
        return [r.username for r in s.exec(select(Registration)).all()]


def test_the_page_needs_no_login_and_records_a_pending_request(web):
    db, client = web
    page = client.get(REGISTER)
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/services/access/" in cookie
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = client.post(REGISTER, data={**_fields(), "csrf": csrf})
    assert done.status_code == 200 and "will confirm the account" in done.text and PASSWORD not in done.text
    assert _pending(db) == ["newt"]
    # The home page still needs a login: registering gave no session.
    assert client.get("/services/access/", follow_redirects=False).status_code == 303


def test_a_forged_registration_form_is_refused_and_stores_nothing(web):
    db, client = web
    csrf, _ = _form(client)
    cookie = client.cookies.get("enclave-access-register")
    other_csrf, _ = _form(client)  # a second page: a new cookie, so the first token no longer matches
    for given, jar in (("", cookie), ("0" * 64, cookie), (csrf, None), (csrf, "forged.1.abc"), (other_csrf, cookie)):
        client.cookies.clear()
        if jar:
            client.cookies.set("enclave-access-register", jar, path="/services/access/")
        refused = client.post(REGISTER, data={**_fields(), "csrf": given})
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert _pending(db) == [] and _events(db, "registration.requested") == []


def test_refusals_on_the_page_escape_what_was_typed_and_never_echo_the_password(web):
    db, client = web
    csrf, _ = _form(client)
    shown = client.post(REGISTER, data={**_fields(name="<script>alert(1)</script>", email="nope"), "csrf": csrf})
    assert shown.status_code == 400 and "e-mail" in shown.text
    assert "<script>alert(1)</script>" not in shown.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text
    assert PASSWORD not in shown.text
    csrf, _ = _form(client)
    differ = client.post(REGISTER, data={**_fields(password_again=PASSWORD + "!"), "csrf": csrf})
    assert differ.status_code == 400 and "differ" in differ.text
    csrf, _ = _form(client)
    client.post(REGISTER, data={**_fields(), "csrf": csrf})
    csrf, _ = _form(client)
    taken = client.post(REGISTER, data={**_fields(name="Mallory"), "csrf": csrf})
    assert taken.status_code == 409 and "taken" in taken.text
    assert _pending(db) == ["newt"]


def test_oversized_and_flooding_posts_are_refused(web):
    db, client = web
    csrf, _ = _form(client)
    big = client.post(REGISTER, data={**_fields(affiliation="x" * 10_000), "csrf": csrf})
    assert big.status_code == 413
    statuses = []
    for i in range(15):
        csrf, _ = _form(client)
        statuses.append(client.post(REGISTER, data={**_fields(username=f"user{i}"), "csrf": csrf}).status_code)
    assert statuses[:10] == [200] * 10 and statuses[-1] == 429
    assert len(_pending(db)) == 10


# --- the command -------------------------------------------------------------------------------

def test_cli_lists_confirms_and_refuses(db_url, tmp_path, monkeypatch):
    from tests.test_cli import InProcessCli

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(ENCLAVE_HOME=str(tmp_path / "home"), ENCLAVE_DB_URL=db_url, ENCLAVE_OPERATOR="boss")
    cli = InProcessCli(env, monkeypatch)
    cli("init", "--operator", "boss", "--name", "Bea Boss", "--email", "boss@rdc.example")
    db = make_engine(db_url)
    try:
        _request(db, "newt")
        _request(db, "eve", email="eve@uni.example")
        assert [r["username"] for r in json.loads(cli("registration", "list", "--json").stdout)] == \
            ["newt", "eve"]
        no_reason = cli("registration", "refuse", "eve", ok=False)
        assert no_reason.returncode != 0 and "--reason" in no_reason.stdout + no_reason.stderr
        cli("registration", "refuse", "eve", "--reason", "unknown to us")
        cli("registration", "confirm", "newt")
        assert "applicant" in cli("person", "show", "newt").stdout
        failed = cli("registration", "confirm", "eve", ok=False)
        assert failed.returncode != 0 and "no pending registration" in failed.stdout + failed.stderr
        with session_scope(db) as s:
            assert check_password(s, "newt", PASSWORD) and people.find_person(s, "eve") is None
    finally:
        db.dispose()


# --- an award's datasets -----------------------------------------------------------------------

def test_an_award_grants_the_registered_datasets_the_application_named(engine, tmp_path):
    _people(engine)
    _open(engine)
    census = tmp_path / "census.csv"
    census.write_text("zip,age\n12345,40\n")
    with session_scope(engine) as s:
        datasets.register(s, OPERATOR, "census", str(census), ["zip"])
        app = applications.create(s, "ann", "c1", "sample", requests=100, tokens_per_request=500,
                                  team=[f"ann:{TRAINED}"], **(FIELDS | {"datasets": ["census", "ghost", "census"]}))
        applications.submit(s, "ann", app.id, calls.get_call(s, "c1").terms_sha256)
    _to_review(engine, app.id)
    _score(engine, app.id, "p1", 2)
    _score(engine, app.id, "p2", 2)
    with session_scope(engine) as s:
        calls.close_call(s, OPERATOR, "c1")
    [row] = awards.allocate(engine, OPERATOR, "c1")
    assert row.outcome == "approved"
    with session_scope(engine) as s:
        project = s.exec(select(Project).where(Project.slug == f"c1-{app.id}")).one()
        assert [d.name for d in datasets.datasets_for(s, project)] == ["census"]
        assert len(s.exec(select(DatasetAccess)).all()) == 1
        assert audit.verify_database(s).ok
    [created] = _events(engine, "award.create")
    details = json.loads(created.details)
    assert details["datasets_granted"] == ["census"] and details["datasets_not_granted"] == ["ghost"]
    assert [e.subject for e in _events(engine, "dataset.allow")] == ["dataset:census"]
