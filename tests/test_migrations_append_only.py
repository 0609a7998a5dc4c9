"""The migrations' append-only helper: on both databases, rows of a table it protects can be
inserted but never updated or deleted, its triggers are the ones the applied migrations made, and
`drop_append_only` takes them away again."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from enclave.registry.db import make_engine
from enclave.registry.migrations.append_only import drop_append_only, install_append_only


def _in_migration(conn: sa.Connection, step, table: str) -> None:
    """Run `step(table)` the way Alembic runs a migration: with `op` bound to this connection."""
    with Operations.context(MigrationContext.configure(conn)):
        step(table)


@pytest.fixture
def db(db_url):
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _trigger_sql(conn: sa.Connection, table: str) -> list[str]:
    """What the database holds for the table's append-only triggers, with the table's name taken out."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            sa.text(
                "SELECT pg_get_triggerdef(t.oid), p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid = CAST(:t AS regclass) AND NOT t.tgisinternal ORDER BY t.tgname"
            ),
            {"t": table},
        ).all()
        found = [f"{r[0]}\n{r[1]}" for r in rows]
    else:
        found = list(
            conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t ORDER BY name"),
                {"t": table},
            ).scalars()
        )
    return [" ".join(s.replace(table, "T").split()) for s in found]


def test_a_protected_table_takes_inserts_and_refuses_updates_and_deletes(db):
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scratch_log (id INTEGER PRIMARY KEY, note TEXT)"))
        _in_migration(conn, install_append_only, "scratch_log")
        conn.execute(sa.text("INSERT INTO scratch_log (id, note) VALUES (1, 'first'), (2, 'second')"))

    for statement in ("UPDATE scratch_log SET note = 'changed' WHERE id = 1", "DELETE FROM scratch_log WHERE id = 2"):
        with pytest.raises(sa.exc.DatabaseError, match="scratch_log is append-only"):
            with db.begin() as conn:
                conn.execute(sa.text(statement))

    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, note FROM scratch_log ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "first"), (2, "second")]

    # Dropped (a downgrade), the table is an ordinary table again.
    with db.begin() as conn:
        _in_migration(conn, drop_append_only, "scratch_log")
        assert _trigger_sql(conn, "scratch_log") == []
        conn.execute(sa.text("UPDATE scratch_log SET note = 'changed' WHERE id = 1"))
        conn.execute(sa.text("DELETE FROM scratch_log WHERE id = 2"))
        rows = conn.execute(sa.text("SELECT id, note FROM scratch_log ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "changed")]


def test_it_makes_exactly_the_triggers_the_applied_migrations_made(engine):
    """Same names and bodies as migration 0004's own copy, so later migrations can drop either."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scratch_log (id INTEGER PRIMARY KEY)"))
        _in_migration(conn, install_append_only, "scratch_log")
        ours = _trigger_sql(conn, "scratch_log")
        theirs = _trigger_sql(conn, "export_review")
    assert len(ours) == (1 if engine.dialect.name == "postgresql" else 2)
    assert ours == theirs

    # And `drop_append_only` removes what 0004 installed.
    with engine.begin() as conn:
        _in_migration(conn, drop_append_only, "export_review")
        assert _trigger_sql(conn, "export_review") == []


def test_only_plain_table_names_reach_the_ddl(db):
    with db.begin() as conn:
        with pytest.raises(ValueError, match="plain"):
            _in_migration(conn, install_append_only, "log; DROP TABLE person")
