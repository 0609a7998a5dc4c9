"""Shared fixtures: a fresh registry on SQLite and on PostgreSQL for every test that asks."""

from __future__ import annotations

import os

import pytest

from enclave.registry import people
from enclave.registry.db import make_engine, session_scope, upgrade

from tests import pg

OPERATOR = "op"


@pytest.fixture(scope="session")
def pg_server():
    """URL of a PostgreSQL server the tests may create databases on."""
    given = os.environ.get("ENCLAVE_TEST_PG_URL")
    if given:
        yield given
        return
    try:
        server = pg.TempPostgres()
        url = server.start()
    except pg.PgUnavailable as exc:
        if os.environ.get("ENCLAVE_REQUIRE_PG"):
            pytest.fail(f"PostgreSQL is required under `make test` but could not start: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'enclave.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = pg.create_database(server)
    try:
        yield url
    finally:
        pg.drop_database(server, url)


@pytest.fixture
def engine(db_url):
    """A migrated registry with one operator, OPERATOR."""
    eng = make_engine(db_url)
    upgrade(eng)
    with session_scope(eng) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Olga Operator", "op@example.org", roles=["operator"], bootstrap=True)
    yield eng
    eng.dispose()
