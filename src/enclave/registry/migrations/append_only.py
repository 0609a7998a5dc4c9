"""Make a table append-only from inside an Alembic migration: rows may be inserted, never changed
or removed, by anyone holding an ordinary connection (the audit trail, releases, privacy spends...).

Migrations 0001, 0004, 0007 and 0009 each carry their own copy of these triggers; they are applied
history and stay as they are. New migrations call `install_append_only` / `drop_append_only`,
which create exactly the same objects under the same names, so a later migration may drop a
trigger an older one made.

Call it after a table's last batch operation: SQLite's batch mode may copy a table, and the copy
would lose its triggers.
"""

from __future__ import annotations

import re

from alembic import op

# The name is pasted into DDL (triggers cannot take bound parameters), so it must be a plain name.
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _checked(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"not a plain lower-case table name: {table!r}")
    return table


def install_append_only(table: str) -> None:
    """Refuse every UPDATE and DELETE on `table` from now on, on PostgreSQL and on SQLite."""
    table = _checked(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {table}_is_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{table} is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_is_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def drop_append_only(table: str) -> None:
    """Undo `install_append_only` (for a migration's downgrade); a no-op where nothing was installed."""
    table = _checked(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_is_append_only()")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
