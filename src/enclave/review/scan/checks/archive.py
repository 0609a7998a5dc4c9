"""Archives (zip, tar, gzip, bzip2, xz): opened safely, members handed back to be scanned.

Members come back as items named "outer.zip!dir/member.txt", and every check runs on them as on
any file, at any depth up to the policy's limit. What cannot be extracted safely (path traversal,
links, devices, bombs, too many members) or read at all (corrupt, encrypted) is a finding: an
archive whose contents cannot all be inspected cannot all be released.
"""
from __future__ import annotations

from enclave.review.scan.archives import open_archive
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item

NAME = "archive"


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.kind is not Kind.archive or item.unread:
        return result
    policy = env.policy.archives
    if item.depth >= policy.max_depth:
        result.add(NAME, policy.unsafe_member_severity, item.name, "whole file",
                   f"archive nested {item.depth + 1} levels deep, over the limit of {policy.max_depth}; not opened",
                   depth=item.depth + 1)
        return result
    opened = open_archive(item.name, item.data, item.sniffed.format, policy, env.expansion)
    for problem in opened.problems:
        level = policy.unsafe_member_severity if problem.kind == "unsafe" else policy.corrupt_archive_severity
        where = f"member {problem.member}" if problem.member else "whole file"
        result.add(NAME, level, item.name, where, f"{problem.member + ': ' if problem.member else ''}{problem.message}",
                   member=problem.member, problem=problem.kind)
    result.children.extend(item.child(m.name, m.data, origin="member") for m in opened.members)
    return result
