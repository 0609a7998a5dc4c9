"""File policy: which types may leave, how big, and what needs a person's eyes.

Types are judged by content (magic bytes) and by name: a type not on the policy's list is refused,
content that is not what its extension says is pointed out (and scanned as what it is), pictures
and PDFs (a file's own or a notebook's outputs) need a person because no automated check reads
them, a file over the size limit is refused unread, and text that is not valid UTF-8 is scanned
with replacement characters and flagged. Tensor files and archives are left to their own checks.

Bytes of no known format inside a container (a member, or a part such as a zip comment or data
after a PNG's IEND; see `coverage`) are "unexamined bytes in <container>: <where> (<n> bytes)":
they block, unless the policy leaves that container type to human eyes (`human_review_types`).
The names of a container's parts are the format's, not the scholar's: the type list does not
apply to them, nor to the parts of a workbook.
"""
from __future__ import annotations

from enclave.review.scan.checks.base import Result, human_size
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item
from enclave.review.scan.policy import FilesPolicy

NAME = "file_policy"
_ARCHIVE_EXTENSIONS = {"zip", "tar", "gz", "tgz", "tar.gz", "bz2", "tar.bz2", "xz", "tar.xz"}
_EXPECTED = {  # extension -> kinds its content may have without comment
    "csv": {Kind.table, Kind.text, Kind.empty}, "tsv": {Kind.table, Kind.text, Kind.empty},
    "xlsx": {Kind.table}, "ipynb": {Kind.notebook}, "json": {Kind.json, Kind.notebook, Kind.text},
    "png": {Kind.image}, "jpg": {Kind.image}, "jpeg": {Kind.image}, "gif": {Kind.image}, "svg": {Kind.image, Kind.text},
    "pdf": {Kind.pdf},
}


def check(item: Item, env: Env) -> Result:
    policy = env.policy.files
    result = Result()
    add = result.add
    if item.unread:
        add(NAME, policy.oversize_severity, item.name, "whole file",
            f"file is {human_size(item.size)}, over the limit of {human_size(policy.max_file_bytes)}; it was not read",
            size=item.size, limit=policy.max_file_bytes)
        return result
    if item.kind is Kind.empty:
        add(NAME, policy.empty_file_severity, item.name, "whole file", "empty file")
        return result
    ext = item.extension
    if item.origin not in ("decoded", "part") and item.container != "xlsx":
        allowed = set(policy.allowed_extensions)
        last = ext.rsplit(".", 1)[-1]
        if ext and ext not in allowed and last not in allowed:
            add(NAME, policy.disallowed_type_severity, item.name, "whole file",
                f"files of type .{ext} may not be exported", extension=ext)
        elif not ext and not item.is_textual:
            add(NAME, policy.disallowed_type_severity, item.name, "whole file",
                "a file without an extension may be exported only if it is text", extension="")
        expected = _EXPECTED.get(ext)
        is_archive_name = ext in _ARCHIVE_EXTENSIONS
        mismatch = (expected is not None and item.kind not in expected and item.kind is not Kind.tensor) or \
                   (is_archive_name and item.kind not in (Kind.archive, Kind.tensor)) or \
                   (item.kind is Kind.archive and not is_archive_name and ext not in ("xlsx",))
        if mismatch and ext:
            add(NAME, policy.mismatch_severity, item.name, "whole file",
                f"content is {item.sniffed.format}, not what the .{ext} extension says; it was scanned as {item.sniffed.format}",
                detected=item.sniffed.format, extension=ext)
    if item.kind is Kind.binary and item.origin in ("member", "part"):
        where = item.label.removeprefix("(").removesuffix(")") if item.origin == "part" else f"member {item.label}"
        if left_to_human(item, policy):
            add(NAME, policy.human_review_severity, item.name, "whole file",
                f"bytes for human eyes in {item.parent}: {where} ({len(item.data):,} bytes); no check reads them, "
                f"the reviewer page shows them", container=item.parent, bytes=len(item.data))
        else:
            add(NAME, policy.unexamined_severity, item.name, "whole file",
                f"unexamined bytes in {item.parent}: {where} ({len(item.data):,} bytes); no check can read them",
                container=item.parent, bytes=len(item.data))
    elif item.kind is Kind.binary:
        add(NAME, policy.unknown_binary_severity, item.name, "whole file",
            f"binary content of no known format ({item.sniffed.format}) cannot be checked", format=item.sniffed.format)
    elif item.kind in (Kind.image, Kind.pdf) or (ext in policy.human_review_extensions and item.kind is not Kind.tensor):
        what = "a PDF" if item.kind is Kind.pdf else f"an image ({item.sniffed.format})"
        add(NAME, policy.human_review_severity, item.name, "whole file",
            f"{what}: no automated check reads it, a person must look at it", format=item.sniffed.format)
    if item.utf8_error is not None:
        offset, count = item.utf8_error
        add(NAME, policy.invalid_utf8_severity, item.name, f"byte {offset}",
            f"not valid UTF-8 ({count} undecodable byte sequence(s), the first at byte {offset}); "
            "scanned with replacement characters", byte=offset, count=count)
    if item.notebook_error:
        add(NAME, policy.invalid_utf8_severity, item.name, "whole file",
            f"not a readable notebook ({item.notebook_error}); scanned as plain text")
    if item.table_error:
        add(NAME, "info", item.name, "whole file", f"could not be read as a table ({item.table_error}); scanned as text")
    for table in item.tables:
        if len(table.rows) > policy.max_table_rows or table.truncated:
            where = table.label or "whole file"
            add(NAME, policy.max_table_rows_severity, item.name, where,
                f"table has {len(table.rows):,}{'+' if table.truncated else ''} rows, over {policy.max_table_rows:,}: "
                "this looks like row-level data rather than results", rows=len(table.rows))
    return result


def left_to_human(item: Item, policy: FilesPolicy) -> bool:
    """Whether bytes of `item` that no check reads may go to a reviewer rather than block."""
    return item.container in policy.human_review_types
