"""Opening archives from exports without trusting them.

An archive is attacker-controlled: its declared sizes can lie, a few kilobytes can expand to
gigabytes, member names can climb out of the extraction directory ("../../etc/cron.d/x"), and
members can be links or device files. Nothing here touches the file system: members are read into
memory, each capped at the policy's size and compression ratio, all of them together at the
export's expansion budget, and their count and nesting depth are capped too. Compressed streams
(gzip, bzip2, xz) are decompressed with an output limit before anything parses them, so a tar bomb
inside a .tgz is stopped by the same budget.

What cannot be opened safely is reported as a problem and skipped; the rest is returned for the
checks to scan like any file. So are the bytes an archive holds besides its members (see
`coverage`): a zip's comments, extra fields and data outside its records (`ziplayout`), gzip
header fields (file name, comment, extra field) of every member of the stream, tar header text
(names, owners, pax records) and data after a tar's end: they come back as parts, scanned as files
of their own.
"""
from __future__ import annotations

import bz2
import io
import lzma
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from enclave.review.scan import ziplayout
from enclave.review.scan.coverage import CHECKED, INSIDE, UNEXAMINED, Part, Region, part_or_padding
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
    parts: list[Part] = field(default_factory=list)  # bytes besides the members, to scan as files
    regions: list[Region] = field(default_factory=list)  # every byte of the archive, accounted for


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


_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 0x02, 0x04, 0x08, 0x10


def _cstring(data: bytes, at: int) -> int:
    end = data.find(b"\0", at)
    if end < 0:
        raise _Refused("corrupt", "truncated gzip header")
    return end


def gzip_header_parts(data: bytes, number: int) -> tuple[list[Part], int]:
    """The optional fields of the gzip member header at the start of `data` (RFC 1952): the extra
    field's subfields, the original file name and the comment, as parts; and the header's length.
    gunzip and zlib skip them all; a scholar can put anything there."""
    if len(data) < 10 or data[:3] != b"\x1f\x8b\x08":
        raise _Refused("corrupt", f"gzip member {number} has no valid header")
    flags = data[3]
    pos = 10
    parts: list[Part] = []
    if flags & _FEXTRA:
        if pos + 2 > len(data):
            raise _Refused("corrupt", "truncated gzip header")
        (length,) = struct.unpack_from("<H", data, pos)
        extra = data[pos + 2:pos + 2 + length]
        if len(extra) < length:
            raise _Refused("corrupt", "truncated gzip header")
        sub = 0
        while sub + 4 <= len(extra):  # subfields: two id bytes, a length, the data
            size = struct.unpack_from("<H", extra, sub + 2)[0]
            if sub + 4 + size > len(extra):
                break
            ident = extra[sub:sub + 2].decode("latin-1")
            if extra[sub + 4:sub + 4 + size].strip(b"\0"):
                parts.append(Part(f"gzip member {number} extra field {ident!r}", extra[sub + 4:sub + 4 + size],
                                  pos + 2 + sub, 4 + size))
            sub += 4 + size
        if sub < len(extra):
            parts.append(Part(f"gzip member {number} extra field, malformed", extra[sub:], pos + 2 + sub, len(extra) - sub))
        pos += 2 + length
    for flag, what in ((_FNAME, "file name"), (_FCOMMENT, "comment")):
        if flags & flag:
            end = _cstring(data, pos)
            if end > pos:
                parts.append(Part(f"gzip member {number} {what}", data[pos:end], pos, end + 1 - pos))
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return parts, pos


def _decompress(data: bytes, fmt: str, limit: int) -> tuple[bytes, list[Part]]:
    """Decompress a whole gzip/bzip2/xz stream (concatenated members too), refusing output beyond
    `limit` bytes: the decompressor is never asked for more than one byte over the limit. Returns
    the output and, for gzip, every member header's optional fields as parts."""
    out = bytearray()
    parts: list[Part] = []

    def capped() -> int:
        if len(out) > limit:
            raise _Refused("unsafe", f"expands to more than {limit:,} bytes")
        return limit + 1 - len(out)

    remaining = data
    number = 0
    try:
        while remaining:
            if fmt == "gzip":
                number += 1
                fields, _ = gzip_header_parts(remaining, number)
                at = len(data) - len(remaining)
                parts.extend(Part(p.label, p.data, p.offset + at, p.size) for p in fields)
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
    return bytes(out), parts


def open_archive(name: str, data: bytes, fmt: str, policy: ArchivesPolicy, budget: Budget) -> Opened:
    """Members of an archive (`fmt`: zip, tar, gzip, bzip2, xz), the parts it holds besides them,
    where every byte went, or problems saying why not."""
    opened = Opened()
    try:
        if fmt == "zip":
            _zip(data, policy, budget, opened)
            _zip_layout(data, policy, opened)
        elif fmt == "tar":
            _tar(data, policy, budget, opened)
        elif fmt in ("gzip", "bzip2", "xz"):
            # Small outputs are never bombs (a tar's block padding alone compresses 50:1).
            limit = min(policy.max_member_bytes, budget.remaining,
                        max(policy.min_bomb_bytes, int(len(data) * policy.max_compression_ratio)))
            inner, parts = _decompress(data, fmt, limit)
            opened.parts.extend(parts)
            opened.regions.append(Region(f"{fmt} stream", len(data), INSIDE))
            if len(inner) >= 262 and inner[257:262] == b"ustar":
                _tar(inner, policy, budget, opened, account=False)
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
        opened.members.clear()
        opened.parts.clear()
        opened.regions[:] = [Region("whole file (not opened)", len(data), UNEXAMINED)]
    _take_parts(opened, budget)
    return opened


def _zip_layout(data: bytes, policy: ArchivesPolicy, opened: Opened) -> None:
    try:
        layout = ziplayout.layout(data, {m.name for m in opened.members}, policy.max_member_bytes)
    except (ziplayout.ZipLayoutError, struct.error) as exc:
        raise _Refused("corrupt", f"the zip's records do not add up ({exc}); its bytes cannot all be accounted for") from None
    opened.parts.extend(layout.parts)
    opened.regions.extend(layout.regions)


def _take_parts(opened: Opened, budget: Budget) -> None:
    """Parts count against the export's expansion budget like members (they may be inflated)."""
    kept = []
    for part in opened.parts:
        if budget.take(len(part.data)):
            kept.append(part)
        else:
            opened.problems.append(Problem("unsafe", part.label, "the export's expansion budget is used up; not scanned"))
    opened.parts = kept


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


def _tar(data: bytes, policy: ArchivesPolicy, budget: Budget, opened: Opened, account: bool = True) -> None:
    """Members of a tar; also its header text (names, owners, link targets, pax records) as one
    part, non-zero bytes in a member's block padding and anything after the archive's end as
    parts. `account`: whether this tar is the item's own bytes (not the output of a gzip)."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise _Refused("corrupt", f"not a readable tar archive ({exc})") from None
    header_text: list[str] = []
    end = 0
    regions: list[Region] = []
    parts: list[Part] = []
    with archive:
        count = 0
        try:
            for member in archive:
                count += 1
                _check_count(count, policy)
                header_text.extend(filter(None, (member.name, member.linkname, member.uname, member.gname)))
                header_text.extend(f"{k}={v}" for k, v in member.pax_headers.items() if k not in ("path", "linkpath"))
                regions.append(Region("tar headers", member.offset_data - member.offset, CHECKED))
                stored = member.size if member.isreg() else 0
                padded = member.offset_data + -(-stored // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                regions.append(Region("member data", stored, INSIDE))
                part_or_padding(f"block padding after member {_display(member.name)}",
                                data[member.offset_data + stored:padded], member.offset_data + stored, parts, regions)
                end = max(end, padded)
                _tar_member(archive, member, policy, budget, opened)
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            opened.problems.append(Problem("corrupt", "", f"tar archive is damaged after {count} members ({exc})"))
            regions.append(Region("tar archive after the damage", max(0, len(data) - end), UNEXAMINED))
            end = len(data)
    if header_text:
        text = ("\n".join(dict.fromkeys(header_text)) + "\n").encode("utf-8", "surrogateescape")
        parts.append(Part("member names and headers", text, 0, 0))
    # After the last member: the end-of-archive blocks and the record's padding, all zeros.
    part_or_padding("data after the end of the archive", data[end:], end, parts, regions)
    opened.parts.extend(parts)
    if account:
        opened.regions.extend(regions)


def _tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, policy: ArchivesPolicy, budget: Budget,
                opened: Opened) -> None:
    shown = _display(member.name)
    if member.isdir():
        return
    why = unsafe_name(member.name)
    if why:
        opened.problems.append(Problem("unsafe", shown, f"member name has {why}; not extracted"))
        return
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        opened.problems.append(Problem("unsafe", shown, f"member is a {kind} link to "
                                                         f"{_display(member.linkname)!r}; not extracted"))
        return
    if not member.isfile():
        opened.problems.append(Problem("unsafe", shown, "member is a device, pipe or other special file; "
                                                         "not extracted"))
        return
    problem = _size_problem(member.size, member.size, policy, budget)
    if problem:
        opened.problems.append(Problem("unsafe", shown, problem))
        return
    handle = archive.extractfile(member)
    content = handle.read(policy.max_member_bytes + 1) if handle else b""
    if not budget.take(len(content)):
        opened.problems.append(Problem("unsafe", shown, "the export's expansion budget is used up; not extracted"))
        return
    opened.members.append(Member(member.name, content))
