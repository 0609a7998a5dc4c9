"""Reading a registered dataset's file: the checks every use of it makes first.

A dataset is registered with its file's SHA-256 (`enclave dataset register`); a file that is no
longer that one is refused, so what a DP result or a fine-tune says it used is what it used. A
file larger than the service's cap is refused before it is read whole into memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from enclave.errors import BadInput, TooLarge, Unavailable


def read_registered(path: str | Path, max_bytes: int, expected_sha256: str | None = None) -> bytes:
    """The file's bytes, if it is a file of at most `max_bytes` whose SHA-256 is the registered one."""
    path = Path(path)
    if not path.is_file():
        raise BadInput("this dataset is not a readable file; an operator must look at it")
    size = path.stat().st_size
    if size > max_bytes:
        raise TooLarge(f"this dataset ({size} bytes) is larger than the {max_bytes} bytes the privacy service reads")
    try:
        data = path.read_bytes()
    except OSError:
        raise BadInput("this dataset is not a readable file; an operator must look at it") from None
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise Unavailable("this dataset's file changed since it was registered; an operator must look at it")
    return data
