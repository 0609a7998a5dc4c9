"""Provenance: which spans of an export came from which of the project's audited model calls.

Not a verdict on its own (info): it tells the reviewer where model output sits in the export, and
which calls produced it, so they can look those calls up in the audit log and judge the text
against the memorisation signals next to it."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item

NAME = "provenance"


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not item.segments or not env.context.model_calls:
        return result
    index = env.provenance_index
    if index is None:
        return result
    policy = env.policy.provenance
    for segment in item.segments:
        for overlap in index.overlaps(segment.folded(False), len(segment.text), policy.min_span_chars):
            calls = list(overlap.sources)
            shown = ", ".join(calls[:5]) + (f" and {len(calls) - 5} more" if len(calls) > 5 else "")
            result.add(NAME, "info", item.name, segment.where(overlap.start, overlap.end),
                       f"{overlap.folded_chars} characters match the output of model call(s) {shown}",
                       **segment.evidence(overlap.start, overlap.end, call_ids=calls))
    return result
