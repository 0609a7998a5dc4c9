"""Statistical disclosure control on bare tables (CSV, TSV, XLSX, DataFrames printed in notebook
outputs): counts under the threshold, zeros, and dominance when the table gives contributions.

Which columns are counts: those whose header says so (policy regex), and, in a crosstab, any column
of non-negative whole numbers whose header is not one of the policy's non-count names (year, age,
code ...), that is not a row index and not a 0/1 indicator. A value that is not a number ("<5", "*", "[REDACTED]") is
suppressed, not small. Dominance follows ACRO's defaults: the N-K rule (the largest `nk_n`
contributions make more than `nk_k` of the total) and the p-ratio (what is left after the two
largest is less than `p_ratio` of the largest), on columns named total / largest / second.
"""
from __future__ import annotations

import re

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item
from enclave.review.scan.policy import TablesPolicy
from enclave.review.scan.tables import Table

NAME = "tables"
MAX_PER_FILE = 200


def count_columns(table: Table, policy: TablesPolicy) -> list[int]:
    named = re.compile(policy.count_columns, re.IGNORECASE)
    excluded = re.compile(policy.not_count_columns, re.IGNORECASE)
    keys = set(table.key_columns())
    out = []
    for j, header in enumerate(table.header):
        h = header.strip().lower()
        values = [v for v in table.column(j) if v is not None]
        if not values or j in keys:
            continue
        whole = all(v >= 0 and float(v).is_integer() for v in values)
        if named.fullmatch(h):
            out.append(j)
            continue
        if not policy.unlabelled_integers_are_counts or not whole or (h and excluded.search(h)):
            continue
        if set(values) <= {0.0, 1.0}:
            continue  # a yes/no indicator, not a count (a count column says so in its header)
        n = len(values)
        if sorted(values) in (list(map(float, range(n))), list(map(float, range(1, n + 1)))) and not h:
            continue  # a row index
        out.append(j)
    return out


def _find(table: Table, names: list[str]) -> int | None:
    wanted = {n.lower() for n in names}
    for j, header in enumerate(table.header):
        if header.strip().lower() in wanted:
            return j
    return None


def check(item: Item, env: Env) -> Result:
    result = Result()
    policy = env.policy.tables
    reported = 0
    for table in item.tables:
        dominance_cols = {_find(table, policy.total_columns), _find(table, policy.largest_columns),
                          _find(table, policy.second_columns)} - {None}
        for j in count_columns(table, policy):
            if j in dominance_cols:
                continue
            for r, value in enumerate(table.column(j)):
                if value is None or not float(value).is_integer():
                    continue
                if 0 < value < policy.min_count:
                    level, message = policy.small_count_severity, f"count {value:g} is under the minimum of {policy.min_count}"
                elif value == 0:
                    level, message = policy.zero_severity, "a zero count can be disclosive (everyone or no one in a group)"
                else:
                    continue
                reported += 1
                if reported <= MAX_PER_FILE:
                    result.add(NAME, level, item.name, table.where(r, j), message,
                               table=table.label, row=r + 1, col=table.header[j], value=value)
        _dominance(item, table, policy, result)
    if reported > MAX_PER_FILE:
        result.add(NAME, policy.small_count_severity, item.name, "whole file",
                   f"{reported - MAX_PER_FILE} more small or zero counts not listed one by one", count=reported)
    return result


def _dominance(item: Item, table: Table, policy: TablesPolicy, result: Result) -> None:
    total_at, first_at = _find(table, policy.total_columns), _find(table, policy.largest_columns)
    if total_at is None or first_at is None:
        return
    second_at = _find(table, policy.second_columns)
    totals, firsts = table.column(total_at), table.column(first_at)
    seconds = table.column(second_at) if second_at is not None else [None] * len(totals)
    for r, (total, first, second) in enumerate(zip(totals, firsts, seconds)):
        if total is None or first is None or total <= 0:
            continue
        top = first + (second or 0) if policy.nk_n >= 2 else first
        reasons = []
        if top / total > policy.nk_k:
            reasons.append(f"the largest {policy.nk_n if second is not None or policy.nk_n == 1 else 1} "
                           f"contribution(s) make {top / total:.0%} of the total (N-K rule: over {policy.nk_k:.0%})")
        if second is not None and first > 0 and (total - first - second) / first < policy.p_ratio:
            reasons.append(f"the rest after the two largest is {(total - first - second) / first:.1%} of the largest "
                           f"(p-ratio: under {policy.p_ratio:.0%})")
        if reasons:
            result.add(NAME, policy.dominance_severity, item.name, table.where(r, total_at),
                       "dominated cell: " + "; ".join(reasons), table=table.label, row=r + 1, col=table.header[total_at])
