"""What several command groups share: the common arguments (`--as`, `--json`, SLUG) and the one
way to print JSON, tables and days."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Optional

import typer

from enclave.registry.clock import end_of_day, last_day, parse_day

AsUser = Annotated[Optional[str], typer.Option(
    "--as", envvar="ENCLAVE_OPERATOR", show_envvar=True, metavar="USER",
    help="The operator on whose authority this runs (recorded in the audit log).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Slug = Annotated[str, typer.Argument(metavar="SLUG", help="Project slug.")]


def print_json(value: Any) -> None:
    """One JSON document, indented, non-ASCII kept as it is."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_lines(records: Iterable[Any]) -> None:
    """One compact JSON object per line, keys sorted (what `audit export` writes and tools stream)."""
    for record in records:
        typer.echo(json_line(record))


def json_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def print_rows(rows: Sequence[Sequence[Any]], header: Sequence[str], *, caps: Sequence[int] | None = None) -> None:
    """A plain table with a header, columns padded to their widest cell; "(none)" when empty.
    `caps` limits each column's width, cutting longer cells with an ellipsis."""
    if not rows:
        typer.echo("(none)")
        return
    table = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    if caps is not None:
        widths = [min(w, cap) for w, cap in zip(widths, caps)]
        table = [[c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)] for row in table]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def day(expires_at: dt.datetime | None) -> str:
    """The last day something lasts (YYYY-MM-DD), or "-" when it has no end."""
    return last_day(expires_at) or "-"


def parse_until(text: str, what: str = "--until") -> dt.datetime:
    """The end of the day YYYY-MM-DD given for option `what` (named in the error when malformed)."""
    return end_of_day(parse_day(text, what))
