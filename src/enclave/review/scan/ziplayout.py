"""Every byte of a zip file (and of the OOXML/ODF packages that are zips), accounted for.

`zipfile` reads what the central directory lists and nothing else. A zip can carry much more: an
archive comment, a comment per member, extra fields in local and central headers, data before the
first entry, between entries (a local entry the central directory leaves out is invisible to
zipfile and unzip alike) and after the end-of-central-directory record. This module walks the
file's structure itself: the records it can parse and validate are structure; members' data is
accounted for by whoever extracted them; everything else is handed on as a `Part` (scanned as a
file of its own), unless it is zero padding. Member names are a part too ("member names"): they
are text a scholar chose, and the checks read them like any text.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from enclave.review.scan.coverage import CHECKED, INSIDE, UNEXAMINED, Part, Region, is_padding, part_or_padding

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment length
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_MAX_COMMENT = 65535

# Extra fields whose layout is fixed and fully interpreted (times, owners, sizes): structure, as long
# as they are no longer than their layout allows. Anything else in an extra field is handed on.
_KNOWN_EXTRA = {
    0x0001: 28,  # ZIP64 sizes and offset
    0x000A: 36,  # NTFS times
    0x5455: 13,  # extended timestamp
    0x5855: 12,  # Info-ZIP Unix (old)
    0x7855: 8,  # Info-ZIP Unix
    0x7875: 20,  # Info-ZIP Unix uid/gid
    0x9901: 7,  # WinZip AES header
    0xCAFE: 0,  # JAR marker
}
_UNICODE_PATH = 0x7075
_UNICODE_COMMENT = 0x6375
_ANDROID_ALIGNMENT = 0xD935


class ZipLayoutError(ValueError):
    pass


@dataclass
class Layout:
    parts: list[Part] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)


@dataclass
class _Entry:
    name: str
    local: int  # offset of the local header
    compressed: int
    flags: int
    zip64: bool


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8", "replace") if flags & 0x800 else raw.decode("cp437")


def _end_record(data: bytes) -> int:
    """Where the end-of-central-directory record is, found as zipfile finds it (the last signature
    within a comment's reach of the end)."""
    if len(data) >= _EOCD.size and data[-_EOCD.size:-_EOCD.size + 4] == b"PK\x05\x06" and data[-2:] == b"\0\0":
        return len(data) - _EOCD.size
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - _MAX_COMMENT - _EOCD.size))
    if at < 0 or at + _EOCD.size > len(data):
        raise ZipLayoutError("no end-of-central-directory record")
    return at


def _extra(raw: bytes, member: str, where: str, at: int, names: list[str], found: dict) -> list[Region]:
    """Regions of one header's extra field; unknown or oversized subfields go into `found`
    (keyed by id and content, so that the same field in the local and the central header is one part)."""
    regions: list[Region] = []
    pos = 0
    while pos + 4 <= len(raw):
        ident, size = struct.unpack_from("<HH", raw, pos)
        body = raw[pos + 4:pos + 4 + size]
        if len(body) < size:
            break
        pos += 4 + size
        if ident in _KNOWN_EXTRA and size <= _KNOWN_EXTRA[ident] or is_padding(body):
            regions.append(Region(f"extra field of member {member} ({where})", 4 + size, CHECKED))
            continue
        if ident == _ANDROID_ALIGNMENT and is_padding(body[2:]):
            regions.append(Region(f"extra field of member {member} ({where})", 4 + size, CHECKED))
            continue
        if ident == _UNICODE_PATH and size > 5:
            names.append(body[5:].decode("utf-8", "replace"))
            regions.append(Region("member names", 4 + size, INSIDE))
            continue
        content = body[5:] if ident == _UNICODE_COMMENT and size > 5 else body
        key = (ident, content)
        label = f"extra field of member {member}, id 0x{ident:04x}"
        if key not in found:
            found[key] = Part(label, content, at + pos - size, 4 + size)
        regions.append(Region(label, 4 + size, INSIDE))
    if pos < len(raw):  # a subfield cut short: its bytes follow no layout at all
        label = f"extra field of member {member}, malformed"
        rest = raw[pos:]
        found.setdefault((-1, rest), Part(label, rest, at + pos, len(rest)))
        regions.append(Region(label, len(rest), INSIDE))
    return regions


def layout(data: bytes, extracted: set[str], limit: int) -> Layout:
    """Account for every byte of the zip `data`. `extracted` names the members that were extracted
    (their data is accounted for by their own items); the data of any other member is unexamined
    (the archive check says why). A local entry that the central directory does not list is
    inflated (at most `limit` bytes) and handed on as a part."""
    out = Layout()
    spans: list[tuple[int, int]] = []  # bytes accounted for, to find what is left between them

    def take(start: int, end: int, label: str, how: str) -> None:
        if end > start:
            spans.append((start, end))
            out.regions.append(Region(label, end - start, how))

    end = _end_record(data)
    _, _, _, _, count, cd_size, cd_offset, comment_length = _EOCD.unpack_from(data, end)
    take(end, end + _EOCD.size, "end of central directory", CHECKED)
    comment = data[end + _EOCD.size:end + _EOCD.size + comment_length]
    if comment:
        spans.append((end + _EOCD.size, end + _EOCD.size + len(comment)))
        part_or_padding("zip comment", comment, end + _EOCD.size, out.parts, out.regions)
    directory_end = end
    locator = end - _EOCD64_LOCATOR.size
    if locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        _, _, record, _ = _EOCD64_LOCATOR.unpack_from(data, locator)
        take(locator, end, "zip64 locator", CHECKED)
        # The zip64 record sits just before its locator, whatever offset it claims (prepended data).
        size = None
        for start in (record, locator - _EOCD64.size):
            if 0 <= start and data[start:start + 4] == b"PK\x06\x06" and start + _EOCD64.size <= locator:
                size = struct.unpack_from("<Q", data, start + 4)[0]
                _, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack_from(data, start)
                take(start, start + _EOCD64.size, "zip64 end of central directory", CHECKED)
                extensible = data[start + _EOCD64.size:start + 12 + size]
                spans.append((start + _EOCD64.size, start + _EOCD64.size + len(extensible)))
                part_or_padding("zip64 extensible data", extensible, start + _EOCD64.size, out.parts, out.regions)
                directory_end = start
                break
        if size is None:
            raise ZipLayoutError("zip64 locator without its record")
    # Data prepended to the archive shifts every offset by the same amount (zipfile's "concat").
    shift = directory_end - cd_size - cd_offset
    if shift < 0:
        raise ZipLayoutError("central directory out of bounds")
    names: list[str] = []
    found: dict = {}
    entries: list[_Entry] = []
    pos = cd_offset + shift
    stop = pos + cd_size
    while pos + _CENTRAL.size <= stop:
        fields = _CENTRAL.unpack_from(data, pos)
        if fields[0] != b"PK\x01\x02":
            break
        flags, compressed, local = fields[6], fields[10], fields[18]
        name_length, extra_length, comment_length = fields[12], fields[13], fields[14]
        head = pos + _CENTRAL.size
        raw_name = data[head:head + name_length]
        name = _decode_name(raw_name, flags)
        names.append(name)
        extra = data[head + name_length:head + name_length + extra_length]
        member_comment = data[head + name_length + extra_length:head + name_length + extra_length + comment_length]
        take(pos, head, "central directory", CHECKED)
        take(head, head + name_length, "member names", INSIDE)
        spans.append((head + name_length, head + name_length + extra_length))
        out.regions.extend(_extra(extra, name, "central header", head + name_length, names, found))
        if member_comment:
            at = head + name_length + extra_length
            spans.append((at, at + len(member_comment)))
            part_or_padding(f"comment of member {name}", member_comment, at, out.parts, out.regions)
        zip64 = compressed == 0xFFFFFFFF or local == 0xFFFFFFFF
        if zip64:  # the real values are in the zip64 extra field, in this order, each only when needed
            values = iter(_zip64_values(extra))
            if fields[11] == 0xFFFFFFFF:
                next(values, None)
            if compressed == 0xFFFFFFFF:
                compressed = next(values, compressed)
            if local == 0xFFFFFFFF:
                local = next(values, local)
        entries.append(_Entry(name, local + shift, compressed, flags, zip64))
        pos = head + name_length + extra_length + comment_length
    if len(entries) != count and count != 0xFFFF:
        raise ZipLayoutError(f"central directory lists {len(entries)} entries, its end record says {count}")
    for entry in entries:
        at = entry.local
        if at + _LOCAL.size > len(data) or data[at:at + 4] != b"PK\x03\x04":
            continue  # zipfile refused this member; the archive check reports it
        fields = _LOCAL.unpack_from(data, at)
        name_length, extra_length = fields[10], fields[11]
        head = at + _LOCAL.size
        take(at, head, "local headers", CHECKED)
        local_name = _decode_name(data[head:head + name_length], fields[2])
        if local_name != entry.name:
            names.append(local_name)
        take(head, head + name_length, "member names", INSIDE)
        extra = data[head + name_length:head + name_length + extra_length]
        spans.append((head + name_length, head + name_length + len(extra)))
        out.regions.extend(_extra(extra, entry.name, "local header", head + name_length, names, found))
        start = head + name_length + extra_length
        stored = min(entry.compressed, max(0, len(data) - start))
        how = INSIDE if entry.name in extracted or entry.name.endswith("/") and stored == 0 else UNEXAMINED
        take(start, start + stored, f"member {entry.name}" if how == UNEXAMINED else "member data", how)
        after = start + stored
        if entry.flags & 0x08:  # a data descriptor follows: optional signature, CRC, two sizes
            length = 12 + (8 if entry.zip64 else 0)
            if data[after:after + 4] == b"PK\x07\x08":
                length += 4
            take(after, min(after + length, len(data)), "data descriptors", CHECKED)
    out.parts.extend(found.values())
    if names:
        text = "\n".join(dict.fromkeys(names)) + "\n"
        out.parts.append(Part("member names", text.encode("utf-8"), 0, sum(r.size for r in out.regions
                                                                            if r.label == "member names")))
    _leftovers(data, spans, out, limit)
    return out


def _zip64_values(extra: bytes) -> list[int]:
    pos = 0
    while pos + 4 <= len(extra):
        ident, size = struct.unpack_from("<HH", extra, pos)
        if ident == 0x0001:
            body = extra[pos + 4:pos + 4 + size]
            return [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
        pos += 4 + size
    return []


def _leftovers(data: bytes, spans: list[tuple[int, int]], out: Layout, limit: int) -> None:
    """Bytes no record claims: before the first, between two, after the last."""
    covered = 0
    first = min((a for a, _ in spans), default=len(data))
    last = max((b for _, b in spans), default=0)
    for start, end in sorted(spans) + [(len(data), len(data))]:
        if start > covered:
            if covered == 0 and start == first:
                label = "data before the archive"
            elif covered >= last:
                label = "data after the end of the archive"
            else:
                label = f"data between entries at byte {covered}"
            gap = covered
            while gap < start:
                hidden = _unlisted_entry(data, gap, start, limit)
                if hidden is None:
                    part_or_padding(label, data[gap:start], gap, out.parts, out.regions)
                    break
                out.parts.extend(hidden)
                out.regions.extend(Region(p.label, p.size, INSIDE) for p in hidden)
                gap += sum(p.size for p in hidden)
        covered = max(covered, end)


def _unlisted_entry(data: bytes, at: int, stop: int, limit: int) -> list[Part] | None:
    """A local entry at `at` that no central directory record points to: zipfile and unzip never
    show it, but its bytes leave with the file. Stored and deflated entries with their sizes in
    the header are recovered; anything else stays raw bytes for the caller."""
    if at + _LOCAL.size > stop or data[at:at + 4] != b"PK\x03\x04":
        return None
    fields = _LOCAL.unpack_from(data, at)
    flags, method, compressed, name_length, extra_length = fields[3], fields[4], fields[8], fields[10], fields[11]
    begin = at + _LOCAL.size + name_length + extra_length
    if flags & 0x09 or method not in (0, 8) or begin + compressed > stop:
        return None  # encrypted, sizes in a data descriptor, or a method we do not inflate
    name = _decode_name(data[at + _LOCAL.size:at + _LOCAL.size + name_length], flags)
    raw = data[begin:begin + compressed]
    if method == 8:
        engine = zlib.decompressobj(-15)
        try:
            raw = engine.decompress(raw, limit + 1)
        except zlib.error:
            return None
        if len(raw) > limit or not engine.eof:
            return None
    label = f"member {name} not listed in the central directory"
    extra = data[begin - extra_length:begin]
    parts = [Part(label, raw, at, begin + compressed - at - (0 if is_padding(extra) else extra_length))]
    if extra_length and not is_padding(extra):  # its extra field, handed on whole
        parts.append(Part(f"extra field of {label}", extra, begin - extra_length, extra_length))
    return parts
