"""Opening archives from exports without trusting them.

An archive is attacker-controlled: its declared sizes can lie, a few kilobytes can expand to
gigabytes, member names can climb out of the extraction directory ("../../etc/cron.d/x"), and
members can be links or device files. Nothing here touches the file system: members are read into
memory, each capped at the policy's size and compression ratio, all of them together at the
export's expansion budget, and their count and nesting depth are capped too. Compressed streams
(gzip, bzip2, xz) are decompressed with an output limit before anything parses them, so a tar bomb
inside a .tgz is stopped by the same budget.

What cannot be opened safely is reported as a problem and skipped; the rest is returned for the
checks to scan like any file.
"""
from __future__ import annotations

import bz2
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from enclave.review.scan.detect import extension
from enclave.review.scan.policy import ArchivesPolicy


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes


@dataclass(frozen=True)
class Problem:
    kind: str  # "unsafe" (paths, links, devices, bombs, limits) or "corrupt" (unreadable, encrypted)
    member: str  # "" for the archive as a whole
    message: str


@dataclass
class Budget:
    """Bytes that may still be expanded in this export, across all archives at all depths."""

    remaining: int

    def take(self, n: int) -> bool:
        if n > self.remaining:
            return False
        self.remaining -= n
        return True


@dataclass
class Opened:
    members: list[Member] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _display(name: str) -> str:
    return name if name.isprintable() else repr(name)[1:-1]


def unsafe_name(name: str) -> str | None:
    """Why a member name could write outside the extraction directory, or None if it is safe."""
    if not name or "\x00" in name:
        return "an empty name or a NUL byte in it"
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return "a '..' component (path traversal)"
    return None


def _decompress(data: bytes, fmt: str, limit: int) -> bytes:
    """Decompress a whole gzip/bzip2/xz stream (concatenated members too), refusing output beyond
    `limit` bytes: the decompressor is never asked for more than one byte over the limit."""
    out = bytearray()

    def capped() -> int:
        if len(out) > limit:
            raise _Refused("unsafe", f"expands to more than {limit:,} bytes")
        return limit + 1 - len(out)

    remaining = data
    try:
        while remaining:
            if fmt == "gzip":
                engine = zlib.decompressobj(wbits=31)
                chunk = remaining
                while chunk:
                    out += engine.decompress(chunk, capped())
                    chunk = engine.unconsumed_tail
                capped()
            else:
                engine = bz2.BZ2Decompressor() if fmt == "bzip2" else lzma.LZMADecompressor()
                out += engine.decompress(remaining, max_length=capped())
                while not engine.eof and not engine.needs_input:
                    out += engine.decompress(b"", max_length=capped())
                capped()
            if not engine.eof:
                raise _Refused("corrupt", f"truncated {fmt} stream")
            remaining = engine.unused_data
            # Zero padding after the last member is allowed by gzip and tar tools.
            if remaining and not remaining.strip(b"\x00"):
                remaining = b""
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise _Refused("corrupt", f"corrupt {fmt} stream ({exc})") from None
    return bytes(out)


def open_archive(name: str, data: bytes, fmt: str, policy: ArchivesPolicy, budget: Budget) -> Opened:
    """Members of an archive (`fmt`: zip, tar, gzip, bzip2, xz), or problems saying why not."""
    opened = Opened()
    try:
        if fmt == "zip":
            _zip(data, policy, budget, opened)
        elif fmt == "tar":
            _tar(data, policy, budget, opened)
        elif fmt in ("gzip", "bzip2", "xz"):
            # Small outputs are never bombs (a tar's block padding alone compresses 50:1).
            limit = min(policy.max_member_bytes, budget.remaining,
                        max(policy.min_bomb_bytes, int(len(data) * policy.max_compression_ratio)))
            inner = _decompress(data, fmt, limit)
            if len(inner) >= 262 and inner[257:262] == b"ustar":
                _tar(inner, policy, budget, opened)
            else:
                if not budget.take(len(inner)):
                    raise _Refused("unsafe", "the export's expansion budget is used up")
                base = PurePosixPath(name.rsplit("!", 1)[-1]).name
                inner_name = base[: -len(extension(base)) - 1] if extension(base) in ("gz", "bz2", "xz") else base + ".out"
                opened.members.append(Member(inner_name or "data", inner))
        else:
            raise _Refused("corrupt", f"unsupported archive format {fmt}")
    except _Refused as refused:
        opened.problems.append(Problem(refused.kind, "", refused.message))
    return opened


def _check_count(count: int, policy: ArchivesPolicy) -> None:
    if count > policy.max_members:
        raise _Refused("unsafe", f"has {count:,} members, over the limit of {policy.max_members:,}")


def _zip(data: bytes, policy: ArchivesPolicy, budget: Budget, opened: Opened) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise _Refused("corrupt", f"not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        _check_count(len(infos), policy)
        for info in infos:
            shown = _display(info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                continue
            why = unsafe_name(info.filename)
            if why:
                opened.problems.append(Problem("unsafe", shown, f"member name has {why}; not extracted"))
                continue
            if stat.S_ISLNK(mode):
                opened.problems.append(Problem("unsafe", shown, "member is a symbolic link; not extracted"))
                continue
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                opened.problems.append(Problem("unsafe", shown, "member is a device, pipe or other special file; not extracted"))
                continue
            if info.flag_bits & 0x1:
                opened.problems.append(Problem("corrupt", shown, "member is encrypted and cannot be inspected"))
                continue
            problem = _size_problem(info.file_size, info.compress_size, policy, budget)
            if problem:
                opened.problems.append(Problem("unsafe", shown, problem))
                continue
            try:
                with archive.open(info) as handle:
                    content = handle.read(policy.max_member_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
                opened.problems.append(Problem("corrupt", shown, f"member cannot be read ({exc})"))
                continue
            # Declared sizes can lie: check what actually came out.
            if len(content) > policy.max_member_bytes or len(content) > max(
                    info.file_size, policy.min_bomb_bytes, info.compress_size * policy.max_compression_ratio):
                opened.problems.append(Problem("unsafe", shown, "member expands beyond its declared size or the "
                                                                 "compression-ratio limit; not extracted"))
                continue
            if not budget.take(len(content)):
                opened.problems.append(Problem("unsafe", shown, "the export's expansion budget is used up; not extracted"))
                continue
            opened.members.append(Member(info.filename, content))


def _size_problem(size: int, compressed: int, policy: ArchivesPolicy, budget: Budget) -> str | None:
    if size > policy.max_member_bytes:
        return f"member expands to {size:,} bytes, over the limit of {policy.max_member_bytes:,}; not extracted"
    ratio = size / max(compressed, 1)
    if size > policy.min_bomb_bytes and ratio > policy.max_compression_ratio:
        return (f"compression ratio {ratio:.0f}:1 is over the limit of {policy.max_compression_ratio:.0f}:1 "
                "(a zip bomb?); not extracted")
    if size > budget.remaining:
        return "the export's expansion budget is used up; not extracted"
    return None


def _tar(data: bytes, policy: ArchivesPolicy, budget: Budget, opened: Opened) -> None:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise _Refused("corrupt", f"not a readable tar archive ({exc})") from None
    with archive:
        count = 0
        try:
            for member in archive:
                count += 1
                _check_count(count, policy)
                shown = _display(member.name)
                if member.isdir():
                    continue
                why = unsafe_name(member.name)
                if why:
                    opened.problems.append(Problem("unsafe", shown, f"member name has {why}; not extracted"))
                    continue
                if member.issym() or member.islnk():
                    kind = "symbolic" if member.issym() else "hard"
                    opened.problems.append(Problem("unsafe", shown, f"member is a {kind} link to "
                                                                     f"{_display(member.linkname)!r}; not extracted"))
                    continue
                if not member.isfile():
                    opened.problems.append(Problem("unsafe", shown, "member is a device, pipe or other special file; "
                                                                     "not extracted"))
                    continue
                problem = _size_problem(member.size, member.size, policy, budget)
                if problem:
                    opened.problems.append(Problem("unsafe", shown, problem))
                    continue
                handle = archive.extractfile(member)
                content = handle.read(policy.max_member_bytes + 1) if handle else b""
                if not budget.take(len(content)):
                    opened.problems.append(Problem("unsafe", shown, "the export's expansion budget is used up; not extracted"))
                    continue
                opened.members.append(Member(member.name, content))
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            opened.problems.append(Problem("corrupt", "", f"tar archive is damaged after {count} members ({exc})"))
