"""`enclave review scan`: placeholder until the scan pipeline lands."""
from __future__ import annotations


def scan_command() -> None:
    """Run every automated disclosure check on files, offline."""
    raise SystemExit("not yet built")
