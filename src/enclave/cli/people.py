"""`enclave person ...`: scholars, disclosure reviewers and operators, and their hub passwords."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import registry
from enclave.registry import people, projects
from enclave.registry.credentials import set_password

app = typer.Typer(help="People: scholars, disclosure reviewers and operators.", no_args_is_help=True)

User = Annotated[str, typer.Argument(metavar="USER", help="User name.")]


@app.command("add")
def person_add(
    username: Annotated[str, typer.Argument(metavar="USER", help="JupyterHub user name.")],
    name: Annotated[str, typer.Option("--name", help="Full name.")],
    email: Annotated[str, typer.Option("--email", help="E-mail address.")],
    affiliation: Annotated[str, typer.Option(help="Institution.")] = "",
    role: Annotated[Optional[list[str]], typer.Option("--role", help="scholar, reviewer, operator, applicant or panel; repeat for several (default: scholar).")] = None,
    as_: AsUser = None,
) -> None:
    """Register a person."""
    with registry() as s:
        person = people.add_person(s, as_, username, name, email, affiliation, role or ["scholar"])
        typer.echo(f"added {person.username} ({', '.join(sorted(person.role_set))})")


@app.command("password")
def person_password(
    username: User,
    stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the new password from standard input instead of generating one.")] = False,
    as_: AsUser = None,
) -> None:
    """Set or reset a person's hub login password (stored hashed; a generated one is shown once)."""
    given = sys.stdin.readline().rstrip("\n") if stdin else None
    with registry() as s:
        password = set_password(s, as_, username, given)
    typer.echo(f"password for {username} set" + ("" if stdin else f": {password}"))


@app.command("role")
def person_role(
    username: User,
    add: Annotated[Optional[list[str]], typer.Option("--add", help="Role to grant; repeatable.")] = None,
    remove: Annotated[Optional[list[str]], typer.Option("--remove", help="Role to take away; repeatable.")] = None,
    as_: AsUser = None,
) -> None:
    """Grant or take away roles."""
    with registry() as s:
        person = people.set_roles(s, as_, username, add or [], remove or [])
        typer.echo(f"{person.username}: {', '.join(sorted(person.role_set))}")


@app.command("list")
def person_list(as_json: AsJson = False) -> None:
    """List everyone registered."""
    with registry() as s:
        rows = [people.person_json(p) for p in people.list_people(s)]
    if as_json:
        print_json(rows)
    else:
        print_rows([[r["username"], r["name"], r["email"], ",".join(r["roles"])] for r in rows],
                   ["USER", "NAME", "EMAIL", "ROLES"])


@app.command("show")
def person_show(username: User, as_json: AsJson = False) -> None:
    """Show one person and their projects."""
    with registry() as s:
        person = people.get_person(s, username)
        record = people.person_json(person)
        record["projects"] = [p.slug for p in projects.list_projects(s)
                              if person.username in {m.username for m in projects.members(s, p)}]
    if as_json:
        print_json(record)
    else:
        for key, value in record.items():
            typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
