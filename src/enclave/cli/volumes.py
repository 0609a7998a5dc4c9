"""`enclave volume ...`: scholars' work volumes (one per person and project), and the operator's
release or destruction of a held one."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import registry
from enclave.errors import Conflict, Unavailable
from enclave.registry import sessions, volumes
from enclave.registry.projects import get_project

app = typer.Typer(help="Scholars' work volumes: list them, release or destroy a held one.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(metavar="NAME", help="Volume name (see `enclave volume list`).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@app.command("list")
def volume_list(
    project: Annotated[Optional[str], typer.Option("--project", help="Only this project's volumes.")] = None,
    as_json: AsJson = False,
) -> None:
    """List work volumes with their state (open, held, destroyed) and last measured size."""
    with registry() as s:
        records = [volumes.volume_json(s, v) for v in volumes.list_volumes(s, get_project(s, project) if project else None)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["name"], r["user"], r["project"], r["state"], r["size"], r["reason"]] for r in records],
                   ["NAME", "USER", "PROJECT", "STATE", "SIZE", "REASON"], caps=[60, 20, 20, 9, 10, 60])


@app.command("release")
def volume_release(name: Name, reason: Reason = "", as_: AsUser = None) -> None:
    """Let new sessions mount a held volume again (say what was checked)."""
    with registry() as s:
        volumes.release(s, as_, name, reason)
    typer.echo(f"work volume {name} released")


@app.command("destroy")
def volume_destroy(name: Name, reason: Reason = "", as_: AsUser = None) -> None:
    """Delete a work volume and everything in it (the record stays)."""
    with registry() as s:
        volume = volumes.destroy(s, as_, name, reason)
        if any(r.work_volume == name for r in sessions.live_sessions(s)):
            raise Conflict(f"work volume {name!r} is in use by a running session: stop it first")
        _remove_docker_volume(volume.name)  # inside the transaction: a failure records nothing
    typer.echo(f"work volume {name} destroyed")


def _remove_docker_volume(name: str) -> None:
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=60)
        client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        return  # never created (no session ever started), or removed by hand
    except docker.errors.DockerException as exc:
        raise Unavailable(f"could not remove the Docker volume {name!r}: {exc}") from None
