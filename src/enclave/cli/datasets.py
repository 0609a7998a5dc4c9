"""`enclave dataset ...`: confidential datasets and which projects may use them."""

from __future__ import annotations

from typing import Annotated

import typer

from enclave.cli.output import AsJson, AsUser, Slug, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import datasets

app = typer.Typer(help="Confidential datasets and which projects may use them.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(metavar="NAME", help="Dataset.")]


@app.command("register")
def dataset_register(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name.")],
    path: Annotated[str, typer.Argument(metavar="PATH", help="File or directory inside the enclave.")],
    quasi_identifiers: Annotated[str, typer.Option("--quasi-identifiers", metavar="COL,COL", help="Columns that together can single out a person.")] = "",
    sensitivity: Annotated[str, typer.Option(help="public, internal, confidential or restricted.")] = "confidential",
    as_: AsUser = None,
) -> None:
    """Register a confidential dataset (its SHA-256 is recorded)."""
    with registry() as s:
        dataset = datasets.register(s, as_, name, path, quasi_identifiers.split(","), sensitivity)
        typer.echo(f"registered dataset {dataset.name} ({dataset.path})")


@app.command("allow")
def dataset_allow(name: Name, slug: Slug, as_: AsUser = None) -> None:
    """Let a project use a dataset."""
    with registry() as s:
        datasets.allow(s, as_, name, slug)
        typer.echo(f"{slug} may use {name}")


@app.command("disallow")
def dataset_disallow(name: Name, slug: Slug, as_: AsUser = None) -> None:
    """Take a dataset away from a project."""
    with registry() as s:
        datasets.disallow(s, as_, name, slug)
        typer.echo(f"{slug} may no longer use {name}")


@app.command("list")
def dataset_list(as_json: AsJson = False) -> None:
    """List registered datasets."""
    with registry() as s:
        records = [datasets.dataset_json(s, d) for d in datasets.list_datasets(s)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["name"], r["sensitivity"], ",".join(r["quasi_identifiers"]), ",".join(r["projects"]), r["path"]]
                    for r in records], ["NAME", "SENSITIVITY", "QUASI-IDENTIFIERS", "PROJECTS", "PATH"])
