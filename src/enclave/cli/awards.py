"""`enclave award ...` and `enclave report ...`: the life of an award after allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, Slug, parse_until, print_json, print_rows
from enclave.cli.session import registry
from enclave.errors import BadInput
from enclave.registry import awards

app = typer.Typer(help="Awards: tranches, supplements, extensions, close-out.", no_args_is_help=True)
report_app = typer.Typer(help="Reports on an awarded project: progress (releases the second tranche) and final.",
                         no_args_is_help=True)


@app.command("show")
def award_show(slug: Slug, as_json: AsJson = False) -> None:
    """Show an award: tokens, tranches, supplement, reports."""
    with registry() as s:
        record = awards.award_json(s, *awards.get_award(s, slug))
    if as_json:
        print_json(record)
    else:
        for key, value in record.items():
            typer.echo(f"{key}: {value}")


@app.command("list")
def award_list(call: Annotated[Optional[str], typer.Option("--call", help="Only this call's awards.")] = None,
               as_json: AsJson = False) -> None:
    """List awards."""
    with registry() as s:
        records = [awards.award_json(s, a, p) for a, p in awards.list_awards(s, call)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["project"], r["call"], r["tier"], r["tokens_awarded"], r["status"], r["until"]] for r in records],
                   ["project", "call", "tier", "tokens", "status", "until"])


@app.command("tranche")
def award_tranche(slug: Slug, as_: AsUser = None) -> None:
    """Release the second half of an award (after a progress report)."""
    with registry() as s:
        award = awards.release_tranche(s, as_, slug)
        typer.echo(f"released {award.tranche_second} tokens to {slug}")


@app.command("supplement")
def award_supplement(slug: Slug, tokens: Annotated[int, typer.Option("--tokens", help="Extra tokens (at most half the tier's cap).")],
                     reason: Annotated[str, typer.Option("--reason", help="Why.")] = "", as_: AsUser = None) -> None:
    """Add the award's one supplement, from what is left of its call's pool."""
    with registry() as s:
        awards.supplement(s, as_, slug, tokens, reason)
    typer.echo(f"added {tokens} tokens to {slug}")


@app.command("extend")
def award_extend(slug: Slug, until: Annotated[str, typer.Option("--until", help="New last day (YYYY-MM-DD).")],
                 as_: AsUser = None) -> None:
    """Move the award's end date (tokens stay as they are)."""
    with registry() as s:
        awards.extend(s, as_, slug, parse_until(until))
    typer.echo(f"extended {slug} to {until}")


@app.command("close")
def award_close(slug: Slug, as_: AsUser = None) -> None:
    """Close an awarded project (needs its final report)."""
    with registry() as s:
        awards.close(s, as_, slug)
    typer.echo(f"closed {slug}")


def _report(kind: str, slug: str, text: Optional[str], file: Optional[Path], as_: Optional[str]) -> None:
    if (text is None) == (file is None):
        raise BadInput("give the report as --text TEXT or --file PATH")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read {str(file)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    with registry() as s:
        report = awards.file_report(s, as_, slug, kind, text)
        typer.echo(f"filed {kind} report for {slug} (sha256 {report.sha256})")


TextOpt = Annotated[Optional[str], typer.Option("--text", help="The report.")]
FileOpt = Annotated[Optional[Path], typer.Option("--file", help="A file holding the report.")]


@report_app.command("progress")
def report_progress(slug: Slug, text: TextOpt = None, file: FileOpt = None, as_: AsUser = None) -> None:
    """File a progress report (a member of the project)."""
    _report("progress", slug, text, file, as_)


@report_app.command("final")
def report_final(slug: Slug, text: TextOpt = None, file: FileOpt = None, as_: AsUser = None) -> None:
    """File the final report (a member of the project)."""
    _report("final", slug, text, file, as_)
