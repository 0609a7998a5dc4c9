"""`enclave panel ...`: panel members declare conflicts, open and score applications; operators
assign them."""

from __future__ import annotations

from typing import Annotated

import typer

from enclave.cli.output import AsJson, AsUser, print_json
from enclave.cli.session import registry
from enclave.errors import BadInput
from enclave.registry import panel

app = typer.Typer(help="Panel review: assignment, conflicts of interest, scores.", no_args_is_help=True)

AppId = Annotated[int, typer.Argument(metavar="ID", help="Application number.")]


@app.command("assign")
def panel_assign(app_id: AppId, members: Annotated[list[str], typer.Argument(metavar="USER...", help="Panel members.")],
                 as_: AsUser = None) -> None:
    """Put panel members on an application (operators); same-institution members are flagged."""
    with registry() as s:
        rows = panel.assign(s, as_, app_id, members)
        flagged = [(m, r.conflict_note) for m, r in zip(members, rows) if r.conflict]
    typer.echo(f"assigned {', '.join(members)} to application {app_id}")
    for member, note in flagged:
        typer.echo(f"conflict flagged: {member} ({note})")


@app.command("declare")
def panel_declare(
    app_id: AppId,
    none: Annotated[bool, typer.Option("--none", help="You have no conflict with this application.")] = False,
    conflict: Annotated[str, typer.Option("--conflict", help="Your conflict, in a few words.")] = "",
    as_: AsUser = None,
) -> None:
    """Declare your conflicts before you open an application."""
    if none == bool(conflict.strip()):
        raise BadInput("give exactly one of --none or --conflict TEXT")
    with registry() as s:
        row = panel.declare(s, as_, app_id, conflict)
        kind, note = row.conflict, row.conflict_note
    typer.echo(f"declared for application {app_id}: {kind}" + (f" ({note})" if note else ""))


@app.command("open")
def panel_open(app_id: AppId, as_json: AsJson = False, as_: AsUser = None) -> None:
    """Read an application you are to score (recorded in the audit log)."""
    with registry() as s:
        data = panel.open_application(s, as_, app_id)
    if as_json:
        print_json(data)
        return
    for key in ("id", "call", "tier", "tokens_requested", "version"):
        typer.echo(f"{key}: {data[key]}")
    for key, value in data["content"].items():
        typer.echo(f"{key}: {value}")
    for c in data["rubric"]:
        typer.echo(f"criterion {c['name']} (weight {c['weight']:g}): {c['text']}")


@app.command("score")
def panel_score(
    app_id: AppId,
    score: Annotated[list[str], typer.Option("--score", metavar="CRITERION=N", help="1 (best) to 9 (worst); one per criterion.")],
    comment: Annotated[str, typer.Option("--comment", help="Comment the applicant sees (unattributed).")] = "",
    private: Annotated[str, typer.Option("--private", help="Comment for the panel and operators only.")] = "",
    as_: AsUser = None,
) -> None:
    """Score an application on every criterion of its call's rubric."""
    with registry() as s:
        panel.score(s, as_, app_id, panel.parse_scores(score), comment, private)
    typer.echo(f"scored application {app_id}")
