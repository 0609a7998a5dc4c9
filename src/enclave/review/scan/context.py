"""What the checks need besides the exported files, and the indexes built from it.

`ScanContext` is plain data (protected corpora, model directories, a scorer, the project's model
calls, its earlier releases, its egress account) and the `ScanCache` to reuse indexes from. The
library is given it and never looks anything up; the review service builds it in one place
(`enclave.review.scan_context.build_scan_context`). `Env` pairs it with a policy and builds the
expensive things lazily: the n-gram index over protected text, the record-linkage indexes, the
provenance index over model calls and the weight fingerprints. Those are kept in the context's
cache (keyed by file path, size and mtime, or by content for in-memory text) and, for the big
ones, in the cache's disk directory keyed by content hash, so that the review service does not
rebuild them per request.

A protected source that cannot be read is not fatal: the scan goes on without it and says so in a
finding, because a reviewer must know which checks did not run.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.review.scan import fingerprint as fingerprints_mod
from enclave.review.scan import pii
from enclave.review.scan.model_dims import ModelDims, ModelDimsError, read_model_dims
from enclave.review.scan.archives import Budget
from enclave.review.scan.cache import ScanCache
from enclave.review.scan.linkage import RecordIndex
from enclave.review.scan.ngram import NgramIndex, read_chunks
from enclave.review.scan.policy import Policy
from enclave.review.scan.scoring import Scorer

TABLE_SUFFIXES = {".csv", ".tsv"}
TEXT_SUFFIXES = {".txt", ".md", ".csv", ".tsv", ".json", ".jsonl", ".text", ".log", ".tex", ".html", ""}


@dataclass(frozen=True)
class ProtectedSource:
    """Protected data: a registered dataset, a fine-tuning set, or a file named with `--protect`.

    Text is indexed for verbatim overlap; a CSV's `quasi_identifiers` (column names; an empty tuple
    means every column) are also used for record linkage. `text` gives the content in memory
    instead of a path.
    """

    name: str
    path: Path | None = None
    text: str | None = None
    quasi_identifiers: tuple[str, ...] | None = None

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None,
                  quasi_identifiers: list[str] | tuple[str, ...] | None = None) -> "ProtectedSource":
        p = Path(path)
        if quasi_identifiers is None and p.suffix.lower() in TABLE_SUFFIXES:
            quasi_identifiers = ()
        return cls(name or p.name, p, None, tuple(quasi_identifiers) if quasi_identifiers is not None else None)

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        return [self.path]

    def stamp(self) -> tuple:
        if self.text is not None:
            return (self.name, "text", hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest())
        out = []
        for p in self.files():
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        return (self.name, tuple(out), self.quasi_identifiers)


@dataclass(frozen=True)
class ModelCallText:
    """One audited model call: what was asked and what came back."""

    call_id: str
    prompt: str
    output: str


@dataclass(frozen=True)
class ScanContext:
    """Everything a scan needs besides the files and the policy; all of it is optional."""

    protected: list[ProtectedSource] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)
    scorer: Scorer | None = None
    model_calls: list[ModelCallText] = field(default_factory=list)
    prior_releases: list[Any] = field(default_factory=list)  # list[ExportFile]
    egress_used_bytes: int = 0
    egress_allowed_bytes: int | None = None
    # The export's project (its slug), and the privacy service's public keys (PEM) that DP
    # receipts in an export must verify with (`checks.dp_receipts`); none: no receipt is trusted.
    project: str | None = None
    dp_receipt_keys: list[bytes] = field(default_factory=list)
    # Indexes reused across scans; the default keeps them for this context only, in memory.
    cache: ScanCache = field(default_factory=ScanCache, compare=False, repr=False)


def _source_chunks(source: ProtectedSource):
    if source.text is not None:
        yield source.text
        return
    for path in source.files():
        yield from read_chunks(path)
        yield "\n"


def _content_digest(sources: list[ProtectedSource], *params) -> str:
    digest = hashlib.sha256(repr(params).encode())
    for source in sources:
        digest.update(source.name.encode() + b"\0")
        if source.text is not None:
            digest.update(source.text.encode("utf-8", "surrogatepass"))
            continue
        for path in source.files():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def build_text_index(sources: list[ProtectedSource], n: int, stride: int, cache: ScanCache) -> NgramIndex:
    """The n-gram index over protected sources: from `cache` (memory, then its disk directory), or
    built and kept there. An index of text given only in memory is never written to disk."""
    key = (tuple(s.stamp() for s in sources), n, stride)

    def build() -> NgramIndex:
        path = None
        if cache.disk_dir is not None and any(s.text is None for s in sources):
            path = cache.disk_path("ngram", f"{_content_digest(sources, n, stride, 1)}.npz")
            if path.is_file():
                try:
                    return NgramIndex.load(path)
                except (OSError, ValueError, KeyError):
                    pass  # a damaged cache file is rebuilt
        index = NgramIndex.build(((s.name, _source_chunks(s)) for s in sources), n, stride)
        if path is not None:
            try:
                index.save(path)
            except OSError:
                pass  # an unwritable cache only costs time next run
        return index

    return cache.text_indexes.get_or_build(key, build)


@dataclass
class Env:
    """A policy, a context, and what is built from them for one scan."""

    policy: Policy
    context: ScanContext
    problems: list[str] = field(default_factory=list)  # context that could not be used, for findings
    # Per-scan accounts shared by all items: bytes archives may still expand to, passages scored.
    expansion: Budget = field(init=False)
    passages_scored: int = 0
    passages_skipped: int = 0
    scoring_failed: bool = False
    # Activation-like numbers the export's items held so far (`checks.activations`): a dump split
    # over many files is judged on its sum.
    activation_numbers: int = 0

    def __post_init__(self) -> None:
        self.expansion = Budget(self.policy.archives.max_total_bytes)

    @functools.cached_property
    def text_index(self) -> NgramIndex | None:
        usable = []
        for source in self.context.protected:
            try:
                files = source.files()
                if source.text is None and not files:
                    raise OSError("no readable files")
                for p in files:
                    p.stat()
                usable.append(source)
            except OSError as exc:
                self.problems.append(f"protected source {source.name!r} is unreadable ({exc.strerror or exc}); "
                                     "overlap with it was not checked")
        if not usable:
            return None
        m = self.policy.memorisation
        try:
            return build_text_index(usable, m.ngram_chars, m.index_stride, self.context.cache)
        except OSError as exc:
            self.problems.append(f"protected text could not be indexed ({exc.strerror or exc}); overlap was not checked")
            return None

    @functools.cached_property
    def record_indexes(self) -> list[RecordIndex]:
        out = []
        # A name column is indexed even when whoever registered the dataset left it out of its
        # quasi-identifiers: a name with one more value singles a person out.
        direct = tuple(self.policy.linkage.direct_identifier_columns)
        for source in self.context.protected:
            if source.quasi_identifiers is None:
                continue
            for path in source.files():
                if path.suffix.lower() not in TABLE_SUFFIXES:
                    continue
                try:
                    st = path.stat()
                    key = (str(path), st.st_size, st.st_mtime_ns, source.quasi_identifiers, source.name, direct)
                    index = self.context.cache.record_indexes.get_or_build(
                        key, lambda p=path, s=source: RecordIndex.from_csv(s.name, p, s.quasi_identifiers or (), direct))
                    if index.columns:  # a file of a dataset folder without the dataset's QI columns
                        out.append(index)
                except (OSError, UnicodeError, ValueError) as exc:
                    self.problems.append(f"protected dataset {source.name!r} could not be read for record linkage "
                                         f"({getattr(exc, 'strerror', None) or exc})")
        return out

    @functools.cached_property
    def provenance_index(self) -> NgramIndex | None:
        calls = [c for c in self.context.model_calls if c.output]
        if not calls:
            return None
        p = self.policy.provenance
        digest = hashlib.sha256()
        for c in calls:
            digest.update(c.call_id.encode() + b"\0" + c.output.encode("utf-8", "surrogatepass") + b"\0")
        key = (digest.hexdigest(), p.ngram_chars)
        return self.context.cache.provenance_indexes.get_or_build(
            key, lambda: NgramIndex.build(((c.call_id, [c.output]) for c in calls), p.ngram_chars, 1))

    @functools.cached_property
    def fingerprints(self) -> list[fingerprints_mod.Fingerprint]:
        w = self.policy.weights
        out = []
        for model_dir in self.context.model_dirs:
            try:
                out.append(fingerprints_mod.fingerprint(Path(model_dir), w.window, w.index_stride, w.min_vector_length,
                                                        cache=self.context.cache))
            except (fingerprints_mod.FingerprintError, OSError, ValueError) as exc:
                self.problems.append(f"model {str(model_dir)!r} could not be fingerprinted ({exc}); "
                                     "exported numbers were not compared with its weights")
        return out

    @functools.cached_property
    def model_dims(self) -> list[ModelDims]:
        """The dimensions of the context's models, for recognising their activations."""
        out = []
        for model_dir in self.context.model_dirs:
            if not (Path(model_dir) / "config.json").exists():
                continue  # not a model's directory: `fingerprints` says so once
            try:
                out.append(read_model_dims(Path(model_dir)))
            except ModelDimsError as exc:
                self.problems.append(f"model {str(model_dir)!r} has no readable dimensions ({exc}); "
                                     "arrays shaped like its activations were not looked for")
        return out

    def pii_analyzer(self, phone_regions: list[str]) -> pii.Analyzer:
        """The Presidio analyser for these phone regions, from the cache (building one takes a while)."""
        regions = tuple(phone_regions)
        return self.context.cache.analyzers.get_or_build(regions, lambda: pii.build_analyzer(regions))

    @functools.cached_property
    def prior_tables(self) -> list[tuple[str, Any]]:
        """(file name, table) for every table in the project's earlier releases."""
        from enclave.review.scan.items import Item

        out = []
        for released in self.context.prior_releases:
            item = Item(released.name, released.data, len(released.data))
            out.extend((released.name, table) for table in item.tables)
        return out

