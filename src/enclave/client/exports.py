"""The export airlock: submit files for output review and follow what reviewers decide.

Nothing leaves the enclave except through review: `export` puts copies of the files into the
review service's quarantine, automated checks run, disclosure reviewers decide, and approved files
are released outside with a signed manifest. There is no way to download them back here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Union
from urllib.parse import quote

from enclave.client._http import Config, EnclaveError, call
from enclave.client.results import Result, wrap

PathLike = Union[str, os.PathLike]
UPLOAD_TIMEOUT_S = 600.0


def _paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    resolved = [Path(p).expanduser() for p in paths]
    if not resolved:
        raise EnclaveError("nothing to export: give at least one file")
    for p in resolved:
        if p.is_dir():
            raise EnclaveError(f"{p} is a directory: export files (zip a folder first if you must)")
        if not p.is_file():
            raise EnclaveError(f"{p} does not exist or is not a regular file")
    names = [p.name for p in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EnclaveError(f"two files are named {dupes[0]!r}: exported files are known by name, rename one")
    return resolved


def export(paths: PathLike | Iterable[PathLike], justification: str, context: str = "", *,
           config: Config | None = None) -> dict:
    """Submit files for output review. Returns at once: {"id", "state", "files": [{"name", "sha256", "size"}], "url"}.

    `justification`: why these outputs may leave (what they are, why they are safe).
    `context`: anything a reviewer should know (how tables were made, the population, suppression...).
    """
    config = config or Config.from_env()
    files = _paths(paths)
    if not (justification or "").strip():
        raise EnclaveError("say why these files may leave: justification=... is required")
    return _upload(config, "/api/exports", files, {"justification": justification, "context": context or ""})


def resubmit(request_id: str, paths: PathLike | Iterable[PathLike], note: str = "", *,
             config: Config | None = None) -> dict:
    """New versions of the files after a reviewer asked for changes. Send the whole set again:
    unchanged files keep their approvals, changed ones are reviewed afresh."""
    config = config or Config.from_env()
    return _upload(config, f"/api/exports/{_id(request_id)}/resubmit", _paths(paths), {"note": note or ""})


def _id(request_id: str) -> str:
    return quote(str(request_id), safe="")


def _upload(config: Config, path: str, files: list[Path], fields: dict[str, str]) -> dict:
    # Check the caps here first, so a scholar is told before minutes of uploading, not after.
    limits = call(config, "review", "GET", "/api/limits")
    sizes = {p: p.stat().st_size for p in files}
    for p, size in sizes.items():
        if size > limits["max_file_bytes"]:
            raise EnclaveError(f"{p.name} is {size} bytes; an exported file may be at most {limits['max_file_bytes']} bytes")
    if sum(sizes.values()) > limits["max_request_bytes"]:
        raise EnclaveError(f"the files add up to {sum(sizes.values())} bytes; one export may carry at most "
                           f"{limits['max_request_bytes']} bytes: split it")
    with contextlib.ExitStack() as stack:
        upload = [("files", (p.name, stack.enter_context(open(p, "rb")), "application/octet-stream")) for p in files]
        return Result(call(config, "review", "POST", path, files=upload, data=fields, timeout=UPLOAD_TIMEOUT_S))


def export_status(request_id: str, *, config: Config | None = None) -> dict:
    """An export's state (submitted, checking, awaiting_review, changes_requested, approved, released,
    rejected, withdrawn), its files, the checks' findings (where, not what) and public comments."""
    return Result(call(config, "review", "GET", f"/api/exports/{_id(request_id)}"))


def exports(*, config: Config | None = None) -> list[dict]:
    """Your exports, newest first."""
    return wrap(call(config, "review", "GET", "/api/exports")["exports"])


def withdraw(request_id: str, *, config: Config | None = None) -> dict:
    return Result(call(config, "review", "POST", f"/api/exports/{_id(request_id)}/withdraw"))


def comment(request_id: str, text: str, *, config: Config | None = None) -> dict:
    """A comment reviewers (and you) can read on the export's page."""
    return Result(call(config, "review", "POST", f"/api/exports/{_id(request_id)}/comments", json={"body": text}))
