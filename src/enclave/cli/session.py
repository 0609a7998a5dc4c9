"""The registry as a command uses it: the database the environment names, one transaction (or one
engine) per step, disposed when the step ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session

from enclave.envsettings import database_url
from enclave.registry.db import check_schema, make_engine, registry_transaction


def registry(url: str | None = None) -> contextlib.AbstractContextManager[Session]:
    """A transaction on an initialised registry (at `url`, default $ENCLAVE_DB_URL), committed when
    the block finishes cleanly and rolled back, with its audit events, when it raises."""
    return registry_transaction(url or database_url())


@contextlib.contextmanager
def engine(url: str | None = None, *, checked: bool = True) -> Iterator[Engine]:
    """An engine on the registry for a command that runs several transactions; `checked` refuses a
    registry whose schema is missing or behind (set-up commands that migrate pass False)."""
    eng = make_engine(url or database_url())
    try:
        if checked:
            check_schema(eng)
        yield eng
    finally:
        eng.dispose()
