"""`enclave session ...`: notebook sessions, live and past, with their browser egress."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import sessions
from enclave.registry.models import Grant
from enclave.registry.sizes import human_size

app = typer.Typer(help="Notebook sessions: who worked where, with what, and what went to their browser.",
                  no_args_is_help=True)


@app.command("list")
def session_list(
    live: Annotated[bool, typer.Option("--live", help="Only sessions still running.")] = False,
    project: Annotated[Optional[str], typer.Option("--project", help="Only this project's sessions.")] = None,
    user: Annotated[Optional[str], typer.Option("--user", help="Only this person's sessions.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    as_json: AsJson = False,
) -> None:
    """List notebook sessions, newest first, with the bytes each sent towards browsers."""
    with registry() as s:
        records = [sessions.session_json(s, r) for r in sessions.list_sessions(
            s, live_only=live, project=project, username=user, limit=limit)]
    if as_json:
        print_json(records)
        return
    print_rows([[r["id"][:12], r["user"], r["project"], r["state"], r["started_at"][:19], (r["stopped_at"] or "")[:19],
                 r["egress"], r["stop_reason"]] for r in records],
               ["ID", "USER", "PROJECT", "STATE", "STARTED", "STOPPED", "EGRESS", "REASON"], caps=[12, 20, 20, 7, 19, 19, 10, 60])


@app.command("show")
def session_show(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id (or its first 12 characters).")],
    as_json: AsJson = False,
) -> None:
    """Show one session: image, mounts, limits, address, egress, and the project's budget today."""
    with registry() as s:
        record = sessions.get_session(s, session_id)
        out = sessions.session_json(s, record)
        grant = s.get(Grant, record.project_id)
        spent = sessions.egress_spent(s, record.project_id)
        out["project_egress_today"] = {"bytes": spent, "budget": grant.view_bytes_per_day if grant else None}
    if as_json:
        print_json(out)
        return
    for key in ("id", "user", "project", "server", "mode", "state", "started_at", "stopped_at", "stop_reason",
                "container", "address", "image", "work_volume"):
        typer.echo(f"{key}: {out[key] if out[key] not in (None, '') else '-'}")
    typer.echo(f"egress: {out['egress']} ({out['egress_bytes']} bytes sent towards browsers)")
    budget = out["project_egress_today"]["budget"]
    typer.echo(f"project egress today: {human_size(spent)}" + (f" of {human_size(budget)}" if budget else ""))
    for mount in out["spec"].get("mounts", []):
        typer.echo(f"mount: dataset {mount['dataset']} from {mount['path']} (read-only)")
    for key, value in out["spec"].get("limits", {}).items():
        typer.echo(f"limit: {key} = {value}")
