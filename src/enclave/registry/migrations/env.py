"""Alembic environment: run migrations on the engine `enclave.registry.db.upgrade` hands us."""

from alembic import context
from sqlmodel import SQLModel

import enclave.registry.models  # noqa: F401  (registers every table, exports' and metering's too)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    # Always handed an engine by `enclave.registry.db.upgrade`: the registry reads no environment.
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things in place; batch mode copies the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported: run `enclave db upgrade` against a database")
run_migrations_online()
