"""ACRO's `results.json` as evidence: every output ACRO checked, shown per cell.

ACRO (AI-SDC) writes, per output, a status (pass / fail / review), the failing cells of each of
its checks (`files[].sdc.cells`: [row, column] index pairs) and the same per cell by label
(`outcome`: column -> row -> "ok" or the names of the checks that failed). We turn each failing
cell into a finding on the output's CSV (when the export includes it, so the reviewer sees the
cell highlighted) and each output into a summary. ACRO leaves differencing to humans
("PresenceOfLinkedTableCheck"); our differencing check does it.
"""
from __future__ import annotations

import json
import posixpath

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item

NAME = "acro"


def is_acro_results(document: object) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict):
        return False
    tool = document.get("tool")
    if isinstance(tool, dict) and str(tool.get("name", "")).upper() == "ACRO":
        return True
    return "version" in document and all(isinstance(v, dict) and "status" in v for v in document["results"].values())


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.kind is not Kind.json or item.text is None or not item.name.endswith(".json"):
        return result
    try:
        document = json.loads(item.text)
    except ValueError:
        return result
    if not is_acro_results(document):
        return result
    policy = env.policy.acro
    levels = {"fail": policy.fail_severity, "review": policy.review_severity, "pass": policy.pass_severity}
    folder = posixpath.dirname(item.name)
    for uid, output in document["results"].items():
        if not isinstance(output, dict):
            continue
        status = str(output.get("status", "review")).lower()
        level = levels.get(status, policy.review_severity)
        method = (output.get("properties") or {}).get("method", output.get("type", "output"))
        files = [f.get("name") for f in output.get("files") or [] if isinstance(f, dict) and f.get("name")]
        target = posixpath.join(folder, files[0]) if files else item.name
        exception = str(output.get("exception") or "").strip()
        summary = " ".join(str(output.get("summary") or "").split())
        message = f"ACRO {method} {uid}: {status}"
        if summary:
            message += f" ({summary[:300]})"
        if exception:
            message += f"; the scholar asks for an exception: {exception[:300]}"
        comments = [str(c) for c in output.get("comments") or [] if str(c).strip()]
        if comments:
            message += "; comments: " + " | ".join(c[:200] for c in comments[:5])
        if "DONT_RELEASE" in uid or any("DO NOT RELEASE" in c.upper() for c in comments):
            # ACRO's own session summaries are for the output checker, never for release.
            level = max(level, policy.review_severity, key=["off", "info", "warn", "block"].index)
            message = f"ACRO marks {', '.join(files) or uid} as not for release (a summary for the output checker); " + message
        result.add(NAME, level, item.name, f"output {uid}", message, output=uid, status=status, files=files,
                   command=output.get("command", ""))
        if status == "pass":
            continue
        outcome = output.get("outcome") or {}
        cells = []
        if isinstance(outcome, dict):
            for column, rows in outcome.items():
                if not isinstance(rows, dict):
                    continue
                for row, verdict in rows.items():
                    if isinstance(verdict, str) and verdict.strip() and verdict.strip() != "ok":
                        checks = [c.strip() for c in verdict.split(";") if c.strip()]
                        cells.append((row, column, checks))
        for row, column, checks in cells:
            result.add(NAME, level, target, f"cell (row {row}, col {column})",
                       f"ACRO {uid}: {', '.join(checks)}", output=uid, row=row, col=column, checks=checks,
                       source=item.name)
    return result
