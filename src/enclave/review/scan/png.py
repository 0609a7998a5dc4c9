"""Every byte of a PNG, accounted for.

A viewer draws the pixels and ignores the rest: text chunks (tEXt, zTXt, iTXt) can hold any
amount of text, private chunks any bytes, and nothing stops a file from going on after its IEND
chunk. The pixels (IDAT and the palette) are for a reviewer's eyes; the small chunks whose layout
is fixed (size, colour space, resolution, time) are structure; text chunks are decompressed and
handed on as text parts, and every other chunk, a chunk whose CRC does not match, and anything
after IEND are handed on as raw parts (see `coverage`).
"""
from __future__ import annotations

import struct
import zlib

from enclave.review.scan.coverage import CHECKED, HUMAN, INSIDE, Part, Region, part_or_padding

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks with a fixed, fully interpreted layout, and their largest valid size.
_FIXED = {b"IHDR": 13, b"IEND": 0, b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"tIME": 7, b"sBIT": 4,
          b"bKGD": 6, b"acTL": 8, b"fcTL": 26, b"cICP": 4}
# Chunks a viewer draws: for human eyes.
_PIXELS = {b"IDAT", b"fdAT", b"PLTE", b"tRNS", b"hIST"}
_TEXT = {b"tEXt", b"zTXt", b"iTXt"}


class PngError(ValueError):
    pass


def _inflate(data: bytes, limit: int) -> bytes:
    engine = zlib.decompressobj()
    out = engine.decompress(data, limit + 1)
    if len(out) > limit:
        raise PngError(f"expands to more than {limit:,} bytes")
    if not engine.eof:
        raise PngError("truncated compressed text")
    return out


def _text_chunk(kind: bytes, body: bytes, limit: int) -> tuple[str, bytes]:
    """(keyword, text as UTF-8) of a text chunk; PngError if it does not follow its layout."""
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        raise PngError("no keyword separator")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1").encode("utf-8")
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            raise PngError("unknown compression method")
        return name, _inflate(rest[1:], limit).decode("latin-1").encode("utf-8")
    # iTXt: compression flag and method, language tag, translated keyword, UTF-8 text.
    if len(rest) < 2:
        raise PngError("truncated iTXt header")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    language, sep1, rest = rest.partition(b"\0")
    translated, sep2, text = rest.partition(b"\0")
    if not (sep1 and sep2) or compressed not in (0, 1) or (compressed and method != 0):
        raise PngError("malformed iTXt header")
    if compressed:
        text = _inflate(text, limit)
    header = b"\n".join(x for x in (language, translated) if x)
    return name, (header + b"\n" + text) if header else text


def dissect(data: bytes, limit: int) -> tuple[list[Part], list[Region]]:
    """Parts and regions of the PNG `data`; text is inflated to at most `limit` bytes a chunk."""
    parts: list[Part] = []
    regions: list[Region] = [Region("PNG signature", len(SIGNATURE), CHECKED)]
    pos = len(SIGNATURE)
    pixels = 0
    ended = False
    while pos < len(data) and not ended:
        if pos + 12 > len(data):
            break
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data) or not kind.isalpha():
            break  # not a chunk: what is left is handed on whole below
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        shown = kind.decode("latin-1")
        if crc != zlib.crc32(kind + body):
            parts.append(Part(f"PNG chunk {shown} at byte {pos} with a bad CRC", data[pos:end], pos, end - pos))
            regions.append(Region(f"PNG chunk {shown} (bad CRC)", end - pos, INSIDE))
        elif kind in _FIXED and length <= _FIXED[kind]:
            regions.append(Region("PNG chunk headers and fixed-layout chunks", end - pos, CHECKED))
        elif kind in _PIXELS:
            pixels += length
            regions.append(Region("PNG chunk headers and fixed-layout chunks", 12, CHECKED))
        elif kind in _TEXT:
            try:
                keyword, text = _text_chunk(kind, body, limit)
            except (PngError, zlib.error, UnicodeDecodeError):
                parts.append(Part(f"PNG {shown} chunk at byte {pos} that does not follow its layout", body, pos, end - pos))
            else:
                parts.append(Part(f"PNG {shown} chunk {keyword[:80]!r}", keyword.encode("utf-8") + b"\n" + text,
                                  pos, end - pos))
            regions.append(Region(f"PNG {shown} chunks", end - pos, INSIDE))
        else:
            # iCCP, eXIf and private chunks: bytes no check here understands, handed on as they are.
            if body.strip(b"\0"):
                parts.append(Part(f"PNG chunk {shown} at byte {pos}", body, pos, length))
                regions.append(Region(f"PNG chunk {shown}", length, INSIDE))
                regions.append(Region("PNG chunk headers and fixed-layout chunks", 12, CHECKED))
            else:
                regions.append(Region(f"PNG chunk {shown} (zero padding)", end - pos, CHECKED))
        ended = kind == b"IEND"
        pos = end
    if pixels:
        regions.append(Region("PNG pixels (IDAT, palette)", pixels, HUMAN))
    label = "data after IEND" if ended else f"bytes at {pos} that are not PNG chunks"
    part_or_padding(label, data[pos:], pos, parts, regions)
    return parts, regions
