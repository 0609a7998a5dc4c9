"""Runs of numbers in exported text, as vectors to compare against model weights.

A weight row can leave as a CSV row, a CSV column (transposed), a JSON list, a numpy printout
wrapped over several lines, or one number per line. Two readings cover all of these: the numbers of
each stretch of text without words in it, in reading order (rows, JSON lists, wrapped printouts,
one-per-line), and, for each block of consecutive lines holding the same count of numbers, its
columns top to bottom (transposed tables). JSON arrays of equal-length number lists are read
column-wise as well. Stretches are found with numpy (`numeric_regions`), so prose with a few
numbers in it costs next to nothing.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from enclave.review.scan import charruns

# A number not glued to a word or another dot: "x1" and "1.2.3" are not numbers.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_DIGITS = "0123456789"


@dataclass(frozen=True)
class NumberRun:
    """A sequence of exported numbers, and how to find where any of them is written."""

    values: np.ndarray  # float64
    reading: str  # "in reading order" or "column 3 of lines 2-70"
    # (line start offset, line text) of the line of each number, and each number's index within
    # its line: enough to recover exact offsets for the few numbers a finding points at.
    lines: list[tuple[int, str]] | None = None
    line_of: np.ndarray | None = None
    index_in_line: np.ndarray | None = None

    def span(self, first: int, last: int) -> tuple[int, int] | None:
        """Offsets [start, end) in the text from number `first` to number `last` (inclusive)."""
        if self.lines is None:
            return None
        return _offset(self, first)[0], _offset(self, last)[1]


def _offset(run: NumberRun, i: int) -> tuple[int, int]:
    start, line = run.lines[int(run.line_of[i])]
    for k, m in enumerate(_NUMBER.finditer(line)):
        if k == int(run.index_in_line[i]):
            return start + m.start(), start + m.end()
    raise AssertionError("number not found again in its line")  # both readings use _NUMBER


def digit_count(text: str) -> int:
    return sum(text.count(d) for d in _DIGITS)


_BREAKERS = "".join(c for c in "ABCDFGHIJKLMNOPQRSTUVWXYZabcdfghijklmnopqrstuvwxyz")  # letters, except e/E


def numeric_regions(codes: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """Spans holding at least `min_length` runs of digits with no word between them: where a
    vector could be written. Prose with numbers scattered between words has none."""
    digit = charruns.in_class(codes, _DIGITS)
    if not digit.any():
        return []
    edges = np.diff(np.concatenate(([False], digit, [False])).astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.shape[0] < min_length:
        return []
    letters_before = np.concatenate(([0], np.cumsum(charruns.in_class(codes, _BREAKERS, others=True))))
    broken = letters_before[starts[1:]] - letters_before[ends[:-1]] > 0  # a word between runs i and i+1
    cut = np.flatnonzero(broken)
    chain_first = np.concatenate(([0], cut + 1))
    chain_last = np.concatenate((cut, [starts.shape[0] - 1]))
    # A float is two runs of digits ("0.125"), an integer one: a chain of `min_length` numbers has
    # at least `min_length` runs.
    keep = (chain_last - chain_first + 1) >= min_length
    return [(int(starts[f]), int(ends[l])) for f, l in zip(chain_first[keep], chain_last[keep])]


def runs(text: str, min_length: int, max_numbers: int, codes: np.ndarray | None = None) -> Iterator[NumberRun]:
    """Every reading of `text` with at least `min_length` numbers."""
    if digit_count(text) < min_length:
        return
    if codes is None:
        codes = charruns.code_points(text)
    stripped = text.lstrip()[:1]
    if stripped in ("[", "{"):
        yield from _json_columns(text, min_length)
    taken = 0
    for a, b in numeric_regions(codes, min_length):
        # From the start of the region's first line, so numbers are read as in the whole text.
        a = text.rfind("\n", 0, a) + 1
        lines: list[tuple[int, str]] = []
        offset = a
        for line in text[a:b].split("\n"):
            lines.append((offset, line))
            offset += len(line) + 1
        found = [_NUMBER.findall(line) for _, line in lines]  # findall runs in C; positions come later
        counts = np.array([len(f) for f in found], dtype=np.int64)
        total = int(counts.sum())
        taken += total
        if taken > max_numbers:
            return
        if total < min_length:
            continue
        values = np.array([v for f in found for v in f], dtype=np.float64)
        line_of = np.repeat(np.arange(len(lines)), counts)
        index_in_line = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        finite = np.isfinite(values)
        if not finite.all():
            values, line_of, index_in_line = values[finite], line_of[finite], index_in_line[finite]
        yield NumberRun(values, "in reading order", lines, line_of, index_in_line)
        yield from _columns(lines, values, line_of, index_in_line, min_length)


def _columns(lines: list[tuple[int, str]], values: np.ndarray, line_of: np.ndarray, index_in_line: np.ndarray,
             min_length: int) -> Iterator[NumberRun]:
    """Columns of blocks of consecutive lines that hold the same count of numbers (2 or more)."""
    if line_of.shape[0] == 0:
        return
    numbered, first_index, counts = np.unique(line_of, return_index=True, return_counts=True)
    block_start = 0
    for i in range(1, len(numbered) + 1):
        same = i < len(numbered) and counts[i] == counts[block_start] and numbered[i] == numbered[i - 1] + 1
        if same:
            continue
        height, width = i - block_start, int(counts[block_start])
        if height >= min_length and width >= 2:
            first = int(first_index[block_start])
            block = slice(first, first + height * width)
            grid = values[block].reshape(height, width)
            grid_lines, grid_index = line_of[block].reshape(height, width), index_in_line[block].reshape(height, width)
            for col in range(width):
                yield NumberRun(grid[:, col].copy(), f"column {col + 1} of a block of {height} lines",
                                lines, grid_lines[:, col].copy(), grid_index[:, col].copy())
        block_start = i


def _json_columns(text: str, min_length: int) -> Iterator[NumberRun]:
    try:
        document = json.loads(text)
    except ValueError:
        return
    stack: list[tuple[object, str]] = [(document, "$")]
    seen = 0
    while stack and seen < 100_000:
        node, path = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list) and node:
            if all(isinstance(r, list) for r in node) and len({len(r) for r in node}) == 1 and len(node) >= min_length:
                width = len(node[0])
                if width >= 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in node for x in r):
                    grid = np.array(node, dtype=np.float64)
                    for col in range(width):
                        yield NumberRun(grid[:, col].copy(), f"column {col + 1} of the array at {path}")
                    continue
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node) if isinstance(v, (list, dict)))
