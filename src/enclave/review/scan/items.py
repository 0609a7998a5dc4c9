"""What the checks look at: one file of an export, or something found inside one.

An `Item` is a top-level file, an archive member ("outer.zip!dir/member.txt"), a part of a
container that is not a member ("outer.zip!(zip comment)", "plot.png!(data after IEND)", see
`coverage`) or a blob decoded from base64/hex ("notes.txt!base64@line 3"). Its views are computed once, on first use, and
shared by every check: the decoded text, the text *segments* (a notebook's cells and outputs; the
whole text otherwise), embedded images, and tables. Every location a check reports is relative to
a segment, so a reviewer can find it: "cell 4 output 1, line 2, chars 5-16".
"""
from __future__ import annotations

import bisect
import codecs
import functools
from dataclasses import dataclass, field
from typing import Any

from enclave.review.scan import notebook, tables
from enclave.review.scan.charruns import code_points
from enclave.review.scan.detect import Kind, Sniffed, extension, sniff
from enclave.review.scan.textfold import Folded, fold


@dataclass
class Segment:
    label: str  # "" for a whole plain file; "cell 4 output 1" in a notebook
    text: str
    _line_starts: list[int] | None = field(default=None, repr=False)
    _folded: dict[bool, Folded] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def codes(self):
        """The code points of the text (numpy uint32), shared by the checks' gates."""
        return code_points(self.text)

    def folded(self, separators: bool) -> Folded:
        """`textfold.fold` of the text, computed once and shared by the checks."""
        if separators not in self._folded:
            self._folded[separators] = fold(self.text, separators)
        return self._folded[separators]

    def _lines(self) -> list[int]:
        if self._line_starts is None:
            starts = [0]
            find = self.text.find
            at = find("\n")
            while at != -1:
                starts.append(at + 1)
                at = find("\n", at + 1)
            self._line_starts = starts
        return self._line_starts

    def line_of(self, offset: int) -> tuple[int, int]:
        """1-based line and column of `offset`."""
        starts = self._lines()
        line = bisect.bisect_right(starts, offset) - 1
        return line + 1, offset - starts[line] + 1

    def where(self, start: int, end: int) -> str:
        """Human-readable place of the span [start, end)."""
        first_line, first_col = self.line_of(start)
        last_line, last_col = self.line_of(max(start, end - 1))
        if first_line == last_line:
            place = f"line {first_line}, chars {first_col}-{last_col}"
        else:
            place = f"lines {first_line}-{last_line}"
        return f"{self.label}, {place}" if self.label else place

    def evidence(self, start: int, end: int, **extra: Any) -> dict[str, Any]:
        line, col = self.line_of(start)
        return {"segment": self.label, "start": start, "end": end, "line": line, "col": col, **extra}


@dataclass
class Item:
    name: str
    data: bytes
    size: int  # the real size; larger than len(data) when the file was refused unread
    depth: int = 0  # how many archives deep
    decode_depth: int = 0  # how many base64/hex layers deep
    origin: str = "file"  # "file", "member", "part" or "decoded"
    parent: str = ""  # the item this one was found in ("" for a top-level file)
    container: str = ""  # the parent's format ("zip", "png", "pdf", "ipynb" ...): what a policy allows by type
    top: str = ""  # the exported file this one is, or is inside

    def __post_init__(self) -> None:
        if not self.top:
            self.top = self.name

    @property
    def label(self) -> str:
        """This item's own name inside its parent ("(zip comment)", "dir/member.txt")."""
        return self.name[len(self.parent) + 1:] if self.parent else self.name

    @functools.cached_property
    def sniffed(self) -> Sniffed:
        return sniff(self.name, self.data)

    @property
    def kind(self) -> Kind:
        return self.sniffed.kind

    @property
    def extension(self) -> str:
        return extension(self.name)

    @property
    def unread(self) -> bool:
        return self.size > len(self.data)

    @property
    def is_textual(self) -> bool:
        return self.kind in (Kind.text, Kind.notebook, Kind.json) or (self.kind is Kind.table and self.sniffed.format != "xlsx") \
            or (self.kind is Kind.image and self.sniffed.format == "svg")

    # ----- text -----------------------------------------------------------------------------

    @functools.cached_property
    def _decoded(self) -> tuple[str | None, int | None, int]:
        """(text, offset of the first undecodable byte or None, number of undecodable bytes)."""
        if not self.is_textual or self.unread:
            return None, None, 0
        data = self.data
        for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
            if data.startswith(bom):
                try:
                    return data[len(bom):].decode(codec), None, 0
                except UnicodeDecodeError as exc:
                    return data[len(bom):].decode(codec, "replace"), exc.start + len(bom), 1
        try:
            return data.decode("utf-8"), None, 0
        except UnicodeDecodeError as exc:
            text = data.decode("utf-8", "replace")
            return text, exc.start, text.count("\ufffd")

    @property
    def text(self) -> str | None:
        return self._decoded[0]

    @property
    def utf8_error(self) -> tuple[int, int] | None:
        """(offset of the first invalid byte, count of replacement characters), if any."""
        _, offset, count = self._decoded
        return None if offset is None else (offset, count)

    @functools.cached_property
    def _walked(self) -> tuple[list[Segment], list[notebook.Embedded], str | None]:
        text = self.text
        if text is None:
            if self.kind is Kind.table and not self.unread:
                # A workbook's cells, one sheet per segment, so the text checks read it too.
                return [Segment(t.label, "\n".join("\t".join(row) for row in [t.header, *t.rows])) for t in self.tables], [], None
            return [], [], None
        if self.kind is Kind.notebook:
            try:
                walked = notebook.walk(text)
            except notebook.NotebookError as exc:
                # Unreadable as a notebook: still scan every character of it as text.
                return [Segment("", text)], [], str(exc)
            return [Segment(p.label, p.text) for p in walked.parts], walked.embedded, None
        return [Segment("", text)], [], None

    @property
    def segments(self) -> list[Segment]:
        return self._walked[0]

    @property
    def embedded(self) -> list[notebook.Embedded]:
        return self._walked[1]

    @property
    def notebook_error(self) -> str | None:
        return self._walked[2]

    # ----- tables ---------------------------------------------------------------------------

    @functools.cached_property
    def _tables(self) -> tuple[list[tables.Table], str | None]:
        if self.unread:
            return [], None
        try:
            if self.kind is Kind.table and self.sniffed.format == "xlsx":
                return tables.parse_xlsx(self.data), None
            if self.kind is Kind.table and self.text is not None:
                delimiter = "\t" if self.sniffed.format == "tsv" else None
                return [tables.parse_delimited(self.text, "", delimiter)], None
        except tables.TableError as exc:
            return [], str(exc)
        if self.kind is Kind.notebook:
            found = []
            for segment in self.segments:
                if " output " in segment.label and "(" not in segment.label:
                    table = tables.parse_printed_frame(segment.text, segment.label)
                    if table is not None:
                        found.append(table)
            return found, None
        return [], None

    @property
    def tables(self) -> list[tables.Table]:
        return self._tables[0]

    @property
    def table_error(self) -> str | None:
        return self._tables[1]

    def child(self, name: str, data: bytes, size: int | None = None, *, origin: str) -> "Item":
        """A member, part or decoded blob of this item. Members and parts count towards the nesting
        limit alike: a PNG in a zip comment in a zip is as deep as a zip in a zip in a zip."""
        return Item(name=f"{self.name}!{name}", data=data, size=len(data) if size is None else size,
                    depth=self.depth + (origin in ("member", "part")),
                    decode_depth=self.decode_depth + (origin == "decoded"), origin=origin, parent=self.name,
                    container=self.sniffed.format, top=self.top)
