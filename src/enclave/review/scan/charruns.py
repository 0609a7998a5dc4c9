"""Runs of characters of one class, found with numpy instead of a regular expression.

Python's `re` scans at 50-100 MB/s whatever it looks for, and a pattern that can start at any
letter or digit (a base64 run, a long token, a number) costs that much on every file. The same
question asked of a code-point array with a lookup table costs a few vector operations, so the
scan checks use these runs as gates and only apply their exact patterns inside them.
"""
from __future__ import annotations

import functools

import numpy as np


def code_points(text: str) -> np.ndarray:
    """The code points of `text`, without a Python loop: uint8 for ASCII text (a quarter of the
    memory, and class lookups need no clipping), uint32 otherwise."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# A pure function of a string; callers only read the table (`in_class` copies it before changing
# it), so it is built once per character class rather than per text.
@functools.lru_cache(maxsize=32)
def ascii_class(chars: str) -> np.ndarray:
    """A lookup table over ASCII (plus one slot for everything else): True for `chars`."""
    table = np.zeros(129, dtype=bool)
    for c in chars:
        table[ord(c)] = True
    return table


def in_class(codes: np.ndarray, chars: str, others: bool = False) -> np.ndarray:
    """Which code points are among the ASCII `chars` (non-ASCII ones count as `others`)."""
    table = ascii_class(chars)
    if codes.dtype == np.uint8:
        return table[codes]
    if others:
        table = table.copy()
        table[128] = True
    return table[np.minimum(codes, 128)]


def runs(mask: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of True at least `min_length` long."""
    if mask.shape[0] == 0:
        return []
    edges = np.diff(np.concatenate(([False], mask, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    keep = (ends - starts) >= min_length
    return list(zip(starts[keep].tolist(), ends[keep].tolist()))


def count_runs(mask: np.ndarray) -> int:
    """How many maximal runs of True there are."""
    if mask.shape[0] == 0:
        return 0
    return int(mask[0]) + int(np.count_nonzero(mask[1:] & ~mask[:-1]))
