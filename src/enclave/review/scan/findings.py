"""What every check returns, and how findings combine into a verdict.

Shared by the scan pipeline (`scan.pipeline`), the checks (`scan.checks.*`), the workflow and the
reviewer UI, so that all of them speak about one export in the same terms.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


class Severity(str, enum.Enum):
    block = "block"  # must not leave without a reviewer overriding it (two approvals)
    warn = "warn"  # a reviewer must look (two approvals)
    info = "info"  # context for the reviewer; does not by itself require review


class Verdict(str, enum.Enum):
    passed = "pass"
    review = "review"
    block = "block"


@dataclass(frozen=True)
class Finding:
    check: str  # registered check name, e.g. "identifiers"
    severity: Severity
    file: str  # name inside the export; archive members as "outer.zip!inner/member.txt"
    location: str  # human-readable place: "line 3, chars 10-21", "cell (row 2, col count)", "cell 4 output"
    message: str
    # Machine-readable detail for the UI (e.g. {"start": 10, "end": 21} or {"row": 2, "col": "count"}).
    # Never shown to scholars: it may quote protected records.
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


def verdict(findings: Iterable[Finding]) -> Verdict:
    severities = {f.severity for f in findings}
    if Severity.block in severities:
        return Verdict.block
    if Severity.warn in severities:
        return Verdict.review
    return Verdict.passed
