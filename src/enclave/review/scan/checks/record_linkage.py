"""Record linkage: values of one record of a protected dataset close together in an export that
fewer than k records share (a name with a date of birth; a date of birth with a ZIP code; any
`min_values` quasi-identifiers on one line). The matched record goes into the finding's evidence,
which only reviewers see; the message names the dataset, which columns matched and how many
records share them, never the values."""
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
                               k_anonymity=policy.k_anonymity, direct_identifiers=policy.direct_identifier_columns):
                records = "1 record" if linked.group_size == 1 else f"{linked.group_size} records"
                result.add(NAME, policy.severity, item.name, segment.where(linked.start, linked.end),
                           f"{' + '.join(linked.matched)} match {records} of protected dataset {linked.dataset!r} "
                           f"(k = {policy.k_anonymity})",
                           **segment.evidence(linked.start, linked.end, dataset=linked.dataset,
                                              record_number=linked.record_number, record=linked.record,
                                              matched=list(linked.matched), group_size=linked.group_size,
                                              k_anonymity=policy.k_anonymity))
    return result
