"""`enclave privacy ...`: each project's differential-privacy budget and what it has spent."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from enclave.cli.output import AsJson, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import privacy

app = typer.Typer(help="Differential privacy: budgets (from grants) and the ledger of spends.", no_args_is_help=True)


@app.command("show")
def privacy_show(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="The project.")],
    as_json: AsJson = False,
) -> None:
    """Show a project's privacy budget (its grant's epsilon and delta), what it has spent and what
    is left (sequential composition: spends add up), and every spend, oldest first."""
    with registry() as s:
        out = privacy.ledger_json(s, slug)
    if as_json:
        print_json(out)
        return
    typer.echo(f"project: {out['project']} (composition: {out['composition']})")
    for key in ("budget", "spent", "left"):
        typer.echo(f"{key}: epsilon {out[key]['epsilon']:g}, delta {out[key]['delta']:g}")
    typer.echo(f"spends: {out['spends']}")
    if out["ledger"]:
        print_rows([[r["time"][:19], r["user"], r["dataset"], r["query"].get("statistic", r["mechanism"]),
                     r["query"].get("column") or "", f"{r['epsilon']:g}", f"{r['delta']:g}",
                     json.dumps(r["query"].get("where") or {}, sort_keys=True), r["id"][:12]] for r in out["ledger"]],
                   ["TIME", "USER", "DATASET", "STATISTIC", "COLUMN", "EPSILON", "DELTA", "WHERE", "SPEND"],
                   caps=[19, 20, 24, 10, 24, 10, 10, 40, 12])
