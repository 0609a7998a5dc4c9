"""Memorisation, verbatim: runs of an export that also occur in protected text (registered
datasets, fine-tuning sets, files named with `--protect`), found through the n-gram index over the
folded text, so that case, spacing, punctuation, look-alike letters and zero-width characters do
not hide them. The message names the protected source, never its content."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item

NAME = "memorisation"


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not item.segments or not env.context.protected:
        return result
    index = env.text_index
    if index is None:
        return result
    policy = env.policy.memorisation
    for segment in item.segments:
        for overlap in index.overlaps(segment.folded(False), len(segment.text), policy.min_overlap_chars):
            sources = ", ".join(repr(s) for s in overlap.sources)
            result.add(NAME, policy.overlap_severity, item.name, segment.where(overlap.start, overlap.end),
                       f"{overlap.folded_chars} characters (ignoring case, spacing and punctuation) occur verbatim "
                       f"in protected text {sources}",
                       **segment.evidence(overlap.start, overlap.end, sources=list(overlap.sources),
                                          folded_chars=overlap.folded_chars))
    return result
