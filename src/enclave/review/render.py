"""How an exported file is shown to a reviewer: its text with findings highlighted in place, its
table with flagged cells marked, bytes no check reads as a hex and text dump, and its diff against
the previous version.

Nothing is cut off silently: a long table, text or dump is shown a page at a time ("rows 501-1,000
of 1,234, page 2 of 3"), and every page can be asked for.

Everything here treats the export as hostile. Text is escaped piece by piece with
`markupsafe.escape` and only our own `<mark>` tags are added around the escaped pieces, so the
resulting Markup is safe to drop into a template; nothing from the export is ever interpreted.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import json
from typing import Any

from markupsafe import Markup, escape

from enclave.registry.models import ExportFinding

MAX_PREVIEW_CHARS = 200_000  # characters of text per page
MAX_TABLE_ROWS = 500  # table rows per page
DUMP_BYTES = 4096  # bytes per page of a hex dump
DUMP_WIDTH = 16
MAX_DIFF_LINES = 2_000
SEVERITY_RANK = {"block": 3, "warn": 2, "info": 1}
TABLE_SUFFIXES = (".csv", ".tsv")


@dataclasses.dataclass(frozen=True)
class Paging:
    """Which page of how many, and which rows, characters or bytes it holds (1-based, inclusive)."""

    page: int
    pages: int
    first: int
    last: int
    total: int
    unit: str  # "rows", "characters", "bytes"

    @property
    def note(self) -> str:
        if self.total == 0:
            return f"no {self.unit}"
        return f"{self.unit} {self.first:,}\u2013{self.last:,} of {self.total:,} (page {self.page} of {self.pages})"


def paging(total: int, per_page: int, page: int, unit: str) -> tuple[Paging, int, int]:
    """The page (clamped to the ones there are) and its [start, end) slice of `total` things."""
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    end = min(total, start + per_page)
    return Paging(page, pages, start + 1 if total else 0, end, total, unit), start, end


@dataclasses.dataclass
class Preview:
    kind: str  # "text", "table", "dump", "binary", "empty"
    html: Markup = Markup("")
    rows: list[list[tuple[str, str | None]]] = dataclasses.field(default_factory=list)  # (cell, severity)
    header: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    note: str = ""
    paging: Paging | None = None
    dump: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (offset, hex, text) per line

    @property
    def more(self) -> bool:
        """Whether there is more than this page (the request page then links to the file's view)."""
        return self.paging is not None and self.paging.pages > 1


def decode(data: bytes) -> tuple[str, bool]:
    """Text of the file and whether it decoded cleanly (bad bytes become U+FFFD). Decoded exactly
    as the checks decode it (a byte-order mark selects the codec and is dropped), so that their
    character offsets land on the same characters here."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec), True
            except UnicodeDecodeError:
                return data[len(bom):].decode(codec, "replace"), False
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), False


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in sample:
        return True
    text, ok = decode(sample)
    if ok:
        return False
    # Mostly-undecodable bytes: not text a reviewer can read.
    return text.count("\ufffd") > len(text) // 10


def _evidence(f: ExportFinding) -> dict[str, Any]:
    try:
        value = json.loads(f.evidence)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def text_spans(findings: list[ExportFinding], length: int) -> list[tuple[int, int, str, list[int]]]:
    """Non-overlapping (start, end, severity, finding ids) covering every flagged character.
    Offsets are characters of the decoded file, as the checks report them; evidence that names a
    place inside the file (a notebook cell, an archive member) is not a span of the raw text."""
    marks: list[tuple[int, int, str, int]] = []
    for f in findings:
        ev = _evidence(f)
        start, end = ev.get("start"), ev.get("end")
        if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
            continue
        # A span inside a notebook cell or output ("segment": "cell 4 output 1") or inside an archive
        # member is not a span of the raw file's text; the findings table tells where it is.
        if ev.get("segment") or any(k in ev for k in ("cell", "member", "output", "page")):
            continue
        start, end = max(0, start), min(length, end)
        if start < end:
            marks.append((start, end, f.severity, f.id))
    if not marks:
        return []
    cuts = sorted({p for s, e, _, _ in marks for p in (s, e)})
    spans = []
    for a, b in zip(cuts, cuts[1:]):
        covering = [(sev, fid) for s, e, sev, fid in marks if s <= a and b <= e]
        if covering:
            severity = max((sev for sev, _ in covering), key=lambda s: SEVERITY_RANK.get(s, 0))
            spans.append((a, b, severity, sorted(fid for _, fid in covering)))
    return spans


def highlight(text: str, findings: list[ExportFinding], start_at: int = 0, length: int | None = None) -> Markup:
    """The text [start_at, start_at + length) with the findings' spans marked (offsets of the whole
    text, as the checks report them)."""
    whole = len(text)
    end_at = whole if length is None else min(whole, start_at + length)
    spans = [(max(a, start_at), min(b, end_at), sev, ids) for a, b, sev, ids in text_spans(findings, whole)
             if a < end_at and b > start_at]
    text = text[:end_at]
    out: list[str] = []
    pos = start_at
    for start, end, severity, ids in spans:
        out.append(str(escape(text[pos:start])))
        label = ", ".join(f"finding {i}" for i in ids)
        out.append(f'<mark class="sev-{escape(severity)}" id="span-{ids[0]}-{start}" title="{escape(label)}">'
                   f"{escape(text[start:end])}</mark>")
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))


def _cell_marks(findings: list[ExportFinding], header: list[str]) -> dict[tuple[int, int], str]:
    """(data row from 0, column index) -> the worst severity flagged there. The checks report
    `row` counting data rows from 1 and `col` by header name (or index); evidence about a table
    inside something else (`table`: a sheet, a notebook output) is not about this grid."""
    marks: dict[tuple[int, int], str] = {}
    for f in findings:
        ev = _evidence(f)
        row = ev.get("row")
        col = ev.get("col", ev.get("column"))
        if ev.get("table") or not isinstance(row, int) or isinstance(row, bool) or row < 1 or col is None:
            continue
        if isinstance(col, str):
            if col not in header:
                continue
            col = header.index(col)
        if not isinstance(col, int) or isinstance(col, bool):
            continue
        key = (row - 1, col)
        if SEVERITY_RANK.get(f.severity, 0) > SEVERITY_RANK.get(marks.get(key, ""), 0):
            marks[key] = f.severity
    return marks


def table_preview(text: str, name: str, findings: list[ExportFinding], page: int = 1) -> Preview | None:
    """A CSV/TSV as a table with its flagged cells marked, parsed by the checks' own parser so
    that row and column numbers mean the same here as in their findings; a page of rows at a time."""
    from enclave.review.scan.tables import TableError, parse_delimited

    try:
        table = parse_delimited(text, "", "\t" if name.lower().endswith(".tsv") else None)
    except TableError:
        return None
    header, body = table.header, table.rows
    marks = _cell_marks(findings, header)
    pages, start, end = paging(len(body), MAX_TABLE_ROWS, page, "rows")
    notes = [pages.note]
    if table.truncated:
        notes.append(f"the checks' parser stops after {len(body):,} rows: the rest of the file is shown as text "
                     "nowhere here; treat the file as row-level data")
    return Preview(
        kind="table",
        header=[(h, None) for h in header],
        rows=[[(cell, marks.get((r, c))) for c, cell in enumerate(body[r])] for r in range(start, end)],
        note="; ".join(notes), paging=pages,
    )


def _printable(byte: int) -> str:
    return chr(byte) if 0x20 <= byte < 0x7F else "."


def dump_preview(data: bytes, page: int = 1, note: str = "") -> Preview:
    """Bytes as a hex and text dump, a page at a time: what a reviewer sees of bytes no check reads."""
    pages, start, end = paging(len(data), DUMP_BYTES, page, "bytes")
    lines = []
    for at in range(start, end, DUMP_WIDTH):
        chunk = data[at:min(at + DUMP_WIDTH, end)]
        lines.append((f"{at:08x}", " ".join(f"{b:02x}" for b in chunk), "".join(_printable(b) for b in chunk)))
    return Preview(kind="dump", dump=lines, paging=pages, note="; ".join(filter(None, [note, pages.note])))


def preview(name: str, data: bytes, findings: list[ExportFinding], page: int = 1, *, dump: bool = False) -> Preview:
    """The page `page` of a file as a reviewer sees it: a table, highlighted text, or (binary
    content, or `dump`) a hex and text dump."""
    mine = [f for f in findings if f.file == name]
    if not data:
        return Preview(kind="empty", note="empty file")
    if dump or looks_binary(data):
        return dump_preview(data, page, "" if dump else f"binary file ({len(data):,} bytes), shown as a hex and text dump")
    text, valid = decode(data)
    notes = [] if valid else ["not valid UTF-8: undecodable bytes shown as \ufffd"]
    if name.lower().endswith(TABLE_SUFFIXES):
        table = table_preview(text, name, mine, page)
        if table is not None:
            table.note = "; ".join(filter(None, [table.note, *notes]))
            return table
    pages, start, end = paging(len(text), MAX_PREVIEW_CHARS, page, "characters")
    if pages.pages > 1:
        notes.append(pages.note)
    return Preview(kind="text", html=highlight(text, mine, start, end - start), note="; ".join(notes), paging=pages)


@dataclasses.dataclass
class FileDiff:
    name: str
    status: str  # "new", "changed", "unchanged", "removed"
    lines: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (kind, line) kind: add/del/ctx/hunk
    note: str = ""


def diff_files(previous: dict[str, tuple[str, bytes]], current: dict[str, tuple[str, bytes]]) -> list[FileDiff]:
    """Per file: new, removed, unchanged or a unified diff (name -> (sha256, bytes))."""
    out: list[FileDiff] = []
    for name in sorted(set(previous) | set(current)):
        if name not in previous:
            out.append(FileDiff(name, "new"))
        elif name not in current:
            out.append(FileDiff(name, "removed"))
        elif previous[name][0] == current[name][0]:
            out.append(FileDiff(name, "unchanged"))
        else:
            old, new = previous[name][1], current[name][1]
            if looks_binary(old) or looks_binary(new):
                out.append(FileDiff(name, "changed", note="binary file changed"))
                continue
            lines: list[tuple[str, str]] = []
            for line in difflib.unified_diff(decode(old)[0].splitlines(), decode(new)[0].splitlines(),
                                             "previous", "current", lineterm="", n=2):
                if line.startswith(("---", "+++")):
                    continue
                kind = "hunk" if line.startswith("@@") else {"+": "add", "-": "del"}.get(line[:1], "ctx")
                lines.append((kind, line))
                if len(lines) >= MAX_DIFF_LINES:
                    break
            note = f"first {MAX_DIFF_LINES} diff lines shown" if len(lines) >= MAX_DIFF_LINES else ""
            out.append(FileDiff(name, "changed", lines, note))
    return out
