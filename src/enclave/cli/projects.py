"""`enclave project ...` and `enclave member ...`: projects, their lifecycle and who belongs to them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from enclave.cli.output import AsJson, AsUser, Slug, day, parse_until, print_json, print_rows
from enclave.cli.session import registry
from enclave.envsettings import database_url
from enclave.registry import projects
from enclave.registry.views import project_json

app = typer.Typer(help="Projects and their lifecycle (proposed, approved, suspended, ...).", no_args_is_help=True)
member_app = typer.Typer(help="Who belongs to a project.", no_args_is_help=True)

Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@app.command("create")
def project_create(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="Short name, e.g. income-study.")],
    title: Annotated[str, typer.Option("--title", help="Title.")],
    pi: Annotated[str, typer.Option("--pi", metavar="USER", help="Principal investigator (a scholar).")],
    purpose: Annotated[str, typer.Option("--purpose", help="The approved research purpose.")],
    terms_version: Annotated[str, typer.Option(help="Version of the terms of use the PI accepted.")] = projects.CURRENT_TERMS_VERSION,
    as_: AsUser = None,
) -> None:
    """Record a proposed project; the PI becomes its first member."""
    with registry() as s:
        project = projects.create_project(s, as_, slug, title, pi, purpose, terms_version)
        typer.echo(f"project {project.slug} proposed (PI {pi})")


def _move(slug: str, action: str, as_: str | None, reason: str = "", until: dt.datetime | None = None) -> None:
    url = database_url()
    # Record due expiries in their own transaction first: a move refused because the project
    # has expired rolls its transaction back, and the expiry must stay on record regardless.
    with registry(url) as s:
        projects.expire_due(s)
    with registry(url) as s:
        project = projects.transition(s, as_, slug, action, reason=reason, until=until)
        suffix = f" until {day(project.expires_at)}" if action == "approve" else ""
        typer.echo(f"project {slug}: {project.status}{suffix}")


@app.command("approve")
def project_approve(
    slug: Slug,
    until: Annotated[str, typer.Option("--until", metavar="YYYY-MM-DD", help="Last day of access (UTC).")],
    as_: AsUser = None,
) -> None:
    """Approve a proposed project until a date."""
    _move(slug, "approve", as_, until=parse_until(until))


@app.command("reject")
def project_reject(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
    """Reject a proposed project (needs --reason)."""
    _move(slug, "reject", as_, reason)


@app.command("suspend")
def project_suspend(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
    """Suspend an approved project: access stops until it is reinstated."""
    _move(slug, "suspend", as_, reason)


@app.command("reinstate")
def project_reinstate(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
    """Reinstate a suspended project."""
    _move(slug, "reinstate", as_, reason)


@app.command("revoke")
def project_revoke(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
    """Revoke a project for good (needs --reason)."""
    _move(slug, "revoke", as_, reason)


@app.command("close")
def project_close(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
    """Close a finished project."""
    _move(slug, "close", as_, reason)


@app.command("extend")
def project_extend(
    slug: Slug,
    until: Annotated[str, typer.Option("--until", metavar="YYYY-MM-DD", help="New last day of access (UTC).")],
    as_: AsUser = None,
) -> None:
    """Move the end date of an approved or suspended project."""
    with registry() as s:
        project = projects.extend(s, as_, slug, parse_until(until))
        typer.echo(f"project {slug}: {project.status} until {day(project.expires_at)}")


@app.command("expire-due")
def project_expire_due() -> None:
    """Record the expiry of every project past its end date (access stops at the date anyway)."""
    with registry() as s:
        expired = projects.expire_due(s)
    typer.echo(f"expired: {', '.join(expired)}" if expired else "no project was due to expire")


@app.command("show")
def project_show(slug: Slug, as_json: AsJson = False) -> None:
    """Show a project: status, expiry, members, datasets and grant."""
    with registry() as s:
        record = project_json(s, projects.get_project(s, slug))
    if as_json:
        print_json(record)
        return
    for key, value in record.items():
        if key == "grant":
            continue
        typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else ('-' if value is None else value)}")
    grant = record["grant"]
    typer.echo("grant: " + ("none" if grant is None else ", ".join(f"{k}={v}" for k, v in grant.items() if k not in ("mem_bytes",))))


@app.command("list")
def project_list(as_json: AsJson = False) -> None:
    """List projects with their current status."""
    with registry() as s:
        records = [project_json(s, p) for p in projects.list_projects(s)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["slug"], r["status"], r["pi"], r["until"] or "-", str(len(r["members"])), r["title"]]
                    for r in records], ["SLUG", "STATUS", "PI", "UNTIL", "MEMBERS", "TITLE"])


@member_app.command("add")
def member_add(slug: Slug, username: Annotated[str, typer.Argument(metavar="USER", help="Scholar to add.")], as_: AsUser = None) -> None:
    """Add a scholar to a project."""
    with registry() as s:
        projects.add_member(s, as_, slug, username)
        typer.echo(f"{username} added to {slug}")


@member_app.command("remove")
def member_remove(slug: Slug, username: Annotated[str, typer.Argument(metavar="USER", help="Member to remove.")], as_: AsUser = None) -> None:
    """Remove a member from a project."""
    with registry() as s:
        projects.remove_member(s, as_, slug, username)
        typer.echo(f"{username} removed from {slug}")
