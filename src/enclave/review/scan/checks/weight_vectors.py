"""Numbers that are model weights: an exported run of numbers equal, up to rounding, scale, sign
and transposition, to a row or column of a weight matrix of one of the enclave's models.

See `scan.fingerprint` for how weights are keyed and candidates verified, and `scan.numbers`
for how runs are read from text (reading order, columns of line blocks, JSON arrays); an XLSX
sheet is read as tab-separated text.
"""
from __future__ import annotations

from pathlib import Path

from enclave.review.scan import numbers
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.fingerprint import Fingerprint, WeightMatch
from enclave.review.scan.items import Item

NAME = "weight_vectors"
MAX_DETAILED = 50  # findings per file; the rest are counted in one more finding


def _describe(match: WeightMatch, fp: Fingerprint) -> str:
    model = Path(fp.model).name or fp.model
    length = match.end - match.start
    part = "" if match.weight_start == 0 else f" from position {match.weight_start + 1}"
    return (f"{length} exported numbers equal {match.axis} {match.index} of {match.tensor}{part} in model "
            f"{model!r} up to scale {match.scale:.4g} (|cosine| {match.cosine:.4f})")


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.unread or not env.context.model_dirs:
        return result
    fingerprints = env.fingerprints
    if not fingerprints:
        return result
    policy = env.policy.weights
    found = 0

    def report(location: str, match: WeightMatch, fp: Fingerprint, evidence: dict) -> None:
        nonlocal found
        found += 1
        if found <= MAX_DETAILED:
            result.add(NAME, policy.weight_vector_severity, item.name, location, _describe(match, fp),
                       model=fp.model, tensor=match.tensor, axis=match.axis, index=match.index,
                       weight_start=match.weight_start, length=match.end - match.start, cosine=round(match.cosine, 6),
                       scale=match.scale, **evidence)

    for segment in item.segments:
        for run in numbers.runs(segment.text, policy.min_vector_length, policy.max_numbers_per_file, segment.codes):
            for fp in fingerprints:
                for match in fp.match(run.values, min_length=policy.min_vector_length, min_cosine=policy.min_cosine,
                                      max_candidates=policy.max_candidates_per_vector):
                    span = run.span(match.start, match.end - 1)
                    if span is not None:
                        first, last = span
                        report(segment.where(first, last), match, fp, segment.evidence(first, last, reading=run.reading))
                    else:
                        label = f"{segment.label}, " if segment.label else ""
                        report(f"{label}{run.reading}, values {match.start + 1}-{match.end}", match, fp,
                               {"segment": segment.label, "reading": run.reading})
    if found > MAX_DETAILED:
        result.add(NAME, policy.weight_vector_severity, item.name, "whole file",
                   f"{found - MAX_DETAILED} more runs of numbers equal model weights", count=found)
    return result
