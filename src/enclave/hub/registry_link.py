"""How a hub plug-in reaches the registry: one engine per process, blocking work off the event
loop (JupyterHub is single-threaded asyncio; a slow query must not stall every user)."""
from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

from sqlmodel import Session
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from enclave.envsettings import database_url
from enclave.registry.db import make_engine, session_scope

T = TypeVar("T")
_ENGINES: dict[str, object] = {}


class RegistryLink(LoggingConfigurable):
    enclave_db_url = Unicode(
        help="""SQLAlchemy URL of the enclave registry. Default: $ENCLAVE_DB_URL, else the SQLite
        file under $ENCLAVE_HOME (the same database the `enclave` CLI uses).""",
    ).tag(config=True)

    @default("enclave_db_url")
    def _default_enclave_db_url(self) -> str:
        return database_url()

    def registry_engine(self):
        url = self.enclave_db_url
        if url not in _ENGINES:
            _ENGINES[url] = make_engine(url)
        return _ENGINES[url]

    async def in_registry(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in one registry transaction on a worker thread."""

        def run() -> T:
            with session_scope(self.registry_engine()) as session:
                return work(session)

        return await asyncio.to_thread(run)
