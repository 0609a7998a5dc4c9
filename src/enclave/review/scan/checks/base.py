"""What a check is, what it returns, and how it makes findings.

A check is a pure function: an `item` check takes one item (a file, an archive member, a decoded
blob) and the scan's `Env` (policy, context and the indexes built from them) and returns a
`Result`: findings, plus any new items found inside (archive members, container parts, decoded
blobs) for the pipeline to scan in turn, and, from the checks that open containers, where each of
the item's bytes went (`coverage.Region`). An `export` check sees all top-level items at once (the egress budget is
about the whole export). Checks never write anything anywhere.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from enclave.review.scan.coverage import Region
from enclave.review.scan.findings import Finding
from enclave.review.scan.items import Item
from enclave.review.scan.policy import severity


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    children: list[Item] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)

    def add(self, check: str, level: str, file: str, location: str, message: str, **evidence: Any) -> None:
        """Append a finding at the policy severity `level` ("off" adds nothing)."""
        found = make_finding(check, level, file, location, message, **evidence)
        if found is not None:
            self.findings.append(found)


def make_finding(check: str, level: str, file: str, location: str, message: str, **evidence: Any) -> Finding | None:
    sev = severity(level)
    if sev is None:
        return None
    return Finding(check=check, severity=sev, file=file, location=location, message=message, evidence=evidence)


@dataclass(frozen=True)
class Check:
    name: str
    scope: Literal["item", "export"]
    run: Callable[..., Result]
    summary: str


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
