"""An n-gram index over folded text: which runs of an export also occur in a protected corpus.

Text is folded first (`textfold.fold(..., separators=False)`: case, spacing, punctuation,
look-alikes and invisible characters gone), then every window of `n` folded characters is hashed
with a polynomial hash computed for all windows at once (prefix sums in numpy). The protected side
keeps only windows that start at multiples of `stride` (Data Portraits keep ~3% of a corpus; we
keep 1/stride of its windows, 8 bytes of key and 8 of reference each), while the query side hashes
every window: any shared run of at least `n + stride - 1` folded characters therefore contains an
indexed window, so it cannot be missed, and a 100 MB corpus fits in about 200 MB of memory.

Lookups go through a bitmap (one bit per hash prefix, about 16 bits per key) before a binary
search, so that a query costs a few vector operations per character.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclave.review.scan.textfold import Folded, fold

_MASK64 = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_SOURCE_SHIFT = 40  # refs: source id in the high bits, folded offset (< 2**40) in the low bits
CHUNK_CHARS = 1 << 22  # protected files are folded 4M characters at a time


# A pure function of two integers, only ever read (sliced): hashing every text would otherwise
# recompute a table of up to millions of powers.
@functools.lru_cache(maxsize=4)
def _powers(base: int, length: int) -> np.ndarray:
    out = np.full(length, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def _pow_table(base: int, length: int) -> np.ndarray:
    # Grow in powers of two so the cache holds few arrays.
    size = 1 << max(16, (length - 1).bit_length())
    return _powers(base, size)[:length]


def splitmix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64s: spreads a hash over all 64 bits (here the polynomial
    hash, for the bitmap; the weight fingerprints use its top 32 bits)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def window_hashes(codes: np.ndarray, n: int, starts: np.ndarray | None = None) -> np.ndarray:
    """Hash of codes[i:i+n] for each i in `starts` (default: every i), independent of i itself."""
    length = int(codes.shape[0])
    if length < n:
        return np.empty(0, dtype=np.uint64)
    if starts is None:
        starts = np.arange(length - n + 1)
    with np.errstate(over="ignore"):
        weighted = (codes.astype(np.uint64) + np.uint64(1)) * _pow_table(_BASE_INV, length)
        prefix = np.zeros(length + 1, dtype=np.uint64)
        np.cumsum(weighted, dtype=np.uint64, out=prefix[1:])
        # sum_j c_j B^-j * B^(i+n-1) = sum_j c_j B^(i+n-1-j): the same value wherever the window sits.
        raw = (prefix[starts + n] - prefix[starts]) * _pow_table(_BASE, length)[starts + n - 1]
    return splitmix64(raw)


@dataclass(frozen=True)
class Overlap:
    """A run of an export that also occurs in the indexed corpus."""

    start: int  # offsets in the original (unfolded) text
    end: int
    folded_chars: int  # length of the shared run in folded characters (a lower bound)
    sources: tuple[str, ...]  # names of the sources it was found in


@dataclass
class NgramIndex:
    n: int
    stride: int
    keys: np.ndarray  # sorted uint64 hashes
    refs: np.ndarray  # uint64, aligned with keys: source id << 40 | folded offset
    source_names: list[str]
    bitmap: np.ndarray = field(init=False, repr=False)
    bitmap_shift: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bits = max(16, min(34, int(self.keys.shape[0] * 16).bit_length()))
        self.bitmap_shift = 64 - bits
        self.bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        if self.keys.shape[0]:
            top = self.keys >> np.uint64(self.bitmap_shift)
            np.bitwise_or.at(self.bitmap, (top >> np.uint64(3)).astype(np.int64),
                             (np.uint8(1) << (top & np.uint64(7)).astype(np.uint8)))

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.refs.nbytes + self.bitmap.nbytes)

    # ----- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, sources: Iterable[tuple[str, Iterable[str]]], n: int, stride: int) -> "NgramIndex":
        """Index `sources`: (name, chunks of its text) pairs; chunks are folded and joined."""
        keys: list[np.ndarray] = []
        refs: list[np.ndarray] = []
        names: list[str] = []
        for source_id, (name, chunks) in enumerate(sources):
            names.append(name)
            for hashes, offsets in _source_windows(chunks, n, stride):
                keys.append(hashes)
                refs.append((np.uint64(source_id) << np.uint64(_SOURCE_SHIFT)) | offsets.astype(np.uint64))
        if keys:
            all_keys, all_refs = np.concatenate(keys), np.concatenate(refs)
            order = np.argsort(all_keys, kind="stable")
            all_keys, all_refs = all_keys[order], all_refs[order]
        else:
            all_keys, all_refs = np.empty(0, np.uint64), np.empty(0, np.uint64)
        return cls(n, stride, all_keys, all_refs, names)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, n=self.n, stride=self.stride, keys=self.keys, refs=self.refs,
                 names=np.array(self.source_names, dtype=object))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "NgramIndex":
        with np.load(path, allow_pickle=True) as data:  # our own cache file, written by save()
            return cls(int(data["n"]), int(data["stride"]), data["keys"], data["refs"], list(data["names"]))

    # ----- querying -----------------------------------------------------------------------------

    def hits(self, folded: Folded) -> tuple[np.ndarray, np.ndarray]:
        """Start positions (in `folded`) of windows found in the index, and the ref of each."""
        hashes = window_hashes(folded.codes, self.n)
        if hashes.shape[0] == 0 or self.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        top = hashes >> np.uint64(self.bitmap_shift)
        maybe = (self.bitmap[(top >> np.uint64(3)).astype(np.int64)] >> (top & np.uint64(7)).astype(np.uint8)) & 1
        candidates = np.flatnonzero(maybe)
        if candidates.shape[0] == 0:
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        wanted = hashes[candidates]
        at = np.searchsorted(self.keys, wanted)
        at = np.minimum(at, self.size - 1)
        found = self.keys[at] == wanted
        return candidates[found], self.refs[at[found]]

    def query(self, text: str, min_chars: int) -> list[Overlap]:
        """Runs of `text` sharing at least `min_chars` folded characters with the corpus."""
        folded = fold(text, separators=False)
        return self.overlaps(folded, len(text), min_chars)

    def overlaps(self, folded: Folded, original_length: int, min_chars: int) -> list[Overlap]:
        starts, refs = self.hits(folded)
        if starts.shape[0] == 0:
            return []
        out: list[Overlap] = []
        # Merge the windows [s, s + n) into maximal covered runs.
        run_start, run_end, run_sources = int(starts[0]), int(starts[0]) + self.n, {int(refs[0]) >> _SOURCE_SHIFT}
        for s, ref in zip(starts[1:].tolist(), refs[1:].tolist()):
            if s <= run_end:
                run_end = max(run_end, s + self.n)
                run_sources.add(ref >> _SOURCE_SHIFT)
                continue
            self._emit(out, folded, original_length, run_start, run_end, run_sources, min_chars)
            run_start, run_end, run_sources = s, s + self.n, {ref >> _SOURCE_SHIFT}
        self._emit(out, folded, original_length, run_start, run_end, run_sources, min_chars)
        return out

    def _emit(self, out: list[Overlap], folded: Folded, original_length: int, start: int, end: int,
              sources: set[int], min_chars: int) -> None:
        if end - start < min_chars:
            return
        a, b = folded.span(start, end, original_length)
        out.append(Overlap(a, b, end - start, tuple(sorted({self.source_names[s] for s in sources}))))


def _source_windows(chunks: Iterable[str], n: int, stride: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Hashes of the windows starting at multiples of `stride` (in folded characters) of one source,
    across chunk boundaries, with their folded offsets."""
    carry = np.empty(0, dtype=np.uint32)
    base = 0  # folded offset of carry[0] within the source
    for chunk in chunks:
        codes = np.concatenate([carry, fold(chunk, separators=False).codes])
        length = int(codes.shape[0])
        if length >= n:
            first = (-base) % stride
            starts = np.arange(first, length - n + 1, stride)
            if starts.shape[0]:
                yield window_hashes(codes, n, starts), starts + base
            # Keep what the next chunk's windows still need: from the next stride-aligned start on.
            next_start = first + stride * starts.shape[0]
            keep_from = min(next_start, length)
        else:
            keep_from = 0
        carry = codes[keep_from:]
        base += keep_from


def read_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """A text file in pieces, invalid UTF-8 replaced (protected files are ours; we only index them)."""
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        while True:
            piece = handle.read(chunk_chars)
            if not piece:
                return
            yield piece


def content_key(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()
