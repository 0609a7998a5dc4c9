"""Small helpers the registry tests share."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import httpx

from sqlalchemy import text
from sqlalchemy.engine import Engine

from enclave.registry import people, projects
from enclave.registry.clock import end_of_day, utcnow
from enclave.registry.db import session_scope

import datetime as dt

OPERATOR = "op"


def free_port() -> int:
    """A loopback port nothing listens on right now (for servers the tests start)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, log_path: Path, what: str, timeout: float = 60.0,
                       headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers 200 (a server a test started as `proc`); raise with the tail of
    its log if it exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{Path(log_path).read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not answer in {timeout:.0f} s:\n{Path(log_path).read_text()[-4000:]}")
        time.sleep(0.25)


def add_scholar(engine: Engine, username: str) -> None:
    with session_scope(engine) as s:
        people.add_person(s, OPERATOR, username, username.title(), f"{username}@example.org", roles=["scholar"])


def approved_project(engine: Engine, slug: str, pi: str, days: int = 30) -> None:
    with session_scope(engine) as s:
        if people.find_person(s, pi) is None:
            people.add_person(s, OPERATOR, pi, pi.title(), f"{pi}@example.org", roles=["scholar"])
        projects.create_project(s, OPERATOR, slug, f"Project {slug}", pi, "Study things.")
        projects.transition(s, OPERATOR, slug, "approve", until=end_of_day((utcnow() + dt.timedelta(days=days)).date()))


@contextlib.contextmanager
def tamper(engine: Engine):
    """A raw connection with the audit table's append-only triggers out of the way, as an
    attacker with database access (a DBA, a stolen backup) would have."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_event_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_event_no_delete"))
        yield conn
