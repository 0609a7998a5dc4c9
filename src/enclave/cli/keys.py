"""`enclave key ...`: API keys for the model gateway."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, parse_until, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import keys
from enclave.registry.clock import iso

app = typer.Typer(help="API keys for the model gateway.", no_args_is_help=True)


@app.command("issue")
def key_issue(
    username: Annotated[str, typer.Argument(metavar="USER", help="Member the key is for.")],
    project: Annotated[str, typer.Option("--project", help="Project the key charges.")],
    expires: Annotated[Optional[str], typer.Option("--expires", metavar="YYYY-MM-DD", help="Last day the key works (default: 90 days, at most the project's end).")] = None,
    as_: AsUser = None,
) -> None:
    """Issue an API key and print it once (it is stored only hashed)."""
    with registry() as s:
        row, plaintext = keys.issue(s, as_, username, project, parse_until(expires, "--expires") if expires else None)
        expires_at = row.expires_at
        key_id = row.id
    typer.echo(plaintext)
    typer.echo(f"key {key_id} for {username} in {project}, expires {iso(expires_at)}; it will not be shown again", err=True)


@app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (the part after enk_).")], as_: AsUser = None) -> None:
    """Revoke an API key at once."""
    with registry() as s:
        keys.revoke(s, as_, key_id)
    typer.echo(f"key {key_id} revoked")


@app.command("list")
def key_list(
    user: Annotated[Optional[str], typer.Option("--user", help="Only this person's keys.")] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Only this project's keys.")] = None,
    as_json: AsJson = False,
) -> None:
    """List API keys (never their secrets)."""
    with registry() as s:
        records = [keys.key_json(s, k) for k in keys.list_keys(s, user, project)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["id"], r["user"], r["project"], r["state"], r["expires_at"][:10]] for r in records],
                   ["ID", "USER", "PROJECT", "STATE", "EXPIRES"])
