"""The scan pipeline: every automated check over every file of an export.

The review service and `enclave review scan` both call this; its interface is fixed:

    from enclave.review.scan import ExportFile, ScanCache, ScanContext, ScanReport, scan_files
    from enclave.review.scan.policy import DEFAULT_POLICY, Policy, load_policy   # load_policy(path) -> Policy

    ExportFile(name, data)          # name as the scholar gave it (relative path); `size` optional:
                                    # the real size of a file refused unread (over the size limit)
    ScanContext(protected=[ProtectedSource...], model_dirs=[Path...], scorer=None | Callable[[str], TokenScores],
                model_calls=[ModelCallText...], prior_releases=[ExportFile...],
                egress_used_bytes=0, egress_allowed_bytes=None, cache=ScanCache(disk_dir=None))
    scan_files(files, policy, context) -> ScanReport
    ScanReport(verdict, findings, files, policy_version, coverage).to_json()
        -> {"verdict": "pass"|"review"|"block", "findings": [...]}   (+ "coverage": [...] if asked)
    inspect(file, policy) -> Inspection   # the file, everything inside it and its coverage, no checks run

How it runs: each file becomes an `Item`; every registered item check (`checks.CHECKS`) runs on
it; archive members, container parts and decoded blobs that checks hand back are queued and
scanned the same way; then the export checks run. Every item's bytes are accounted for (see
`coverage`): the checks that open containers say where each byte went, and anything else is read
whole by the checks (text), shown to a person (images) or unexamined (bytes of no known format,
a file refused unread). `ScanReport.coverage` adds it up per exported file. A check that fails with an exception does not stop the scan: its
failure is a blocking finding on that file, because a file a check could not read has not been
checked. Context that could not be used (an unreadable dataset, a model that cannot be
fingerprinted, a scorer that is down) is reported as a warning.

The library is given its context and looks nothing up: the review service gathers a project's
(registered datasets, model calls, export allowance, earlier releases) in one place,
`enclave.review.scan_context.build_scan_context`.
"""
from __future__ import annotations

import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.review.scan.cache import ScanCache
from enclave.review.scan.checks import CHECKS, archive, containers, dp_receipts, encoded_blobs, file_policy
from enclave.review.scan.checks.base import make_finding
from enclave.review.scan.context import Env, ModelCallText, ProtectedSource, ScanContext
from enclave.review.scan.coverage import CHECKED, HUMAN, UNEXAMINED, FileCoverage, Region
from enclave.review.scan.detect import Kind
from enclave.review.scan.findings import Finding, Severity, Verdict, verdict
from enclave.review.scan.items import Item
from enclave.review.scan.policy import DEFAULT_POLICY, Policy, load_policy
from enclave.review.scan.scoring import Scorer, TokenScores, gateway_scorer, local_scorer

__all__ = ["DEFAULT_POLICY", "ExportFile", "FileCoverage", "FileSummary", "ModelCallText", "Policy", "ProtectedSource", "ScanCache",
           "ScanContext", "ScanReport", "Scorer", "TokenScores", "gateway_scorer", "load_policy", "local_scorer",
           "Inspection", "inspect", "scan_files"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportFile:
    name: str
    data: bytes
    size: int | None = None  # set when `data` was not read in full (the file is over the size limit)

    @classmethod
    def from_path(cls, path: Path, name: str, max_bytes: int) -> "ExportFile":
        """Read a file, unless it is bigger than `max_bytes`: then keep only its size (no 1 GB reads)."""
        size = path.stat().st_size
        if size > max_bytes:
            return cls(name, b"", size)
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:  # it grew while we looked
            return cls(name, b"", len(data))
        return cls(name, data)


@dataclass(frozen=True)
class FileSummary:
    name: str
    size: int
    kind: str
    format: str
    sha256: str | None  # None for a file refused unread
    origin: str  # "file", "member", "part" or "decoded"


@dataclass(frozen=True)
class ScanReport:
    verdict: Verdict
    findings: list[Finding]
    files: list[FileSummary] = field(default_factory=list)
    policy_version: str = ""
    coverage: list[FileCoverage] = field(default_factory=list)  # per exported file, in the order given

    def to_json(self, evidence: bool = False, coverage: bool = False) -> dict[str, Any]:
        """{"verdict", "findings": [{"check", "severity", "file", "location", "message"}]}; with
        `evidence`, each finding also carries its evidence (for reviewers only: it can quote
        protected records); with `coverage`, per exported file the bytes the checks read, the bytes
        left to human eyes and the bytes nothing read, with where they are."""
        out = []
        for f in self.findings:
            d = f.to_json()
            if not evidence:
                d.pop("evidence", None)
            out.append(d)
        body: dict[str, Any] = {"verdict": self.verdict.value, "findings": out}
        if coverage:
            body["coverage"] = [c.to_json() for c in self.coverage]
        return body


def _summary(item: Item) -> FileSummary:
    digest = None if item.unread else hashlib.sha256(item.data).hexdigest()
    return FileSummary(item.name, item.size, item.kind.value, item.sniffed.format if not item.unread else "unread",
                       digest, item.origin)


def default_regions(item: Item, policy: Policy) -> list[Region]:
    """Where the bytes of an item went when no check that opens containers said."""
    if item.unread:
        return [Region("whole file (over the size limit; not read)", item.size, UNEXAMINED)]
    size = len(item.data)
    if item.kind is Kind.empty:
        return []
    if item.kind is Kind.binary:
        human = item.origin in ("member", "part") and file_policy.left_to_human(item, policy.files)
        return [Region("", size, HUMAN if human else UNEXAMINED)]
    if item.kind in (Kind.image, Kind.pdf):
        return [Region("", size, HUMAN)]
    if archive.is_archive(item):  # an archive check that failed: nothing in it was read
        return [Region("", size, UNEXAMINED)]
    return [Region("", size, CHECKED)]  # text, tables, notebooks, and tensors (their check reads them)


def _top_items(files: list[ExportFile], policy: Policy) -> list[Item]:
    top = []
    for f in files:
        size = f.size if f.size is not None else len(f.data)
        # Never scan more than the policy allows, even if the caller read it all.
        data = f.data if size <= policy.files.max_file_bytes else b""
        top.append(Item(f.name, data, size))
    return top


@dataclass
class Inspection:
    """An exported file opened as the scan opens it: the items in scan order (the file first), how
    each item's bytes went (`coverage` HOWS), and the file's coverage."""

    items: list[Item]
    hows: dict[str, set[str]]  # item name -> {"checked", "inside", "human", "unexamined"}
    coverage: FileCoverage


def inspect(file: ExportFile, policy: Policy) -> Inspection:
    """The file and every item found inside it (members, parts, decoded blobs), as a scan finds
    them, with where their bytes went, without running the other checks: what the reviewer UI
    shows of the bytes no check reads."""
    env = Env(policy, ScanContext())
    queue: deque[Item] = deque(_top_items([file], policy))
    inspection = Inspection([], {}, FileCoverage(file.name))
    while queue:
        item = queue.popleft()
        inspection.items.append(item)
        regions: list[Region] = []
        for check in (archive.check, containers.check, encoded_blobs.check):
            result = check(item, env)
            queue.extend(result.children)
            regions.extend(result.regions)
        for region in regions or default_regions(item, policy):
            inspection.coverage.add(item.name, region)
            inspection.hows.setdefault(item.name, set()).add(region.how)
    return inspection


def scan_files(files: list[ExportFile], policy: Policy, context: ScanContext | None = None) -> ScanReport:
    """Run every registered check over `files` (and everything inside them)."""
    env = Env(policy, context or ScanContext())
    top = _top_items(files, policy)
    findings: list[Finding] = []
    summaries: list[FileSummary] = []
    coverage = {item.name: FileCoverage(item.name) for item in top}
    queue: deque[Item] = deque(top)
    item_checks = [c for c in CHECKS if c.scope == "item"]
    while queue:
        item = queue.popleft()
        summaries.append(_summary(item))
        regions: list[Region] = []
        for check in item_checks:
            try:
                result = check.run(item, env)
            except Exception as exc:  # a check's bug must not let the file through unchecked
                log.exception("check %s failed on %s", check.name, item.name)
                findings.append(Finding(check.name, Severity.block, item.name, "whole file",
                                        f"the check failed ({exc.__class__.__name__}: {str(exc)[:200]}); "
                                        "this file was not checked by it", {"error": exc.__class__.__name__}))
                continue
            findings.extend(result.findings)
            queue.extend(result.children)
            regions.extend(result.regions)
        for region in regions or default_regions(item, policy):
            coverage[item.top].add(item.name, region)
    for check in (c for c in CHECKS if c.scope == "export"):
        try:
            findings.extend(check.run(top, env).findings)
        except Exception as exc:
            log.exception("export check %s failed", check.name)
            findings.append(Finding(check.name, Severity.block, "(export)", "whole export",
                                    f"the check failed ({exc.__class__.__name__}: {str(exc)[:200]})", {}))
    # Small cells that a valid DP receipt in this export covers get the policy's [dp] severities.
    findings = dp_receipts.relax(findings, top, env)
    for problem in dict.fromkeys(env.problems):
        found = make_finding("context", "warn", "(export)", "scan context", problem)
        if found:
            findings.append(found)
    if env.passages_skipped:
        found = make_finding("model_signals", "info", "(export)", "whole export",
                             f"{env.passages_skipped} passages were not scored: the limit is "
                             f"{policy.memorisation.model.max_passages} per export")
        if found:
            findings.append(found)
    return ScanReport(verdict(findings), findings, summaries, policy.version, list(coverage.values()))

