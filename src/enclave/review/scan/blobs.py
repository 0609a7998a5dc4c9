"""Encoded blobs in text: base64 and hex runs, decoded, and long runs of high-entropy characters.

Anything can ride out inside a text file as base64 or hex: a zip of records, a weights file, a
CSV. Each run long enough to matter is decoded; the scan pipeline then scans what came out like
any file (a decoded text or archive is rescanned; a decoded weights file is blocked). What decodes
to nothing recognisable, and what is merely random-looking (encrypted, compressed, base85...), is
reported for a person to judge.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from enclave.review.scan import charruns

# Standard or URL-safe base64, possibly wrapped at a fixed width (MIME, PEM); at least 16 characters
# per line so that ordinary words never chain into a blob.
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}(?:[ \t]*\r?\n[ \t]*[A-Za-z0-9+/_-]{16,}={0,2})*")
_HEX = re.compile(r"(?<![0-9A-Za-z])(?:[0-9A-Fa-f]{2}(?:[ :]?)){12,}(?![0-9A-Za-z])")


@dataclass(frozen=True)
class Blob:
    start: int
    end: int
    encoding: str  # "base64" or "hex"
    data: bytes


def _b64_decode(text: str) -> bytes | None:
    compact = re.sub(r"\s+", "", text)
    if "-" in compact or "_" in compact:
        if "+" in compact or "/" in compact:
            return None  # a mix of both alphabets is not base64
        compact = compact.replace("-", "+").replace("_", "/")
    compact = compact.rstrip("=")
    if len(compact) % 4 == 1:
        return None
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_HEX_CHARS = "0123456789abcdefABCDEF :"
_WHITESPACE = " \t\r\n\f\v"


def _regions(codes: np.ndarray, chars: str, min_run: int, join_gap: int, text_length: int) -> list[tuple[int, int]]:
    """Runs of `chars` at least `min_run` long, joined across gaps of up to `join_gap` characters
    (a line break in wrapped base64), widened by two characters each side for padding."""
    out: list[list[int]] = []
    for a, b in charruns.runs(charruns.in_class(codes, chars), min_run):
        if out and a - out[-1][1] <= join_gap:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(max(0, a - 2), min(text_length, b + 2)) for a, b in out]


def find_blobs(text: str, min_base64: int, min_hex: int, limit: int, codes: np.ndarray | None = None) -> list[Blob]:
    """Decodable base64 and hex runs of at least the given lengths (in encoded characters).

    numpy finds the runs of base64 or hex characters long enough to matter; the patterns only run
    inside them (see `charruns`)."""
    if codes is None:
        codes = charruns.code_points(text)
    blobs: list[Blob] = []
    taken: list[tuple[int, int]] = []
    hex_matches = [m for a, b in _regions(codes, _HEX_CHARS, min(min_hex, 16), 0, len(text))
                   for m in _HEX.finditer(text, a, b)]
    b64_matches = [m for a, b in _regions(codes, _B64_CHARS, 16, 6, len(text)) for m in _BASE64.finditer(text, a, b)]
    for m in hex_matches:
        raw = m.group()
        digits = re.sub(r"[ :]", "", raw)
        # A long run of decimal digits is a number, not hex; hex has letters and digits.
        if len(digits) < min_hex or not re.search(r"[A-Fa-f]", digits) or not re.search(r"\d", digits):
            continue
        try:
            data = bytes.fromhex(digits[: len(digits) // 2 * 2])
        except ValueError:
            continue
        blobs.append(Blob(m.start(), m.end(), "hex", data))
        taken.append(m.span())
        if len(blobs) >= limit:
            return blobs
    for m in b64_matches:
        raw = m.group()
        compact = re.sub(r"\s+", "", raw)
        if len(compact) < min_base64 or any(a <= m.start() < b for a, b in taken):
            continue
        # Real base64 of this length mixes upper case, lower case and digits; identifiers and
        # paths (long_snake_case_names, /usr/lib/...) do not.
        if not (re.search(r"[A-Z]", compact) and re.search(r"[a-z]", compact) and re.search(r"\d", compact)):
            continue
        data = _b64_decode(raw)
        if data is None or len(data) < min_base64 // 2:
            continue
        blobs.append(Blob(m.start(), m.end(), "base64", data))
        if len(blobs) >= limit:
            break
    blobs.sort(key=lambda b: b.start)
    return blobs


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def high_entropy_runs(text: str, min_chars: int, max_bits: float, skip: list[tuple[int, int]],
                      codes: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Runs of non-space characters at least `min_chars` long above `max_bits` bits per character,
    outside the spans in `skip` (blobs already decoded)."""
    if codes is None:
        codes = charruns.code_points(text)
    out = []
    for start, end in charruns.runs(~charruns.in_class(codes, _WHITESPACE), min_chars):
        if any(a < end and start < b for a, b in skip):
            continue
        bits = entropy(text[start:end])
        if bits > max_bits:
            out.append((start, end, bits))
    return out


def looks_like_text(data: bytes) -> bool:
    """Decoded bytes that are printable UTF-8 text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text:
        return False
    printable = sum(c.isprintable() or c in "\n\r\t" for c in text[:4096])
    return printable >= 0.95 * min(len(text), 4096)
