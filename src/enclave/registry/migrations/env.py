"""Alembic environment: run migrations on the engine `enclave.registry.db.upgrade` hands us."""

from alembic import context
from sqlmodel import SQLModel

import enclave.registry.models  # noqa: F401  (registers the tables on SQLModel.metadata)
# The review service's tables live in the registry database (migration 0004) so that a request and
# its audit event commit together; it imports only the registry and SQLModel.
import enclave.review.models  # noqa: F401

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from enclave.registry.db import make_engine

        engine = make_engine()
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
