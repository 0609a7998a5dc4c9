"""Shared fixtures: a fresh registry on SQLite and on PostgreSQL for every test that asks, and the
local Docker engine for the tests that need one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub; the services set this at their start-up, and
# tests that load models in-process start no service.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from enclave.registry import people  # noqa: E402
from enclave.registry.db import make_engine, session_scope, upgrade  # noqa: E402

from tests import pg  # noqa: E402

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


@pytest.fixture(scope="session")
def docker_client():
    """The local Docker engine (dockerd started when we are root and none answers). Under `make
    test` (ENCLAVE_REQUIRE_DOCKER) a missing engine fails the run; elsewhere the test is skipped."""
    from enclave.hub.launch import DockerUnavailable, docker_client, ensure_dockerd

    try:
        ensure_dockerd(Path(tempfile.gettempdir()) / "enclave-test-logs")
    except DockerUnavailable as exc:
        if os.environ.get("ENCLAVE_REQUIRE_DOCKER"):
            pytest.fail(f"a Docker engine is required under `make test`: {exc}")
        pytest.skip(str(exc))
    client = docker_client()
    yield client
    client.close()


CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def chromium():
    """Debian's headless Chromium driven by Playwright (Playwright's own browser download cannot
    work here). Under `make test` (ENCLAVE_REQUIRE_CHROMIUM) a missing browser fails the run."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("ENCLAVE_REQUIRE_CHROMIUM"):
            pytest.fail(f"Chromium is required under `make test` but {CHROMIUM} is missing")
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
