"""Every byte of a PDF, accounted for, without a PDF library.

A PDF viewer shows the pages of the file's last revision. Everything else still leaves with the
file: attached files (/EmbeddedFile streams), the objects an incremental update replaced (the
revision before the update, appended after the first %%EOF, is invisible in a viewer), objects no
page uses, comments, metadata and anything after the last %%EOF. This module walks the file
object by object (no rendering, no fonts): it decodes what the standard filters can decode and
hands it on as parts, scanned as files of their own (see `coverage`):

- "PDF objects": the text of every object outside its streams (dictionaries, arrays, strings,
  written out decoded too), trailers and the objects inside object streams;
- "PDF content streams": the strings that page contents, forms and glyph procedures show, one
  line per string or kerned array (their operators and numbers draw; they are for human eyes),
  and metadata (XMP) whole;
- "PDF objects replaced by later revisions": the same for objects an update redefined;
- "PDF embedded file in object N": each attachment, decoded;
- "PDF stream in object N": a stream that is neither text nor pixels nor a font, or that cannot
  be decoded (an unknown filter, encryption) - raw, so that it is unexamined unless the checks can
  read it;
- "PDF comments", "data after the last %%EOF", "bytes outside any object at byte N".

Images, fonts, colour profiles and shadings are what a reviewer sees when the pages are rendered:
for human eyes. Cross-reference tables and streams are structure.
"""
from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass, field

from enclave.review.scan.coverage import CHECKED, HUMAN, INSIDE, Part, Region, part_or_padding
from enclave.review.scan.detect import looks_like_text

_WS = b" \t\r\n\f\0"
_OBJ = re.compile(rb"(\d{1,10})[ \t\r\n\f\0]+(\d{1,5})[ \t\r\n\f\0]+obj(?![A-Za-z])")
_NEXT = re.compile(rb"\d{1,10}[ \t\r\n\f\0]+\d{1,5}[ \t\r\n\f\0]+obj(?![A-Za-z])|xref|trailer|startxref|%%EOF")
_NAME = rb"/([A-Za-z0-9#_.+-]+)"
_IMAGE_FILTERS = {"DCTDecode", "DCT", "JPXDecode", "JBIG2Decode", "CCITTFaxDecode", "CCF"}
_FONT_KEYS = re.compile(rb"/Length[123]\b|/Subtype\s*/(?:Type1C|CIDFontType0C|OpenType)\b")
_RENDERED = re.compile(rb"/Subtype\s*/Image\b|/ImageMask\b|/FunctionType\b|/ShadingType\b|/N\s+\d|/Type\s*/XObject\s*/Subtype\s*/Image\b")


class PdfError(ValueError):
    pass


@dataclass
class _Walk:
    limit: int
    parts: list[Part] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # text of objects outside streams
    content: list[str] = field(default_factory=list)  # streams that decode to text
    comments: list[str] = field(default_factory=list)
    seen: dict[int, list[tuple[int, int, bytes, bytes | None]]] = field(default_factory=dict)  # number -> definitions
    revisions: int = 0


def _skip_ws(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in _WS:
        pos += 1
    return pos


def _literal(data: bytes, pos: int) -> tuple[bytes, int]:
    """The literal string starting at data[pos] == '(' decoded, and the position after it."""
    out = bytearray()
    depth = 0
    i = pos
    while i < len(data):
        c = data[i]
        if c == 0x5C:  # backslash
            i += 1
            if i >= len(data):
                break
            e = data[i]
            if e in b"01234567":
                j = i
                while j < min(i + 3, len(data)) and data[j] in b"01234567":
                    j += 1
                out.append(int(data[i:j], 8) & 0xFF)
                i = j
                continue
            if e in b"\r\n":  # a line continuation
                i += 2 if data[i:i + 2] == b"\r\n" else 1
                continue
            out += {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}.get(e, bytes([e]))
            i += 1
            continue
        if c == 0x28:
            depth += 1
            if depth > 1:
                out.append(c)
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return bytes(out), i + 1
            out.append(c)
        else:
            out.append(c)
        i += 1
    return bytes(out), len(data)


def _text_of(raw: bytes) -> str | None:
    """A string's text, or None when it is not text (an ID, a hash, encrypted bytes): those stay in
    the fragment's own text, escaped."""
    if raw.startswith((b"\xfe\xff", b"\xff\xfe")):
        text = raw.decode("utf-16", "replace")
    elif raw.count(0) * 3 >= len(raw) > 0 and len(raw) % 2 == 0:  # two-byte codes of a CID font
        text = raw.decode("utf-16-be", "replace")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    return None if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text) else text


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


_SPECIAL = re.compile(rb"[(<%\[\]]")


def strings(data: bytes) -> list[str]:
    """Every string of a PDF fragment, decoded; the strings of one array (a TJ's kerned pieces)
    are joined into one."""
    out: list[str] = []
    array: list[str] | None = None
    i = 0
    while i < len(data):
        special = _SPECIAL.search(data, i)  # operators and numbers in between are skipped at C speed
        if special is None:
            break
        i = special.start()
        c = data[i]
        if c == 0x28:
            raw, i = _literal(data, i)
            (array if array is not None else out).append(_text_of(raw) or "")
            continue
        if c == 0x3C and data[i + 1:i + 2] != b"<":
            end = data.find(b">", i)
            if end < 0:
                break
            digits = re.sub(rb"[^0-9A-Fa-f]", b"", data[i + 1:end])
            try:
                raw = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
            except binascii.Error:
                raw = b""
            (array if array is not None else out).append(_text_of(raw) or "")
            i = end + 1
            continue
        if c == 0x3C:
            i += 2
            continue
        if c == 0x25:  # a comment runs to the end of the line
            while i < len(data) and data[i] not in b"\r\n":
                i += 1
            continue
        if c == 0x5B:
            array = []
        elif c == 0x5D and array is not None:
            if array:
                out.append("".join(array))
            array = None
        i += 1
    if array:
        out.append("".join(array))
    return [s for s in out if s.strip()]


def _readable(raw: bytes) -> str:
    """A fragment's text with its strings decoded after it, so that checks read both. Control bytes
    (in binary strings) are written as escapes: the fragment stays text, and every byte is in it."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", raw.decode("latin-1"))
    decoded = strings(raw)
    return text + ("\n" + "\n".join(decoded) if decoded else "")


def _dict_end(data: bytes, pos: int) -> int:
    """The position after the dictionary that starts at data[pos:pos+2] == '<<', or -1."""
    depth = 0
    i = pos
    while i < len(data):
        if data.startswith(b"<<", i):
            depth += 1
            i += 2
        elif data.startswith(b">>", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        elif data[i] == 0x28:
            _, i = _literal(data, i)
        elif data[i] == 0x25:
            while i < len(data) and data[i] not in b"\r\n":
                i += 1
        else:
            i += 1
    return -1


def _filters(dictionary: bytes) -> list[str]:
    m = re.search(rb"/Filter\s*(\[[^\]]*\]|/[A-Za-z0-9]+)", dictionary)
    return [] if m is None else [n.decode() for n in re.findall(_NAME, m.group(1))]


def _decode(raw: bytes, filters: list[str], limit: int) -> tuple[bytes, str | None]:
    """(decoded bytes, None) or (what was decoded so far, the filter it stopped at)."""
    data = raw
    for name in filters:
        if name in ("FlateDecode", "Fl"):
            engine = zlib.decompressobj()
            try:
                out = engine.decompress(data, limit + 1)
            except zlib.error:
                return data, name
            if len(out) > limit:
                raise PdfError(f"a stream expands to more than {limit:,} bytes")
            data = out
        elif name in ("ASCIIHexDecode", "AHx"):
            digits = re.sub(rb"[^0-9A-Fa-f]", b"", data.split(b">", 1)[0])
            data = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
        elif name in ("ASCII85Decode", "A85"):
            body = data.strip().removeprefix(b"<~").split(b"~>", 1)[0]
            try:
                data = base64.a85decode(re.sub(rb"\s", b"", body))
            except ValueError:
                return data, name
        elif name in ("RunLengthDecode", "RL"):
            data = _run_length(data)
        else:
            return data, name
    return data, None


def _run_length(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        n = data[i]
        if n == 128:
            break
        if n < 128:
            out += data[i + 1:i + 2 + n]
            i += 2 + n
        else:
            out += data[i + 1:i + 2] * (257 - n)
            i += 2
    return bytes(out)


def dissect(data: bytes, limit: int) -> tuple[list[Part], list[Region]]:
    walk = _Walk(limit)
    header_end = data.find(b"\n", 0, 1024)
    header_end = len(data) if header_end < 0 else header_end + 1
    walk.regions.append(Region("PDF header", header_end, CHECKED))
    pos = header_end
    while pos < len(data):
        blank = _skip_ws(data, pos)
        if blank > pos:
            walk.regions.append(Region("whitespace between objects", blank - pos, CHECKED))
        pos = blank
        if pos >= len(data):
            break
        if data[pos] == 0x25:  # a comment, or %%EOF
            end = pos
            while end < len(data) and data[end] not in b"\r\n":
                end += 1
            line = data[pos:end]
            if line.startswith(b"%%EOF"):
                walk.revisions += 1
                walk.regions.append(Region("cross-reference sections", end - pos, CHECKED))
            elif pos == header_end and len(line) <= 16 and sum(b >= 0x80 for b in line) >= 4:
                walk.regions.append(Region("PDF header", end - pos, CHECKED))  # the binary marker line
            else:
                walk.comments.append(line[1:].decode("latin-1"))
                walk.regions.append(Region("PDF comments", end - pos, INSIDE))
            pos = end
            continue
        m = _OBJ.match(data, pos)
        if m:
            pos = _object(data, m, walk)
            continue
        if data.startswith(b"xref", pos):
            end = data.find(b"trailer", pos)
            end = len(data) if end < 0 else end
            walk.regions.append(Region("cross-reference sections", end - pos, CHECKED))
            pos = end
            continue
        if data.startswith(b"trailer", pos):
            start = _skip_ws(data, pos + 7)
            end = _dict_end(data, start) if data.startswith(b"<<", start) else -1
            end = len(data) if end < 0 else end
            walk.objects.append("trailer " + _readable(data[start:end]))
            walk.regions.append(Region("PDF objects", end - pos, INSIDE))
            pos = end
            continue
        xref = re.compile(rb"startxref[ \t\r\n\f\0]+\d{1,12}").match(data, pos)
        if xref:
            walk.regions.append(Region("cross-reference sections", xref.end() - pos, CHECKED))
            pos = xref.end()
            continue
        # Bytes that are none of the above: up to the next thing we recognise.
        nxt = _NEXT.search(data, pos + 1)
        end = len(data) if nxt is None else nxt.start()
        label = "data after the last %%EOF" if nxt is None and walk.revisions else f"bytes outside any object at byte {pos}"
        part_or_padding(label, data[pos:end], pos, walk.parts, walk.regions)
        pos = end
    _finish(walk)
    if any(piece.startswith("trailer") and "/Encrypt" in piece for piece in walk.objects) or \
            re.search(rb"/Type\s*/XRef[^>]*/Encrypt|/Encrypt[^>]*/Type\s*/XRef", data):
        # Strings and streams are encrypted: what was "read" above is ciphertext.
        walk.parts.append(Part("encrypted PDF: its strings and streams cannot be read", data, 0, len(data)))
    return walk.parts, walk.regions


def _object(data: bytes, m: re.Match, walk: _Walk) -> int:
    """Account for one indirect object starting at m; the position after it."""
    number = int(m.group(1))
    start = m.start()
    body = _skip_ws(data, m.end())
    stream: tuple[bytes, bytes] | None = None  # (dictionary, raw stream data)
    if data.startswith(b"<<", body):
        dict_end = _dict_end(data, body)
        if dict_end < 0:
            end = len(data)
            walk.seen.setdefault(number, []).append((start, end, data[body:end], None))
            return end
        after = _skip_ws(data, dict_end)
        if data.startswith(b"stream", after):
            first = after + 6
            first += 2 if data.startswith(b"\r\n", first) else 1 if data[first:first + 1] in (b"\n", b"\r") else 0
            dictionary = data[body:dict_end]
            length = re.search(rb"/Length\s+(\d+)(?!\d)(?![ \t\r\n]+\d+[ \t\r\n]+R)", dictionary)
            last = -1
            if length:
                candidate = first + int(length.group(1))
                if data.startswith(b"endstream", _skip_ws(data, candidate)):
                    last = candidate
            if last < 0:  # a wrong or indirect /Length: the stream runs to "endstream"
                found = data.find(b"endstream", first)
                last = len(data) if found < 0 else found
                while last > first and data[last - 1] in b"\r\n":
                    last -= 1
            stream = (dictionary, data[first:last])
            tail = _skip_ws(data, last)
            tail = tail + 9 if data.startswith(b"endstream", tail) else tail
            close = _skip_ws(data, tail)
            end = close + 6 if data.startswith(b"endobj", close) else tail
            walk.seen.setdefault(number, []).append((start, end, dictionary, stream[1]))
            return end
    # Up to "endobj", or to the next object if it has none (searching no further: linear in the file).
    nxt = _OBJ.search(data, body)
    limit = nxt.start() if nxt is not None else len(data)
    close = data.find(b"endobj", body, limit)
    if close < 0:
        close = end = limit
    else:
        end = close + 6
    walk.seen.setdefault(number, []).append((start, end, data[body:close], None))
    return end


_FONT_REFS = re.compile(rb"/(?:FontFile[23]?|CIDToGIDMap|CIDSet)\s+(\d+)\s+\d+\s+R")


def _finish(walk: _Walk) -> None:
    replaced: list[str] = []
    # Streams that fonts point to (glyph programs, CID maps) are rendered, not read.
    fonts = {int(m.group(1)) for definitions in walk.seen.values() for _, _, text, _ in definitions
             for m in _FONT_REFS.finditer(text)}
    for number, definitions in walk.seen.items():
        for index, (start, end, text, stream) in enumerate(definitions):
            old = index < len(definitions) - 1  # an update defined this object again after it
            target = replaced if old else walk.objects
            size = end - start
            if stream is None:
                target.append(f"object {number}: {_readable(text)}")
                walk.regions.append(Region("PDF objects", size, INSIDE))
                continue
            target.append(f"object {number}: {_readable(text)}")
            walk.regions.append(Region("PDF objects", size - len(stream), INSIDE))
            _stream(number, text, stream, old, replaced, walk, number in fonts)
    texts = (("PDF objects", walk.objects), ("PDF content streams", walk.content),
             ("PDF objects replaced by later revisions", replaced), ("PDF comments", walk.comments))
    for label, pieces in texts:
        if pieces:
            text = "\n".join(pieces) + "\n"
            walk.parts.append(Part(label, text.encode("utf-8", "surrogatepass"), 0, 0))
    if walk.revisions > 1:
        walk.regions.append(Region(f"{walk.revisions} revisions (incremental updates)", 0, CHECKED))


_STRING_START = re.compile(rb"[(<]")


def _operators(decoded: bytes) -> bytes:
    """A content stream without its strings: operators and numbers are text even where a string
    holds raw two-byte glyph codes."""
    out = bytearray()
    i = 0
    while i < len(decoded):
        special = _STRING_START.search(decoded, i)
        if special is None:
            out += decoded[i:]
            break
        out += decoded[i:special.start()]
        i = special.start()
        c = decoded[i]
        if c == 0x28:
            _, i = _literal(decoded, i)
            out += b"()"
        elif c == 0x3C and decoded[i + 1:i + 2] != b"<":
            end = decoded.find(b">", i)
            i = len(decoded) if end < 0 else end + 1
            out += b"<>"
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _stream(number: int, dictionary: bytes, raw: bytes, old: bool, replaced: list[str], walk: _Walk,
            font_data: bool = False) -> None:
    filters = _filters(dictionary)
    kind = re.search(rb"/Type\s*/([A-Za-z]+)", dictionary)
    kind = kind.group(1).decode() if kind else ""
    if kind == "XRef":
        walk.regions.append(Region("cross-reference sections", len(raw), CHECKED))
        return
    image = bool(_RENDERED.search(dictionary)) or any(f in _IMAGE_FILTERS for f in filters)
    font = font_data or bool(_FONT_KEYS.search(dictionary))
    try:
        decoded, stopped = _decode(raw, filters, walk.limit)
    except (PdfError, binascii.Error, ValueError):
        decoded, stopped = raw, "?"
    if kind == "EmbeddedFile" and stopped is None:
        walk.parts.append(Part(f"PDF embedded file in object {number}", decoded, 0, len(raw)))
        walk.regions.append(Region("PDF embedded files", len(raw), INSIDE))
        return
    if (image or font) and not old and (stopped is None or stopped in _IMAGE_FILTERS):
        walk.regions.append(Region("PDF images, fonts and colour profiles", len(raw), HUMAN))
        return
    if stopped is None and (looks_like_text(decoded) or looks_like_text(_operators(decoded))):
        if kind == "ObjStm":  # objects: their text, like any object's
            text = _readable(decoded)
        elif kind == "Metadata" or decoded.lstrip().startswith((b"<?xpacket", b"<?xml", b"<x:xmpmeta")):
            text = _CONTROL.sub("", decoded.decode("utf-8", "replace"))
        else:
            # Page contents, forms, glyph procedures: the strings they show. The operators and
            # their numbers (coordinates, colours) draw; read as text, they are phone numbers.
            text = "\n".join(strings(decoded))
        if old:
            replaced.append(f"object {number} stream:\n{text}")
        elif kind == "ObjStm":
            walk.objects.append(f"object stream {number}:\n{text}")
        elif text.strip():
            walk.content.append(text)
        walk.regions.append(Region("PDF content streams", len(raw), INSIDE))
        return
    why = "" if stopped is None else f", not decodable ({stopped})"
    state = ", replaced by a later revision" if old else ""
    walk.parts.append(Part(f"PDF stream in object {number}{state}{why}", decoded if stopped is None else raw, 0, len(raw)))
    walk.regions.append(Region(f"PDF stream in object {number}", len(raw), INSIDE))
