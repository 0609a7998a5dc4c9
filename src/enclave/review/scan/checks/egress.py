"""Egress budget: this export's bytes plus what the project already exported, against its grant."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result, human_size
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item

NAME = "egress"


def check(items: list[Item], env: Env) -> Result:
    result = Result()
    allowed = env.context.egress_allowed_bytes
    if allowed is None:
        return result
    policy = env.policy.egress
    size = sum(i.size for i in items)
    used = env.context.egress_used_bytes
    after = used + size
    facts = dict(export_bytes=size, used_bytes=used, allowed_bytes=allowed)
    summary = (f"this export is {human_size(size)}; the project has exported {human_size(used)} "
               f"of {human_size(allowed)} allowed")
    if after > allowed:
        result.add(NAME, policy.exceeded_severity, "(export)", "whole export",
                   f"over the project's egress allowance: {summary}", **facts)
    elif after >= policy.warn_fraction * allowed:
        result.add(NAME, policy.near_limit_severity, "(export)", "whole export",
                   f"near the project's egress allowance: {summary}", **facts)
    else:
        result.add(NAME, "info", "(export)", "whole export", summary, **facts)
    return result
