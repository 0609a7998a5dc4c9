"""`enclave audit ...`: verify (the chain, and the model calls against their events), export and inspect
the hash-chained audit log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, json_line, print_json_lines
from enclave.cli.session import registry
from enclave.errors import BadInput
from enclave.registry import audit

app = typer.Typer(help="The hash-chained audit log: verify, export, inspect.", no_args_is_help=True)


@app.command("verify")
def audit_verify(
    file: Annotated[Optional[Path], typer.Option("--file", help="Verify an exported JSON-lines file instead of the database.")] = None,
    anchor: Annotated[Optional[list[str]], typer.Option("--anchor", metavar="SEQ:HASH", help="A published head the chain must pass through; repeatable.")] = None,
) -> None:
    """Recompute the hash chain and check every model call against the digests in its audit event;
    exit 0 if all is intact, 1 naming the first bad seq and each model call that does not match."""
    anchors = dict(audit.parse_anchor(a) for a in anchor or [])
    calls = None
    if file is not None:  # an export holds the events only, not the model calls
        try:
            with file.open(encoding="utf-8") as handle:
                result = audit.verify_records(audit.read_jsonl(handle), anchors)
        except OSError as exc:
            raise BadInput(f"cannot read {file}: {exc.strerror}") from None
    else:
        with registry() as s:
            result = audit.verify_database(s, anchors)
            calls = audit.verify_model_calls(s)
    typer.echo(result.summary(), err=not result.ok)
    if calls is not None:
        typer.echo(calls.summary(), err=not calls.ok)
    if not result.ok or (calls is not None and not calls.ok):
        raise typer.Exit(1)


@app.command("export")
def audit_export(
    out: Annotated[Optional[Path], typer.Option("--out", help="Write here instead of standard output.")] = None,
) -> None:
    """Write every event as JSON lines that an auditor can verify without our database."""
    with registry() as s:
        handle = out.open("w", encoding="utf-8") if out else sys.stdout
        try:
            count = 0
            for event in audit.iter_events(s):
                handle.write(json_line(audit.event_record(event)) + "\n")
                count += 1
        finally:
            if out:
                handle.close()
    if out:
        typer.echo(f"wrote {count} events to {out}", err=True)


@app.command("tail")
def audit_tail(
    n: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many of the newest events.")] = 20,
    as_json: AsJson = False,
) -> None:
    """Show the newest events."""
    with registry() as s:
        events = [audit.event_record(e) for e in audit.tail(s, n)]
    if as_json:
        print_json_lines(events)
        return
    for r in events:
        typer.echo(f"{r['seq']:>6}  {r['time']}  {r['actor']:<12} {r['action']:<18} {r['subject']}  {r['details']}")


@app.command("head")
def audit_head() -> None:
    """Print the newest event as SEQ:HASH, to publish outside the enclave as an anchor."""
    with registry() as s:
        event = audit.head(s)
    typer.echo(f"{event.seq}:{event.hash}" if event else f"0:{audit.GENESIS_HASH}")
