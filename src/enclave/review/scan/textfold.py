"""Folding text so that cosmetic changes do not hide a match.

A scholar who wants a protected record out can change its case, spacing or punctuation, swap
Latin letters for Cyrillic or Greek look-alikes, use full-width or mathematical letters, add
accents, or sprinkle zero-width characters. Two views undo all of that:

- `fold(text)`: the *match* view, for n-gram overlap and record linkage. Unicode compatibility
  decomposition (NFKD), combining marks and invisible format characters dropped, look-alikes
  mapped to Latin, case folded, digits of any script made ASCII; every other character (space,
  punctuation, symbols) becomes one separator, or is removed entirely with `separators=False`.
- `skeleton(text)`: the *display* view, for pattern recognizers: NFKC and look-alikes mapped, case,
  punctuation and spacing kept, invisible characters removed.

Both return the offset in the original text of every output character, so a match in the folded
text is reported where the scholar wrote it. Both are vectorised with numpy (per-code-point lookup
tables built once per process): the scan pipeline folds every text it reads, and its target is
5 MB/s on one core.
"""
from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import numpy as np

SEP = 0x20
_DROP = 0
_MULTI = 0xFFFFFFFF
# Code points at and above this are folded one by one (rare: historic scripts, emoji, CJK extensions).
_TABLE_SIZE = 0x20000

# Cyrillic and Greek letters that render like Latin ones (Unicode's confusables.txt, the subset
# that matters for Latin-script text). Applied before case folding, because upper- and
# lower-case forms resemble different Latin letters (Cyrillic "В" looks like "B", "в" does not).
CONFUSABLES = {
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Ү": "Y", "Һ": "H", "Ӏ": "I",
    "Ԍ": "G", "Ѵ": "V",
    # Cyrillic small letters
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y", "ѵ": "v", "ɡ": "g",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
    # Greek small letters
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c",
    "ϳ": "j", "ε": "e",
    # Latin letters that pose as others
    "ı": "i", "ɩ": "i", "ɑ": "a", "ℓ": "l",
}
# Invisible characters are dropped outright; categories: format (zero-width space/joiners, word
# joiner, BOM, soft hyphen, bidi controls), non-spacing and enclosing marks (accents, after NFKD).
_INVISIBLE_CATEGORIES = {"Cf", "Mn", "Me"}


def _fold_char(ch: str) -> str:
    """The match view of one code point: folded alphanumerics, " " for a separator, "" for nothing."""
    out = []
    for c in unicodedata.normalize("NFKD", ch):
        if unicodedata.category(c) in _INVISIBLE_CATEGORIES:
            continue
        c = CONFUSABLES.get(c, c)
        digit = unicodedata.decimal(c, None)
        if digit is not None:
            out.append(str(digit))
            continue
        for d in c.casefold():
            out.append(d if d.isalnum() else " ")
    return "".join(out)


def _skeleton_char(ch: str) -> str:
    """The display view of one code point (case and punctuation kept)."""
    if unicodedata.category(ch) == "Cf":
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        c = CONFUSABLES.get(c, c)
        digit = unicodedata.decimal(c, None)
        out.append(str(digit) if digit is not None and not c.isascii() else c)
    return "".join(out)


@dataclass(frozen=True)
class _Table:
    single: np.ndarray  # uint32 per code point: the one output code point, _DROP or _MULTI
    multi: dict[int, str]  # code point -> its output when it is not exactly one character


def _build(fn) -> _Table:
    single = np.empty(_TABLE_SIZE, dtype=np.uint32)
    multi: dict[int, str] = {}
    for cp in range(_TABLE_SIZE):
        if 0xD800 <= cp <= 0xDFFF:  # lone surrogates (undecodable bytes): a separator
            out = " "
        else:
            out = fn(chr(cp))
        if len(out) == 1:
            single[cp] = ord(out)
        elif not out:
            single[cp] = _DROP
        else:
            single[cp] = _MULTI
            multi[cp] = out
    return _Table(single, multi)


# The tables below are built once per process: they depend on nothing but Unicode's data (a pass
# over every code point, far too slow per text) and are only ever read.
@functools.cache
def _fold_table() -> _Table:
    return _build(_fold_char)


@functools.cache
def _skeleton_table() -> _Table:
    return _build(_skeleton_char)


@functools.cache
def _ascii_fold() -> np.ndarray:
    table = np.full(256, SEP, dtype=np.uint8)
    for cp in range(128):
        c = chr(cp)
        if c.isalnum():
            table[cp] = ord(c.lower())
    return table


@dataclass(frozen=True)
class Folded:
    """Folded code points and, for each, its offset in the original text."""

    codes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, same length

    @property
    def text(self) -> str:
        return self.codes.astype("<u4").tobytes().decode("utf-32-le")

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def span(self, start: int, end: int, original_length: int) -> tuple[int, int]:
        """Original [start, end) of the folded slice [start, end)."""
        if start >= len(self):
            return original_length, original_length
        last = self.offsets[min(end, len(self)) - 1]
        return int(self.offsets[start]), int(last) + 1


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _apply(text: str, table: _Table, fn) -> tuple[np.ndarray, np.ndarray]:
    cps = _code_points(text)
    mapped = table.single[np.minimum(cps, _TABLE_SIZE - 1)]
    mapped[cps >= _TABLE_SIZE] = _MULTI
    multi_at = np.flatnonzero(mapped == _MULTI)
    if multi_at.size == 0:
        keep = mapped != _DROP
        return mapped[keep], np.flatnonzero(keep)
    # Rare: characters that expand (ligatures, fractions, German sharp s) or lie beyond the table.
    expansions = [table.multi.get(int(cps[i])) if cps[i] < _TABLE_SIZE else fn(chr(int(cps[i]))) for i in multi_at]
    lengths = (mapped != _DROP).astype(np.int64)
    lengths[multi_at] = [len(e) for e in expansions]
    out = np.repeat(mapped, lengths)
    starts = np.cumsum(lengths) - lengths
    for i, expansion in zip(multi_at, expansions):
        if expansion:
            out[starts[i]:starts[i] + len(expansion)] = _code_points(expansion)
    return out, np.repeat(np.arange(cps.shape[0], dtype=np.int64), lengths)


def fold(text: str, separators: bool = True) -> Folded:
    """The match view of `text`; without `separators`, only the folded alphanumerics remain."""
    if text.isascii():
        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        mapped = _ascii_fold()[raw]
        if separators:
            return Folded(mapped.astype(np.uint32), np.arange(raw.shape[0], dtype=np.int64))
        keep = mapped != SEP
        return Folded(mapped[keep].astype(np.uint32), np.flatnonzero(keep))
    codes, offsets = _apply(text, _fold_table(), _fold_char)
    if not separators:
        keep = codes != SEP
        codes, offsets = codes[keep], offsets[keep]
    return Folded(codes, offsets)


def skeleton(text: str) -> tuple[str, np.ndarray | None]:
    """The display view of `text` and its offsets into `text` (None when nothing changed)."""
    if text.isascii():
        return text, None
    codes, offsets = _apply(text, _skeleton_table(), _skeleton_char)
    if codes.shape[0] == len(text) and np.array_equal(offsets, np.arange(len(text))):
        changed = codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        return changed, None
    return codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"), offsets


def fold_string(text: str, separators: bool = False) -> str:
    """`fold(text).text`: for keys of protected values."""
    return fold(text, separators).text
