"""What one scan may reuse from another: the expensive indexes built from a scan's context.

A `ScanCache` is given to the library inside the `ScanContext`; the library keeps nothing between
scans itself. The review service holds one per process (its worker), so that the n-gram index over
a project's datasets, the record-linkage indexes, the weight fingerprints and the Presidio
analysers are built once, not per request; `enclave review scan` makes one per run. With a
`disk_dir`, the big indexes (n-grams over protected text, weight fingerprints) are also kept there,
keyed by the SHA-256 of their content, so that a restart does not rebuild them; without one
nothing is written anywhere. A scan given no cache gets a fresh, memory-only one.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Lru:
    """A small thread-safe least-recently-used map whose values are built on a miss."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        # Built outside the lock: a fingerprint takes seconds and must not stall other lookups.
        value = build()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.data.clear()


@dataclass(eq=False)
class ScanCache:
    """Indexes kept across scans (in memory, bounded) and, with `disk_dir`, on disk.

    Keys say what a value was built from: file path, size and mtime for protected files and
    weights, content digests for text held in memory, plus the policy parameters used.
    """

    disk_dir: Path | None = None
    text_indexes: Lru = field(default_factory=lambda: Lru(4))  # n-grams over protected text
    record_indexes: Lru = field(default_factory=lambda: Lru(16))  # record linkage, per protected table
    provenance_indexes: Lru = field(default_factory=lambda: Lru(16))  # n-grams over model-call outputs
    fingerprints: Lru = field(default_factory=lambda: Lru(4))  # weight fingerprints, per model directory
    # Whole PyTorch pickles, read once for every tensor of them (GPT-2 124M: 0.5 GB each).
    torch_states: Lru = field(default_factory=lambda: Lru(2))
    analyzers: Lru = field(default_factory=lambda: Lru(4))  # Presidio engines, per set of phone regions

    def disk_path(self, *parts: str) -> Path | None:
        """Where a cached file lives under `disk_dir`; None when this cache keeps nothing on disk."""
        return None if self.disk_dir is None else Path(self.disk_dir).joinpath(*parts)
