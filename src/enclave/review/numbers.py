"""Runs of numbers in exported text, as vectors to compare against model weights.

A weight row can leave as a CSV row, a CSV column (transposed), a JSON list, a numpy printout
wrapped over several lines, or one number per line. Two readings cover all of these: every number
of a text in reading order (rows, JSON lists, wrapped printouts, one-per-line), and, for each block
of consecutive lines holding the same count of numbers, its columns top to bottom (transposed
tables). JSON arrays of equal-length number lists are read column-wise as well.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# A number not glued to a word or another dot: "x1" and "1.2.3" are not numbers.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_DIGITS = "0123456789"


@dataclass(frozen=True)
class NumberRun:
    """A sequence of exported numbers and where each one is written."""

    values: np.ndarray  # float64
    starts: np.ndarray  # offset of each number in the segment text (-1 when unknown, e.g. JSON)
    ends: np.ndarray
    reading: str  # "in reading order" or "column 3 of lines 2-70"


def digit_count(text: str) -> int:
    return sum(text.count(d) for d in _DIGITS)


def runs(text: str, min_length: int, max_numbers: int) -> Iterator[NumberRun]:
    """Every reading of `text` with at least `min_length` numbers."""
    if digit_count(text) < min_length:
        return
    values: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for m in _NUMBER.finditer(text):
        values.append(m.group())
        starts.append(m.start())
        ends.append(m.end())
        if len(values) >= max_numbers:
            break
    if len(values) < min_length:
        return
    array = np.array(values, dtype=np.float64)
    start_arr, end_arr = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    finite = np.isfinite(array)
    if not finite.all():
        array, start_arr, end_arr = array[finite], start_arr[finite], end_arr[finite]
    yield NumberRun(array, start_arr, end_arr, "in reading order")
    yield from _columns(text, array, start_arr, end_arr, min_length)
    stripped = text.lstrip()[:1]
    if stripped in ("[", "{"):
        yield from _json_columns(text, min_length)


def _columns(text: str, values: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_length: int) -> Iterator[NumberRun]:
    """Columns of blocks of consecutive lines that hold the same count of numbers (2 or more)."""
    line_starts = np.flatnonzero(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) == 10) + 1
    line_of = np.searchsorted(line_starts, starts, side="right")  # 0-based line of each number
    if line_of.shape[0] == 0:
        return
    lines, first_index, counts = np.unique(line_of, return_index=True, return_counts=True)
    block_start = 0
    for i in range(1, len(lines) + 1):
        same = i < len(lines) and counts[i] == counts[block_start] and lines[i] == lines[i - 1] + 1
        if same:
            continue
        height, width = i - block_start, int(counts[block_start])
        if height >= min_length and width >= 2:
            first = int(first_index[block_start])
            block = slice(first, first + height * width)
            grid = values[block].reshape(height, width)
            grid_starts, grid_ends = starts[block].reshape(height, width), ends[block].reshape(height, width)
            for col in range(width):
                yield NumberRun(grid[:, col].copy(), grid_starts[:, col].copy(), grid_ends[:, col].copy(),
                                f"column {col + 1} of lines {int(lines[block_start]) + 1}-{int(lines[i - 1]) + 1}")
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
                    unknown = np.full(len(node), -1, dtype=np.int64)
                    for col in range(width):
                        yield NumberRun(grid[:, col].copy(), unknown, unknown, f"column {col + 1} of the array at {path}")
                    continue
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node) if isinstance(v, (list, dict)))
