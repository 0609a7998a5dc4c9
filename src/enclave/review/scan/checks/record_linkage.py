"""Record linkage: several quasi-identifiers of one record of a protected dataset close together
in an export (name and date of birth; ZIP code, date of birth and sex; any `min_values` of them).
The matched record goes into the finding's evidence, which only reviewers see; the message names
the dataset and which kinds of value matched, never the values."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item
from enclave.review.scan.linkage import link

NAME = "record_linkage"


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not item.segments or not env.context.protected:
        return result
    indexes = env.record_indexes
    if not indexes:
        return result
    policy = env.policy.linkage
    for index in indexes:
        for segment in item.segments:
            for linked in link(index, segment.text, min_values=policy.min_values, combinations=policy.combinations,
                               window=policy.window_chars, max_postings=policy.max_postings,
                               k_anonymity=policy.k_anonymity):
                result.add(NAME, policy.severity, item.name, segment.where(linked.start, linked.end),
                           f"{len(linked.matched)} quasi-identifiers ({', '.join(linked.matched)}) of one record of "
                           f"protected dataset {linked.dataset!r} appear together",
                           **segment.evidence(linked.start, linked.end, dataset=linked.dataset,
                                              record_number=linked.record_number, record=linked.record,
                                              matched=list(linked.matched)))
    return result
