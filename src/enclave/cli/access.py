"""`enclave check-access`: what the services will ask the registry, asked by hand."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.session import registry
from enclave.errors import AccessDenied
from enclave.registry import access
from enclave.registry.clock import iso

# Not a user error: a refusal is the answer to the question, so it has its own exit status.
REFUSED_EXIT = 3


def check_access(
    username: Annotated[str, typer.Argument(metavar="USER", help="Scholar.")],
    project: Annotated[Optional[str], typer.Option("--project", help="Project (needed when USER has several).")] = None,
) -> None:
    """Say whether USER may use the enclave now, and if not, why (exit 3 when refused)."""
    with registry() as s:
        try:
            granted = access.resolve(s, username, project)
        except AccessDenied as exc:
            typer.echo(f"refused ({exc.reason}): {exc.message}")
            raise typer.Exit(REFUSED_EXIT)
        typer.echo(f"allowed: {username} in {granted.project.slug} until {iso(granted.project.expires_at)}")
