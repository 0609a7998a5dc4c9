"""How an exported file is shown to a reviewer: its text with findings highlighted in place, its
table with flagged cells marked, and its diff against the previous version.

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

MAX_PREVIEW_CHARS = 200_000
MAX_TABLE_ROWS = 500
MAX_DIFF_LINES = 2_000
SEVERITY_RANK = {"block": 3, "warn": 2, "info": 1}
TABLE_SUFFIXES = (".csv", ".tsv")


@dataclasses.dataclass
class Preview:
    kind: str  # "text", "table", "binary", "empty"
    html: Markup = Markup("")
    rows: list[list[tuple[str, str | None]]] = dataclasses.field(default_factory=list)  # (cell, severity)
    header: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    note: str = ""


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


def highlight(text: str, findings: list[ExportFinding]) -> Markup:
    spans = text_spans(findings, len(text))
    out: list[str] = []
    pos = 0
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


def table_preview(text: str, name: str, findings: list[ExportFinding]) -> Preview | None:
    """A CSV/TSV as a table with its flagged cells marked, parsed by the checks' own parser so
    that row and column numbers mean the same here as in their findings."""
    from enclave.review.scan.tables import TableError, parse_delimited

    try:
        table = parse_delimited(text, "", "\t" if name.lower().endswith(".tsv") else None)
    except TableError:
        return None
    header, body = table.header, table.rows
    marks = _cell_marks(findings, header)
    note = f"first {MAX_TABLE_ROWS} of {len(body)} rows shown" if len(body) > MAX_TABLE_ROWS else ""
    return Preview(
        kind="table",
        header=[(h, None) for h in header],
        rows=[[(cell, marks.get((r, c))) for c, cell in enumerate(row)] for r, row in enumerate(body[:MAX_TABLE_ROWS])],
        note=note,
    )


def preview(name: str, data: bytes, findings: list[ExportFinding]) -> Preview:
    mine = [f for f in findings if f.file == name]
    if not data:
        return Preview(kind="empty", note="empty file")
    if looks_binary(data):
        return Preview(kind="binary", note=f"binary file ({len(data)} bytes): not shown; see its findings")
    text, valid = decode(data)
    notes = [] if valid else ["not valid UTF-8: undecodable bytes shown as \ufffd"]
    if name.lower().endswith(TABLE_SUFFIXES):
        table = table_preview(text, name, mine)
        if table is not None:
            table.note = "; ".join(filter(None, [table.note, *notes]))
            return table
    if len(text) > MAX_PREVIEW_CHARS:
        notes.append(f"first {MAX_PREVIEW_CHARS} of {len(text)} characters shown")
        text = text[:MAX_PREVIEW_CHARS]
    return Preview(kind="text", html=highlight(text, mine), note="; ".join(notes))


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
