"""`enclave init` and `enclave db ...`: create the registry and migrate its schema."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.session import engine
from enclave.registry import people
from enclave.registry.db import current_revision, head_revision, redacted, session_scope, upgrade

app = typer.Typer(help="The registry database: schema migrations.", no_args_is_help=True)


def init(
    operator: Annotated[str, typer.Option("--operator", metavar="USER", help="User name of the first operator.")],
    name: Annotated[Optional[str], typer.Option(help="The operator's full name (default: the user name).")] = None,
    email: Annotated[Optional[str], typer.Option(help="The operator's e-mail (default: USER@localhost.localdomain).")] = None,
) -> None:
    """Create the registry (migrations) and its first operator. Safe to re-run."""
    with engine(checked=False) as eng:
        upgrade(eng)
        with session_scope(eng) as session:
            existing = people.find_person(session, operator)
            if existing is not None and existing.has_role(people.Role.operator):
                typer.echo(f"registry already initialised; {operator} is an operator ({redacted(str(eng.url))})")
                return
            people.add_person(session, operator, operator, name or operator,
                              email or f"{operator}@localhost.localdomain", roles=["operator"], bootstrap=True)
        typer.echo(f"initialised the registry at {redacted(str(eng.url))}; first operator: {operator}")


@app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(metavar="REVISION", help="Target revision.")] = "head") -> None:
    """Apply schema migrations up to REVISION (default: the newest)."""
    with engine(checked=False) as eng:
        upgrade(eng, revision)
        typer.echo(f"registry schema at {current_revision(eng)} ({redacted(str(eng.url))})")


@app.command("current")
def db_current() -> None:
    """Show the schema revision of the registry database."""
    with engine(checked=False) as eng:
        typer.echo(f"{current_revision(eng) or '(empty)'} (code expects {head_revision()})")
