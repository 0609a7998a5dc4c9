"""Where the registry lives and how we talk to it.

`ENCLAVE_DB_URL` picks the database; without it we use a SQLite file under `ENCLAVE_HOME`
(default `./var`). PostgreSQL URLs may be given as `postgresql://...`; we use psycopg 3.

Concurrency: the audit chain needs appends serialised. On PostgreSQL `audit.append` takes a
transaction-scoped advisory lock. On SQLite every transaction starts with `BEGIN IMMEDIATE`, which
takes the database's write lock up front; otherwise two deferred transactions could both read the
same chain head and one would fail late with SQLITE_BUSY instead of waiting its turn.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from enclave.errors import DatabaseUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 60


def normalise_url(url: str) -> str:
    """Accept the URL spellings operators paste from elsewhere; use psycopg 3 for PostgreSQL."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too broken to parse is shown as the user typed it, minus nothing
        return url


def make_engine(url: str) -> Engine:
    """An engine for `url` (the caller's settings say which database; the registry reads no
    environment)."""
    if not url:
        raise DatabaseUnavailable("no database URL given")
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise DatabaseUnavailable(f"bad database URL {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, connect_args={"connect_timeout": 5}, pool_pre_ping=True)
    raise DatabaseUnavailable(f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        directory = Path(database).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create {directory}: {exc.strerror}") from None
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    # Threads of one process queue on a Python lock rather than on SQLite's busy handler, which
    # sleeps in growing steps (up to 100 ms) and so wastes most of the time under contention.
    # Other processes still meet the busy timeout.
    writer = _sqlite_writer_lock(database or ":memory:")

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if not writer.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise DatabaseUnavailable(f"the registry database is busy (waited {SQLITE_BUSY_TIMEOUT_S} s)")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise
        conn.info["enclave_holds_writer"] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(conn):
        # Only the connection that took the lock gives it back.
        if conn.info.pop("enclave_holds_writer", False):
            writer.release()

    return engine


_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _sqlite_writer_lock(database: str) -> threading.Lock:
    key = os.path.realpath(database) if database != ":memory:" else database
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(key, threading.Lock())


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), revision)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unreachable ({redacted(str(engine.url))}): {_first_line(exc)}") from None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(cfg).get_current_head()


def check_schema(engine: Engine) -> None:
    """Refuse to work on a database that was never initialised or is behind our code."""
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database unreachable ({redacted(str(engine.url))}): {_first_line(exc)}") from None
    if current is None:
        if not inspect(engine).has_table("person"):
            raise DatabaseUnavailable(
                "the registry is not initialised: run `enclave init --operator USER` (or `enclave db upgrade`)"
            )
    head = head_revision()
    if current != head:
        raise DatabaseUnavailable(f"the registry schema is at {current}, this enclave needs {head}: run `enclave db upgrade`")


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, so nothing is half-written."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseUnavailable(f"database error ({redacted(str(engine.url))}): {_first_line(exc)}") from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextlib.contextmanager
def registry_transaction(url: str) -> Iterator[Session]:
    """One transaction on the initialised registry at `url` (refused if its schema is missing or
    behind), with the engine disposed afterwards: what a one-shot CLI command needs."""
    engine = make_engine(url)
    try:
        check_schema(engine)
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
