"""Every byte of a JPEG or a GIF, accounted for (PNG has its own module, `png`).

As with PNG, a viewer draws the pixels and ignores the rest: a JPEG's comment (COM) and
application segments (Exif, XMP, ICC profiles, anything an APPn marker is put on) and a GIF's
comment, plain-text and application extensions hold whatever a scholar puts there, and both can go
on after their end marker. Pixels (entropy-coded scans, LZW image data) are for a reviewer's eyes;
markers and the small fixed-layout segments are structure; the rest is handed on as parts
(see `coverage`).
"""
from __future__ import annotations

import re
import struct

from enclave.review.scan.coverage import CHECKED, HUMAN, INSIDE, Part, Region, part_or_padding

# JPEG markers that carry tables or frame/scan headers: structure.
_JPEG_TABLES = (set(range(0xC0, 0xD0)) - {0xC8}) | {0xDB, 0xDC, 0xDD, 0xDE, 0xDF}  # SOFn, DHT, DAC, DQT, DNL, DRI ...
_SOS, _EOI, _SOI, _COM = 0xDA, 0xD9, 0xD8, 0xFE
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # not a stuffed 0xFF00, not a restart marker


def _jpeg_app(marker: int, body: bytes) -> bool:
    """Whether an APPn segment is one whose layout is fixed and fully interpreted."""
    if marker == 0xE0 and body.startswith(b"JFIF\0") and len(body) == 14:
        return True  # JFIF without a thumbnail
    if marker == 0xEE and body.startswith(b"Adobe") and len(body) == 12:
        return True  # Adobe colour transform
    return False


def jpeg(data: bytes) -> tuple[list[Part], list[Region]]:
    parts: list[Part] = []
    regions: list[Region] = [Region("JPEG markers and tables", 2, CHECKED)]
    pos = 2
    pixels = 0
    ended = False
    while pos + 4 <= len(data) and not ended:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            regions.append(Region("JPEG markers and tables", 1, CHECKED))
            pos += 1
            continue
        if marker == _EOI:
            regions.append(Region("JPEG markers and tables", 2, CHECKED))
            pos += 2
            ended = True
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # restart markers, TEM: no length
            regions.append(Region("JPEG markers and tables", 2, CHECKED))
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            break
        body = data[pos + 4:end]
        if marker == _SOS:
            regions.append(Region("JPEG markers and tables", end - pos, CHECKED))
            # Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00 nor a restart.
            marker_at = _NEXT_MARKER.search(data, end)
            scan = marker_at.start() if marker_at else len(data)
            pixels += scan - end
            pos = scan
            continue
        if marker in _JPEG_TABLES or _jpeg_app(marker, body):
            regions.append(Region("JPEG markers and tables", end - pos, CHECKED))
        elif marker == _COM:
            parts.append(Part(f"JPEG comment at byte {pos}", body, pos, end - pos))
            regions.append(Region("JPEG comments", end - pos, INSIDE))
        else:
            name = f"APP{marker - 0xE0}" if 0xE0 <= marker <= 0xEF else f"marker 0x{marker:02X}"
            # APPn segments open with a NUL-terminated identifier ("Exif", "ICC_PROFILE", XMP's URI).
            head, sep, rest = body[:80].partition(b"\0")
            tag = head.decode("latin-1") if sep and head[:1].isalpha() and head.isascii() else ""
            if tag:
                body = body[len(head) + 1:]
            label = f"JPEG {name} segment{f' {tag!r}' if tag else ''} at byte {pos}"
            if body.strip(b"\0"):
                parts.append(Part(label, body, pos, end - pos))
                regions.append(Region(f"JPEG {name} segments", end - pos, INSIDE))
            else:
                regions.append(Region(f"JPEG {name} segments (zero padding)", end - pos, CHECKED))
        pos = end
    if pixels:
        regions.append(Region("JPEG pixels (entropy-coded scans)", pixels, HUMAN))
    part_or_padding("data after the end of the image" if ended else f"bytes at {pos} that are not JPEG segments",
                    data[pos:], pos, parts, regions)
    return parts, regions


def _sub_blocks(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The concatenated data of a GIF sub-block chain at `pos`, and the position after it."""
    out = bytearray()
    while pos < len(data):
        size = data[pos]
        pos += 1
        if size == 0:
            return bytes(out), pos
        if pos + size > len(data):
            return None
        out += data[pos:pos + size]
        pos += size
    return None


def gif(data: bytes) -> tuple[list[Part], list[Region]]:
    parts: list[Part] = []
    if len(data) < 13:
        return parts, [Region("", len(data), HUMAN)]
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    regions: list[Region] = [Region("GIF header and colour tables", min(pos, len(data)), HUMAN)]
    ended = False
    while pos < len(data) and not ended:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            regions.append(Region("GIF blocks", 1, CHECKED))
            pos += 1
            ended = True
        elif kind == 0x2C:  # image: descriptor, local colour table, LZW data
            if pos + 11 > len(data):
                break
            local = data[pos + 9]
            start = pos + 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
            chain = _sub_blocks(data, start)
            if chain is None:
                break
            regions.append(Region("GIF pixels (image data)", chain[1] - pos, HUMAN))
            pos = chain[1]
        elif kind == 0x21 and pos + 2 <= len(data):
            label = data[pos + 1]
            chain = _sub_blocks(data, pos + 2)
            if chain is None:
                break
            body, end = chain
            if label == 0xF9 and len(body) == 4:  # graphic control: delay, transparency
                regions.append(Region("GIF blocks", end - pos, CHECKED))
            elif label == 0xFF and body.startswith((b"NETSCAPE2.0", b"ANIMEXTS1.0")) and len(body) == 14:
                regions.append(Region("GIF blocks", end - pos, CHECKED))  # the loop count
            else:
                what = {0xFE: "comment", 0x01: "plain text extension", 0xFF: "application extension"}.get(
                    label, f"extension 0x{label:02X}")
                parts.append(Part(f"GIF {what} at byte {pos}", body, pos, end - pos))
                regions.append(Region(f"GIF {what}s", end - pos, INSIDE))
            pos = end
        else:
            break
    part_or_padding("data after the GIF trailer" if ended else f"bytes at {pos} that are not GIF blocks",
                    data[pos:], pos, parts, regions)
    return parts, regions
