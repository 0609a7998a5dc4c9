"""The quarantine: exported bytes, content-addressed by SHA-256, written once and never modified.

A blob is written to a temporary file in the same filesystem, fsynced, made read-only, and only
then renamed to `sha256/<2 hex>/<64 hex>`; the directory is fsynced so the rename survives a crash.
A crash leaves at most an orphan temporary file or an unreferenced blob, never a half-written one
under a real name, and never a request row pointing at missing bytes (rows are written after the
blobs, in one transaction). Reads check the hash again, so bytes changed on disk are noticed
before anyone reviews or releases them.

Unreferenced blobs (a crash between storing an upload and recording its export, or an upload
refused after its files were stored) are collected by `orphans` + `remove`, which the review
service runs at start-up and operators from `enclave review gc`: a blob no export references and
untouched for a grace period goes. Storing bytes that are already here touches the blob, so an
upload in flight always has a fresh one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import time
import unicodedata
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import BinaryIO

from enclave.errors import BadInput, TooLarge

CHUNK = 1024 * 1024
MAX_NAME_BYTES = 255


class QuarantineCorrupt(Exception):
    """A blob's bytes no longer match its name: someone or something changed the quarantine.
    Not a user error: the HTTP app answers 500 and an operator must look."""


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """A file that is safely in the quarantine, not yet part of any request."""

    name: str
    sha256: str
    size: int


def export_name(raw: str) -> str:
    """The name a file will carry through review and release, or a refusal saying why.

    Names are attacker-controlled: they reach HTML pages, manifests and the release store's
    directory. Only a bare file name is accepted (no directories, no traversal), without control
    or bidirectional-override characters that make a name look like something else.
    """
    if not isinstance(raw, str) or not raw:
        raise BadInput("a file has no name")
    name = unicodedata.normalize("NFC", raw)
    shown = ascii(raw)[:80]
    if name in (".", ".."):
        raise BadInput(f"bad file name {shown}: not a file")
    if "/" in name or "\\" in name:
        raise BadInput(f"bad file name {shown}: send bare file names, not paths")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise BadInput(f"bad file name {shown}: control or invisible formatting characters")
    if name != name.strip():
        raise BadInput(f"bad file name {shown}: leading or trailing spaces")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadInput(f"bad file name {shown}: longer than {MAX_NAME_BYTES} bytes")
    return name


def check_unique(names: Iterable[str]) -> None:
    """Refuse two files whose names differ only in case (they would collide on many filesystems)."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.casefold()
        if key in seen:
            raise BadInput(f"two files are named {name!r} (names must differ in more than case)")
        seen[key] = name


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A blob that no export references."""

    sha256: str
    size: int
    mtime: float


class Quarantine:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.tmp = self.root / "tmp"

    def ensure(self) -> "Quarantine":
        for folder in (self.root, self.blobs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        return self

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def put_chunks(self, chunks: Iterable[bytes], *, limit: int | None = None) -> tuple[str, int]:
        """Store a stream of bytes; returns (sha256, size). Raises TooLarge past `limit` bytes,
        leaving nothing behind."""
        self.ensure()
        digest, size = hashlib.sha256(), 0
        tmp_path = self.tmp / f"upload-{secrets.token_hex(8)}"
        try:
            with open(tmp_path, "xb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise TooLarge(f"a file is larger than the cap of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp_path, 0o444)
            sha = digest.hexdigest()
            final = self.path_of(sha)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            if final.exists() and self._intact(final, sha):
                # The same bytes are already here: content addressing dedupes. Touch the blob, so
                # the collector's grace period counts from this upload (it may be an orphan about
                # to be collected that this upload is going to reference).
                os.utime(final)
                return sha, size
            os.replace(tmp_path, final)  # atomic; also replaces a damaged copy with good bytes
            _fsync_dir(final.parent)
            return sha, size
        finally:
            if tmp_path.exists():
                tmp_path.unlink()

    def put_file(self, fileobj: BinaryIO, *, limit: int | None = None) -> tuple[str, int]:
        return self.put_chunks(iter(lambda: fileobj.read(CHUNK), b""), limit=limit)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_chunks([data])

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, checked against its hash."""
        try:
            data = self.path_of(sha256).read_bytes()
        except FileNotFoundError:
            raise QuarantineCorrupt(f"quarantined file {sha256} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise QuarantineCorrupt(f"quarantined file {sha256} was changed on disk")
        return data

    def copy_to(self, sha256: str, dest: Path) -> None:
        """Copy a blob out (to the release store), checking the hash of what was copied."""
        source = self.path_of(sha256)
        if not source.exists():
            raise QuarantineCorrupt(f"quarantined file {sha256} is missing")
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(dest, "xb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            dest.unlink()
            raise QuarantineCorrupt(f"quarantined file {sha256} was changed on disk")

    def _intact(self, path: Path, sha256: str) -> bool:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest() == sha256

    def blob_names(self) -> Iterable[tuple[str, Path]]:
        """(sha256, path) of every blob; files under other names are not ours and are left alone."""
        if not self.blobs.exists():
            return
        for folder in sorted(self.blobs.iterdir()):
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in sorted(folder.iterdir()):
                name = path.name
                if len(name) == 64 and name[:2] == folder.name and all(c in "0123456789abcdef" for c in name):
                    yield name, path

    def orphans(self, referenced: Collection[str], grace_s: float, now: float | None = None) -> list["Orphan"]:
        """Blobs that no export references and that nobody has stored for `grace_s` seconds: those
        a crash or a refused upload left. The grace period spares an upload whose blobs are stored
        and whose export is not recorded yet."""
        cutoff = (time.time() if now is None else now) - grace_s
        found = []
        for sha, path in self.blob_names():
            if sha in referenced:
                continue
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if stat.st_mtime <= cutoff:
                found.append(Orphan(sha, stat.st_size, stat.st_mtime))
        return found

    def remove(self, orphans: Iterable["Orphan"], grace_s: float, now: float | None = None) -> list["Orphan"]:
        """Delete the given orphans; returns those actually removed. Each is looked at again just
        before it goes, and spared if an upload touched it since `orphans` listed it."""
        cutoff = (time.time() if now is None else now) - grace_s
        removed, folders = [], set()
        for orphan in orphans:
            path = self.path_of(orphan.sha256)
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(orphan)
            folders.add(path.parent)
        for folder in folders:
            _fsync_dir(folder)
        return removed

    def sweep_tmp(self, older_than_s: float | None = None, now: float | None = None) -> int:
        """Remove temporary files a crash left behind: all of them at start-up (before uploads are
        accepted), or only those older than `older_than_s` seconds (a collection while a service
        may be streaming uploads into younger ones)."""
        if not self.tmp.exists():
            return 0
        cutoff = None if older_than_s is None else (time.time() if now is None else now) - older_than_s
        count = 0
        for leftover in self.tmp.iterdir():
            try:
                if cutoff is not None and leftover.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            count += 1
        return count


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
