"""`enclave registration ...`: the self-registrations waiting for an operator (the access
service's public page), confirmed as applicants or refused with a reason."""

from __future__ import annotations

from typing import Annotated

import typer

from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import registrations

app = typer.Typer(help="Self-registrations of applicants, waiting for an operator.", no_args_is_help=True)

User = Annotated[str, typer.Argument(metavar="USER", help="The user name asked for.")]


@app.command("list")
def registration_list(as_json: AsJson = False, as_: AsUser = None) -> None:
    """List the registrations waiting for a decision."""
    with registry() as s:
        rows = [registrations.registration_json(r) for r in registrations.list_pending(s, as_)]
    if as_json:
        print_json(rows)
    else:
        print_rows([[r["username"], r["name"], r["email"], r["affiliation"], r["requested_at"]] for r in rows],
                   ["USER", "NAME", "EMAIL", "AFFILIATION", "REQUESTED"], caps=[64, 40, 40, 40, 25])


@app.command("confirm")
def registration_confirm(username: User, as_: AsUser = None) -> None:
    """Create the person with the applicant role and the password they chose."""
    with registry() as s:
        registrations.confirm(s, as_, username)
    typer.echo(f"confirmed {username}: applicant; they log in with the password they chose")


@app.command("refuse")
def registration_refuse(
    username: User,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")],
    as_: AsUser = None,
) -> None:
    """Refuse a registration; the request is deleted and the refusal audited."""
    with registry() as s:
        registrations.refuse(s, as_, username, reason)
    typer.echo(f"refused {username}")
