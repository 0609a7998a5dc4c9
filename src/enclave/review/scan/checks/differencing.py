"""Differencing against the project's earlier releases.

Two tables that are each safe can together reveal a small group: this year's count of 103
released after last month's 100 for the same group and the same measure says that 3 people
joined it. ACRO leaves this to humans; we compare every count column of a new table with every
released table that has the same row keys and column, cell by cell, and flag differences that
are themselves small counts. When the row keys differ (a subgroup added or removed), the column
totals are compared instead.
"""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.checks.table_cells import count_columns
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item
from enclave.review.scan.tables import Table

NAME = "differencing"
MAX_PER_FILE = 100


def _keyed(table: Table, keys: list[int]) -> dict[tuple[str, ...], int]:
    return {table.row_key(r, keys): r for r in range(len(table.rows))}


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not env.context.prior_releases or not item.tables:
        return result
    policy = env.policy.tables
    reported = 0
    for table in item.tables:
        counts = {table.header[j].strip().lower(): j for j in count_columns(table, policy)}
        if not counts:
            continue
        keys = table.key_columns()
        key_names = [table.header[j].strip().lower() for j in keys]
        for released_name, released in env.prior_tables:
            if released_name == item.name and released.rows == table.rows:
                continue  # the same file released before
            r_keys = released.key_columns()
            if [released.header[j].strip().lower() for j in r_keys] != key_names:
                continue
            r_counts = {released.header[j].strip().lower(): j for j in count_columns(released, policy)}
            shared = sorted(set(counts) & set(r_counts))
            if not shared:
                continue
            mine, theirs = _keyed(table, keys), _keyed(released, r_keys)
            common = set(mine) & set(theirs)
            for column in shared:
                j, rj = counts[column], r_counts[column]
                for key in sorted(common):
                    a, b = table.column(j)[mine[key]], released.column(rj)[theirs[key]]
                    if a is None or b is None:
                        continue
                    difference = abs(a - b)
                    if 0 < difference < policy.min_count:
                        reported += 1
                        if reported <= MAX_PER_FILE:
                            result.add(NAME, policy.differencing_severity, item.name, table.where(mine[key], j),
                                       f"differs by {difference:g} from the same cell of released {released_name!r}: "
                                       f"together they reveal a group smaller than {policy.min_count}",
                                       released=released_name, row=mine[key] + 1, col=table.header[j], difference=difference)
                if set(mine) != set(theirs):
                    total = sum(v for v in table.column(j) if v is not None)
                    r_total = sum(v for v in released.column(rj) if v is not None)
                    difference = abs(total - r_total)
                    if 0 < difference < policy.min_count:
                        reported += 1
                        result.add(NAME, policy.differencing_severity, item.name,
                                   f"{table.label + ', ' if table.label else ''}column {table.header[j]}",
                                   f"column total differs by {difference:g} from released {released_name!r}, whose rows "
                                   f"differ: the rows in one and not the other hold fewer than {policy.min_count}",
                                   released=released_name, col=table.header[j], difference=difference)
    return result
