"""Registry work from request handlers: one short transaction per piece of work, run on a worker
thread so the event loop never waits on the database.

Why short transactions and not one session per request: on SQLite a write transaction holds the
database's one writer lock, so a request that kept its session open across an await (a model call,
an upload streaming in) would stall every other writer; and a release must see the decision
committed just before it.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from enclave.registry.db import session_scope

T = TypeVar("T")


def in_transaction(db: Engine, work: Callable[[Any], T]) -> T:
    """`work(session)` in one transaction: committed if it returns, rolled back if it raises."""
    with session_scope(db) as session:
        return work(session)


async def in_transaction_thread(db: Engine, work: Callable[[Any], T]) -> T:
    """`in_transaction` on a worker thread."""
    return await run_in_threadpool(in_transaction, db, work)
