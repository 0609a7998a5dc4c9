"""Tables inside exports: CSV/TSV files, XLSX sheets, and DataFrames printed in notebook outputs.

A table is a header and rows of strings; checks ask for numbers through `number()`, which reads the
ways people write them (`1,234`, `12.5%`, `-3e2`) and refuses the ways they hide them (`<5`, `*`,
`[REDACTED]` are not numbers, so they are not small counts either).
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

import numpy as np

MAX_ROWS_PARSED = 200_000  # beyond this a table is row-level data; the file policy says so
_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?$")


class TableError(ValueError):
    pass


@dataclass
class Table:
    label: str  # "" for a plain CSV, "sheet Results", "cell 4 output 1"
    header: list[str]
    rows: list[list[str]]
    truncated: bool = False
    _numbers: dict[int, list[float | None]] = field(default_factory=dict, repr=False)

    @property
    def width(self) -> int:
        return len(self.header)

    def column(self, index: int) -> list[float | None]:
        """The numbers of column `index` (None where a cell is not a number)."""
        if index not in self._numbers:
            cells = [row[index] if index < len(row) else "" for row in self.rows]
            try:  # a column of plain numbers converts in one C loop
                values = np.array(cells, dtype=np.float64)
            except ValueError:
                self._numbers[index] = [number(c) for c in cells]
            else:  # nan and inf (spelt out) are not numbers of a table
                finite = np.isfinite(values)
                self._numbers[index] = [v if ok else None for v, ok in zip(values.tolist(), finite.tolist())]
        return self._numbers[index]

    def key_columns(self) -> list[int]:
        """Columns that label rows rather than measure them: mostly non-numeric."""
        keys = []
        for j in range(self.width):
            values = self.column(j)
            filled = [v for v, row in zip(values, self.rows) if j < len(row) and row[j].strip()]
            numeric = sum(v is not None for v in filled)
            if not filled or numeric < len(filled) * 0.8:
                keys.append(j)
        return keys

    def row_key(self, r: int, keys: list[int]) -> tuple[str, ...]:
        row = self.rows[r]
        return tuple(row[j].strip() if j < len(row) else "" for j in keys)

    def where(self, r: int, j: int) -> str:
        col = self.header[j] if j < len(self.header) and self.header[j] else f"#{j + 1}"
        prefix = f"{self.label}, " if self.label else ""
        return f"{prefix}cell (row {r + 1}, col {col})"


def number(text: str) -> float | None:
    s = text.strip().strip('"').strip()
    if not s:
        return None
    if s[0] in "+-.0123456789" and s[-1].isdigit() and "_" not in s and "," not in s:
        try:  # the common case, in C; float() also reads "1e5" but never "nan" or "inf" here
            value = float(s)
        except ValueError:
            pass
        else:
            return value if math.isfinite(value) else None
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    if not _NUMBER.match(s) or not any(c.isdigit() for c in s):
        return None
    try:
        value = float(s.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_delimited(text: str, label: str = "", delimiter: str | None = None) -> Table:
    """A CSV/TSV; the delimiter is guessed from the first line when not given."""
    first = text.split("\n", 1)[0]
    if delimiter is None:
        counts = {d: first.count(d) for d in (",", "\t", ";", "|")}
        delimiter = max(counts, key=counts.get) if max(counts.values()) else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[list[str]] = []
    truncated = False
    try:
        for row in reader:
            if len(rows) > MAX_ROWS_PARSED:
                truncated = True
                break
            if row and any(cell.strip() for cell in row):
                rows.append(row)
    except csv.Error as exc:
        raise TableError(f"not a readable table ({exc})") from None
    if not rows:
        raise TableError("no rows")
    return Table(label, [h.strip() for h in rows[0]], rows[1:], truncated)


def parse_xlsx(data: bytes) -> list[Table]:
    """Every sheet as a table (values, not formulas). The caller checks the zip for bombs first."""
    try:
        import openpyxl
    except ImportError as exc:  # the review extra installs it; say so rather than crash
        raise TableError(f"cannot read XLSX without openpyxl ({exc})") from None
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds on bad input; all mean "unreadable"
        raise TableError(f"not a readable XLSX workbook ({exc.__class__.__name__})") from None
    tables = []
    try:
        for sheet in book.worksheets:
            rows: list[list[str]] = []
            truncated = False
            for values in sheet.iter_rows(values_only=True):
                if len(rows) > MAX_ROWS_PARSED:
                    truncated = True
                    break
                row = ["" if v is None else str(v) for v in values]
                if any(cell.strip() for cell in row):
                    rows.append(row)
            if rows:
                tables.append(Table(f"sheet {sheet.title}", [h.strip() for h in rows[0]], rows[1:], truncated))
    finally:
        book.close()
    return tables


def parse_printed_frame(text: str, label: str) -> Table | None:
    """A pandas DataFrame as `print(df)` / `to_string()` shows it, or None if `text` is not one.

    pandas right-aligns every column under its header, so the end of each header name marks the
    right edge of its column; the index is left-aligned and ends at the first double space.
    """
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or len(lines) > MAX_ROWS_PARSED:
        return None
    header_line = lines[0]
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", header_line)]
    body = lines[1:]
    index_name = ""
    # A crosstab prints its row variable's name alone on the second line, and its column
    # variable's name first on the header line (not a column of its own).
    if body and len(body[0].split()) == 1 and not body[0][:1].isspace():
        index_name = body[0].strip()
        body = body[1:]
        if spans and spans[0][0] == 0:
            spans = spans[1:]
    if not spans or not body or spans[0][0] == 0:
        return None
    edges = [end for _, end in spans]
    rows = []
    for line in body:
        # The index is left-aligned at column 0 and ends at the first run of two spaces.
        index = re.match(r"\S+(?: \S+)*", line)
        if index is None or len(line) > edges[-1] + 2 or index.end() > edges[0]:
            return None  # no index, or wider than the header: not a printed frame
        cells = [index.group()]
        previous = index.end()
        for edge in edges:
            cells.append(line[previous:edge].strip())
            previous = edge
        rows.append(cells)
    header = [index_name] + [header_line[a:b] for a, b in spans]
    table = Table(label, header, rows)
    # Worth checking only if some column is numeric throughout.
    if not any(all(v is not None for v in table.column(j)) for j in range(1, table.width)):
        return None
    return table
