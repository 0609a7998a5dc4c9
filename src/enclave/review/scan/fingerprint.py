"""Fingerprints of model weights: is this exported vector a row or column of an enclave model?

A scholar with access to weights could write them out as numbers: a CSV of embedding rows, a
JSON list, a printout, rounded to a few significant digits, multiplied by a constant, negated,
transposed. Each of those keeps the *order* of the values in any short window (a positive scale
keeps it, a negative one reverses it, rounding to 3-4 significant digits rarely swaps two values),
so a window of `w` consecutive values is keyed by the permutation that sorts it, after flipping
its sign so that its largest-magnitude value is positive, together with how many of its values are
negative. The key is the same for the weight and for any scaled, negated, rounded copy of it.

For every 2-D weight (1-D ones count as one row) both its rows and its columns are keyed, every
`stride` values; an exported run of numbers is keyed at every position, so a run of at least
`w + stride - 1` values always hits a keyed window of the row or column it came from. Hits vote
for a (weight vector, alignment) pair; the best-voted pairs are verified on the actual weights: the
scale is fitted, the run of exported values that agree with the scaled weights is grown from the
hit, and it is reported when it is long enough and its |cosine| with the weights passes the policy.

Building keys for GPT-2 124M takes seconds (numpy, a few large vectorised passes per tensor); the
result is kept in the `ScanCache` the caller gives (in memory, and under its `disk_dir` in
`fingerprints/`, keyed by the SHA-256 of the weight files and the parameters).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclave.review.scan.cache import Lru, ScanCache
from enclave.review.scan.ngram import splitmix64

CACHE_VERSION = 1
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
_CHUNK_VALUES = 1 << 23  # values per vectorised pass while building (~32 MB of float32 windows)
_TENSOR_CACHE_BYTES = 768 << 20  # weights kept in memory for verifying candidates
_MAX_POSTINGS = 2000  # keys this common (constant runs, say) say nothing; skip them at query time


class FingerprintError(ValueError):
    """The model directory has no weights we can read."""


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted({p for pattern in _WEIGHT_GLOBS for p in Path(model_dir).glob(pattern) if p.is_file()})
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files  # a directory with both holds the same weights twice


def window_keys(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale- and sign-invariant keys of the rows of `windows` (N x w), and which rows are usable
    (a window whose values are all equal has no order to key)."""
    n, w = windows.shape
    x = windows.astype(np.float64, copy=True)
    magnitude = np.abs(x)
    top = magnitude.argmax(axis=1)
    sign = np.sign(x[np.arange(n), top])
    sign[sign == 0] = 1.0
    x *= sign[:, None]
    spread = x.max(axis=1) - x.min(axis=1)
    usable = spread > 1e-9 * np.maximum(magnitude.max(axis=1), 1e-30)
    order = np.argsort(x, axis=1, kind="stable").astype(np.uint64)
    powers = np.uint64(w) ** np.arange(w, dtype=np.uint64)
    with np.errstate(over="ignore"):
        codes = (order * powers).sum(axis=1, dtype=np.uint64) * np.uint64(w + 1) + (x < 0).sum(axis=1).astype(np.uint64)
    return (splitmix64(codes) >> np.uint64(32)).astype(np.uint32), usable


@dataclass(frozen=True)
class WeightMatch:
    """Exported values [start, end) of a run equal, up to scale, to part of one weight vector."""

    start: int
    end: int
    tensor: str
    axis: str  # "row" or "column"
    index: int
    weight_start: int
    cosine: float
    scale: float


@dataclass
class Fingerprint:
    model: str
    files: list[str]
    window: int
    stride: int
    tensor_names: list[str]
    tensor_files: list[int]  # index into files, per tensor
    keys: np.ndarray  # uint32, sorted
    slots: np.ndarray  # uint32, aligned with keys: the slot (vector, position) of each key
    vec_tensor: np.ndarray  # int32 per vector
    vec_axis: np.ndarray  # int8 per vector: 0 row, 1 column
    vec_index: np.ndarray  # int64 per vector
    vec_length: np.ndarray  # int64 per vector
    vec_slot_start: np.ndarray  # int64 per vector: its first slot
    _tensors: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # PyTorch pickles read whole for verification (shared with the ScanCache that holds this).
    _states: Lru = field(default_factory=lambda: Lru(2), repr=False)

    @property
    def vectors(self) -> int:
        return int(self.vec_tensor.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.slots.nbytes + self.vec_slot_start.nbytes * 5)

    # ----- weights, loaded lazily for verification ---------------------------------------------

    def tensor(self, t: int) -> np.ndarray:
        name = self.tensor_names[t]
        with self._lock:
            if name in self._tensors:
                self._tensors.move_to_end(name)
                return self._tensors[name]
        array = _as_matrix(_load_tensor(Path(self.files[self.tensor_files[t]]), name, self._states))
        with self._lock:
            self._tensors[name] = array
            # Keep memory bounded (GPT-2 124M is 0.5 GB in float32) without thrashing on small models.
            while sum(a.nbytes for a in self._tensors.values()) > _TENSOR_CACHE_BYTES and len(self._tensors) > 1:
                self._tensors.popitem(last=False)
        return array

    def vector(self, v: int) -> np.ndarray:
        matrix = self.tensor(int(self.vec_tensor[v]))
        return matrix[int(self.vec_index[v])] if self.vec_axis[v] == 0 else matrix[:, int(self.vec_index[v])]

    # ----- matching -----------------------------------------------------------------------------

    def match(self, values: np.ndarray, *, min_length: int, min_cosine: float, max_candidates: int) -> list[WeightMatch]:
        """Parts of `values` that are scaled copies of weight vectors."""
        w = self.window
        if values.shape[0] < max(min_length, w) or self.keys.shape[0] == 0:
            return []
        windows = np.lib.stride_tricks.sliding_window_view(values, w)
        keys, usable = window_keys(windows)
        # Binary searches in sorted order touch the index's memory in order: much faster.
        order = np.argsort(keys, kind="stable")
        lo, hi = np.empty_like(order), np.empty_like(order)
        lo[order] = np.searchsorted(self.keys, keys[order], side="left")
        hi[order] = np.searchsorted(self.keys, keys[order], side="right")
        counts = np.where(usable & (hi - lo <= _MAX_POSTINGS), hi - lo, 0)
        total = int(counts.sum())
        if total == 0:
            return []
        query_pos = np.repeat(np.arange(keys.shape[0], dtype=np.int64), counts)
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        slots = self.slots[first + np.arange(total, dtype=np.int64)].astype(np.int64)
        vec = np.searchsorted(self.vec_slot_start, slots, side="right") - 1
        weight_pos = (slots - self.vec_slot_start[vec]) * self.stride
        shift = weight_pos - query_pos
        # Vote: every aligned window of a true copy agrees on (vector, shift).
        pair = vec * (1 << 32) + (shift + (1 << 31))
        unique, first_seen, votes = np.unique(pair, return_index=True, return_counts=True)
        order = np.argsort(-votes, kind="stable")[:max_candidates]
        found: list[WeightMatch] = []
        for k in order:
            v = int(vec[first_seen[k]])
            seed = int(query_pos[first_seen[k]])
            match = self._verify(values, v, int(shift[first_seen[k]]), seed, min_length, min_cosine)
            if match and not any(m.start < match.end and match.start < m.end for m in found):
                found.append(match)
        return sorted(found, key=lambda m: m.start)

    def _verify(self, values: np.ndarray, v: int, shift: int, seed: int, min_length: int,
                min_cosine: float) -> WeightMatch | None:
        length = int(self.vec_length[v])
        lo, hi = max(0, -shift), min(values.shape[0], length - shift)
        if hi - lo < min_length:
            return None
        vector = self.vector(v)
        w = self.window
        # Most candidates are chance collisions of keys: reject them on the seed window alone,
        # before reading (and converting) the rest of the weight vector.
        seed_q = values[seed:seed + w]
        seed_ref = vector[seed + shift:seed + shift + w].astype(np.float64)
        denominator = float(seed_ref @ seed_ref)
        if denominator == 0:
            return None
        scale = float(seed_q @ seed_ref) / denominator
        if scale == 0:
            return None
        rms = float(np.sqrt(np.mean(seed_ref ** 2))) * abs(scale)
        if not (np.abs(seed_q - scale * seed_ref) <= 0.02 * np.abs(scale * seed_ref) + 0.01 * rms).all():
            return None
        q = values[lo:hi]
        ref = vector[lo + shift:hi + shift].astype(np.float64)
        s0 = seed - lo
        fitted = scale * ref
        # Rounding to 3 significant digits moves a value by at most 0.5%; allow 2% of the value,
        # plus a little of the typical magnitude for values rounded to a fixed number of decimals.
        agree = np.abs(q - fitted) <= 0.02 * np.abs(fitted) + 0.01 * rms
        start, end = s0, s0 + w
        while start > 0 and (agree[start - 1] or (start > 1 and agree[start - 2])):
            start -= 1
        while end < agree.shape[0] and (agree[end] or (end + 1 < agree.shape[0] and agree[end + 1])):
            end += 1
        if end - start < min_length:
            return None
        a, b = q[start:end], ref[start:end]
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        if norms == 0:
            return None
        cosine = abs(float(a @ b)) / norms
        if cosine < min_cosine:
            return None
        # Refit the scale on the whole run for the report.
        scale = float(a @ b) / float(b @ b)
        return WeightMatch(lo + start, lo + end, self.tensor_names[int(self.vec_tensor[v])],
                           "row" if self.vec_axis[v] == 0 else "column", int(self.vec_index[v]),
                           lo + start + shift, cosine, scale)


# ----- reading weights --------------------------------------------------------------------------

def _as_matrix(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        return array.reshape(1, -1)
    if array.ndim > 2:
        return array.reshape(array.shape[0], -1)
    return array


def _safetensors_names(path: Path) -> list[tuple[str, list[int], str]]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return [(name, spec["shape"], spec["dtype"]) for name, spec in header.items() if name != "__metadata__"]


def _load_tensor(path: Path, name: str, states: Lru) -> np.ndarray:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                return handle.get_tensor(name)
        except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch
            import torch
            from safetensors.torch import load_file

            return load_file(str(path))[name].to(torch.float32).numpy()
    return _torch_state(path, states)[name]


def _torch_state(path: Path, states: Lru) -> dict[str, np.ndarray]:
    """Every floating-point tensor of a PyTorch pickle, which can only be read whole: kept in
    `states` so that verifying candidates tensor by tensor reads the file once."""
    st = path.stat()
    return states.get_or_build((str(path), st.st_size, st.st_mtime_ns), lambda: _read_torch_state(path))


def _read_torch_state(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise FingerprintError(f"{path.name} is a PyTorch pickle and torch is not installed ({exc})") from None
    try:
        # weights_only: never run code from a pickle, even our own model's.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for bad files
        raise FingerprintError(f"cannot read {path.name}: {exc.__class__.__name__}") from None
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items() if hasattr(v, "is_floating_point") and v.is_floating_point()}


def _tensors(files: list[Path], states: Lru):
    """(file index, name, matrix) for every floating-point tensor of the model, each stored once."""
    for f, path in enumerate(files):
        if path.suffix == ".safetensors":
            names = [n for n, _, dtype in _safetensors_names(path) if dtype in ("F16", "BF16", "F32", "F64")]
            for name in names:
                yield f, name, _as_matrix(_load_tensor(path, name, states))
        else:
            for name, array in _torch_state(path, states).items():
                yield f, name, _as_matrix(array)


# ----- building -----------------------------------------------------------------------------

def build(model_dir: Path, window: int, stride: int, min_length: int, *, states: Lru | None = None) -> Fingerprint:
    """Key every row and column of the model's weights. `states` holds PyTorch pickles read whole
    (a fresh one if not given); the fingerprint keeps it for verifying candidates later."""
    states = states if states is not None else Lru(2)
    files = weight_files(model_dir)
    if not files:
        raise FingerprintError(f"no weights (*.safetensors, pytorch_model*.bin) in {model_dir}")
    names: list[str] = []
    tensor_files: list[int] = []
    keys: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    vec_tensor, vec_axis, vec_index, vec_length, vec_slot_start = [], [], [], [], []
    next_slot = 0
    seen_data: set[tuple[str, tuple[int, ...]]] = set()
    offsets = np.arange(window)
    for f, name, matrix in _tensors(files, states):
        digest = (hashlib.sha256(matrix[:4].tobytes()).hexdigest(), matrix.shape)
        if digest in seen_data:  # tied weights (GPT-2's lm_head is wte) are keyed once
            continue
        seen_data.add(digest)
        t = len(names)
        names.append(name)
        tensor_files.append(f)
        views = [(0, matrix)] + ([(1, np.ascontiguousarray(matrix.T))] if matrix.shape[0] >= min_length else [])
        for axis, view in views:
            rows, length = view.shape
            if length < min_length:
                continue
            starts = np.arange(0, length - window + 1, stride)
            per_row = starts.shape[0]
            vec_tensor.append(np.full(rows, t, dtype=np.int32))
            vec_axis.append(np.full(rows, axis, dtype=np.int8))
            vec_index.append(np.arange(rows, dtype=np.int64))
            vec_length.append(np.full(rows, length, dtype=np.int64))
            vec_slot_start.append(next_slot + np.arange(rows, dtype=np.int64) * per_row)
            rows_per_chunk = max(1, _CHUNK_VALUES // (per_row * window))
            for r0 in range(0, rows, rows_per_chunk):
                block = view[r0:r0 + rows_per_chunk][:, starts[:, None] + offsets]  # (rows, per_row, window)
                k, usable = window_keys(block.reshape(-1, window))
                slot = next_slot + r0 * per_row + np.arange(k.shape[0], dtype=np.int64)
                keys.append(k[usable])
                slots.append(slot[usable].astype(np.uint32))
            next_slot += rows * per_row
    if next_slot >= 1 << 32:
        raise FingerprintError(f"{model_dir} is too large for one fingerprint ({next_slot} keyed windows)")
    all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint32)
    all_slots = np.concatenate(slots) if slots else np.empty(0, np.uint32)
    order = np.argsort(all_keys, kind="stable")

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.empty(0, dtype)

    return Fingerprint(str(model_dir), [str(p) for p in files], window, stride, names, tensor_files,
                       all_keys[order], all_slots[order], cat(vec_tensor, np.int32), cat(vec_axis, np.int8),
                       cat(vec_index, np.int64), cat(vec_length, np.int64), cat(vec_slot_start, np.int64),
                       _states=states)


# ----- caching -----------------------------------------------------------------------------

def _content_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(model_dir: Path, window: int, stride: int, min_length: int, *,
                cache: ScanCache | None = None) -> Fingerprint:
    """The fingerprint of a model directory: from `cache` (memory, then its disk directory), or
    built and kept there. Without a cache it is built every time."""
    cache = cache if cache is not None else ScanCache()
    model_dir = Path(model_dir).resolve()
    files = weight_files(model_dir)
    if not files:
        raise FingerprintError(f"no weights (*.safetensors, pytorch_model*.bin) in {model_dir}")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)

    def load_or_build() -> Fingerprint:
        path = None
        if cache.disk_dir is not None:
            digest = hashlib.sha256(
                f"{CACHE_VERSION}:{window}:{stride}:{min_length}:{_content_digest(files)}".encode()).hexdigest()
            path = cache.disk_path("fingerprints", f"{digest}.npz")
            loaded = _load(path, model_dir, files, cache.torch_states)
            if loaded is not None:
                return loaded
        built = build(model_dir, window, stride, min_length, states=cache.torch_states)
        if path is not None:
            _save(built, path)
        return built

    return cache.fingerprints.get_or_build((stamp, window, stride, min_length), load_or_build)


def _save(fp: Fingerprint, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=fp.keys, slots=fp.slots, vec_tensor=fp.vec_tensor, vec_axis=fp.vec_axis,
                 vec_index=fp.vec_index, vec_length=fp.vec_length, vec_slot_start=fp.vec_slot_start,
                 meta=np.frombuffer(json.dumps({"window": fp.window, "stride": fp.stride, "names": fp.tensor_names,
                                                "tensor_files": fp.tensor_files}).encode(), dtype=np.uint8))
        tmp.replace(path)
    except OSError:
        pass  # a cache we cannot write only costs time on the next run


def _load(path: Path, model_dir: Path, files: list[Path], states: Lru) -> Fingerprint | None:
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            return Fingerprint(str(model_dir), [str(p) for p in files], meta["window"], meta["stride"], meta["names"],
                               meta["tensor_files"], data["keys"], data["slots"], data["vec_tensor"], data["vec_axis"],
                               data["vec_index"], data["vec_length"], data["vec_slot_start"], _states=states)
    except (OSError, ValueError, KeyError):
        return None
