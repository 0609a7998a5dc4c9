"""Archives (zip, tar, gzip, bzip2, xz, and the XLSX workbooks that are zips): opened safely,
members and the other bytes they hold handed back to be scanned.

Members come back as items named "outer.zip!dir/member.txt", and every check runs on them as on
any file, at any depth up to the policy's limit. So do the parts an archive holds besides its
members ("outer.zip!(zip comment)", "note.gz!(gzip member 1 file name)"; see `coverage`). A
workbook's parts are all scanned as well as its cells: a sheet is only part of what an XLSX
carries. What cannot be extracted safely (path traversal, links, devices, bombs, too many
members) or read at all (corrupt, encrypted) is a finding: an archive whose contents cannot all be
inspected cannot all be released.
"""
from __future__ import annotations

from enclave.review.scan.archives import open_archive
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.coverage import UNEXAMINED, Region
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item

NAME = "archive"


def is_archive(item: Item) -> bool:
    return item.kind is Kind.archive or (item.kind is Kind.table and item.sniffed.format == "xlsx")


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not is_archive(item) or item.unread:
        return result
    policy = env.policy.archives
    if item.depth >= policy.max_depth:
        result.add(NAME, policy.unsafe_member_severity, item.name, "whole file",
                   f"archive nested {item.depth + 1} levels deep, over the limit of {policy.max_depth}; not opened",
                   depth=item.depth + 1)
        result.regions.append(Region("whole file (nested too deep; not opened)", len(item.data), UNEXAMINED))
        return result
    fmt = "zip" if item.sniffed.format == "xlsx" else item.sniffed.format
    opened = open_archive(item.name, item.data, fmt, policy, env.expansion)
    for problem in opened.problems:
        level = policy.unsafe_member_severity if problem.kind == "unsafe" else policy.corrupt_archive_severity
        where = f"member {problem.member}" if problem.member else "whole file"
        result.add(NAME, level, item.name, where, f"{problem.member + ': ' if problem.member else ''}{problem.message}",
                   member=problem.member, problem=problem.kind)
    result.children.extend(item.child(m.name, m.data, origin="member") for m in opened.members)
    result.children.extend(item.child(f"({p.label})", p.data, origin="part") for p in opened.parts)
    result.regions.extend(opened.regions)
    return result
