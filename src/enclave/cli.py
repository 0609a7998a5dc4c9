"""The `enclave` command: how operators run the enclave.

Every command that changes the registry runs in one transaction together with its audit event, so
it happens wholly or not at all. Mistakes (unknown names, bad dates, refused moves) print one line
on stderr and exit 2; nothing a user types produces a traceback (set ENCLAVE_DEBUG=1 to see one).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

try:
    import typer
    from sqlalchemy.exc import IntegrityError, OperationalError
    import sqlmodel  # noqa: F401  (present only with the [registry] extra)
except ImportError as _missing:  # the bare package (notebook client) ships without the operator tools
    _IMPORT_ERROR: ImportError | None = _missing
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    from enclave.registry import access, audit, datasets, grants, keys, people, projects
    from enclave.registry.clock import end_of_day, iso, last_day, parse_day
    from enclave.registry.db import check_schema, make_engine, redacted, session_scope, upgrade
    # A transaction on an initialised registry, committed when the command finishes cleanly.
    from enclave.envsettings import database_url
    from enclave.registry.db import registry_transaction

    def registry():
        return registry_transaction(database_url())
    from enclave.errors import UserError, BadInput, SettingsError, AccessDenied

    app = typer.Typer(
        help="Model Enclave: run a structured-access release of a language model.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    db_app = typer.Typer(help="The registry database: schema migrations.", no_args_is_help=True)
    person_app = typer.Typer(help="People: scholars, disclosure reviewers and operators.", no_args_is_help=True)
    project_app = typer.Typer(help="Projects and their lifecycle (proposed, approved, suspended, ...).", no_args_is_help=True)
    member_app = typer.Typer(help="Who belongs to a project.", no_args_is_help=True)
    dataset_app = typer.Typer(help="Confidential datasets and which projects may use them.", no_args_is_help=True)
    grant_app = typer.Typer(help="What a project may consume: tokens, rate, privacy budget, compute, exports.", no_args_is_help=True)
    key_app = typer.Typer(help="API keys for the model gateway.", no_args_is_help=True)
    audit_app = typer.Typer(help="The hash-chained audit log: verify, export, inspect.", no_args_is_help=True)
    model_app = typer.Typer(help="Models: build the demo GPT-2.", no_args_is_help=True)
    serve_app = typer.Typer(help="Run the enclave's services.", no_args_is_help=True)
    for _sub, _name in ((db_app, "db"), (person_app, "person"), (project_app, "project"), (member_app, "member"),
                        (dataset_app, "dataset"), (grant_app, "grant"), (key_app, "key"), (audit_app, "audit"),
                        (model_app, "model"), (serve_app, "serve")):
        app.add_typer(_sub, name=_name)
    # Service-owned command groups live beside their services.
    from enclave.hub.image_cli import image_app
    from enclave.review.cli import release_app, review_app
    app.add_typer(review_app, name="review")
    app.add_typer(release_app, name="release")
    app.add_typer(image_app, name="image")

    AsUser = Annotated[Optional[str], typer.Option(
        "--as", envvar="ENCLAVE_OPERATOR", show_envvar=True, metavar="USER",
        help="The operator on whose authority this runs (recorded in the audit log).")]
    AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
    Slug = Annotated[str, typer.Argument(metavar="SLUG", help="Project slug.")]


def _until(text: str, what: str = "--until") -> dt.datetime:
    return end_of_day(parse_day(text, what))


def _print_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _print_rows(rows: list[list[str]], header: list[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _day(expires_at: dt.datetime | None) -> str:
    return last_day(expires_at) or "-"


if _IMPORT_ERROR is None:

    # ----- set-up -------------------------------------------------------------------------------

    @app.command("init")
    def init_cmd(
        operator: Annotated[str, typer.Option("--operator", metavar="USER", help="User name of the first operator.")],
        name: Annotated[Optional[str], typer.Option(help="The operator's full name (default: the user name).")] = None,
        email: Annotated[Optional[str], typer.Option(help="The operator's e-mail (default: USER@localhost.localdomain).")] = None,
    ) -> None:
        """Create the registry (migrations) and its first operator. Safe to re-run."""
        engine = make_engine(database_url())
        try:
            upgrade(engine)
            with session_scope(engine) as session:
                existing = people.find_person(session, operator)
                if existing is not None and existing.has_role(people.Role.operator):
                    typer.echo(f"registry already initialised; {operator} is an operator ({redacted(str(engine.url))})")
                    return
                people.add_person(session, operator, operator, name or operator,
                                  email or f"{operator}@localhost.localdomain", roles=["operator"], bootstrap=True)
            typer.echo(f"initialised the registry at {redacted(str(engine.url))}; first operator: {operator}")
        finally:
            engine.dispose()

    @db_app.command("upgrade")
    def db_upgrade(revision: Annotated[str, typer.Argument(metavar="REVISION", help="Target revision.")] = "head") -> None:
        """Apply schema migrations up to REVISION (default: the newest)."""
        engine = make_engine(database_url())
        try:
            upgrade(engine, revision)
            from enclave.registry.db import current_revision

            typer.echo(f"registry schema at {current_revision(engine)} ({redacted(str(engine.url))})")
        finally:
            engine.dispose()

    @db_app.command("current")
    def db_current() -> None:
        """Show the schema revision of the registry database."""
        from enclave.registry.db import current_revision, head_revision

        engine = make_engine(database_url())
        try:
            typer.echo(f"{current_revision(engine) or '(empty)'} (code expects {head_revision()})")
        finally:
            engine.dispose()

    @app.command("up")
    def up_cmd(
        serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the services after set-up (Ctrl-C stops them).")] = True,
        unisolated: Annotated[bool, typer.Option("--unisolated", help="Developer mode without Docker: notebooks are local processes with NO isolation.")] = False,
        public_url: Annotated[str, typer.Option(help="Where browsers reach the hub.")] = "http://127.0.0.1:8000",
    ) -> None:
        """Bring up the embedded enclave: registry, demo people, project and data, demo model,
        notebook image, then JupyterHub with the gateway, review, warden and idle culler."""
        from enclave.demo.seed import DEMO_PEOPLE, seed_demo, seed_demo_dataset
        from enclave.registry.credentials import set_password

        engine = make_engine(database_url())
        try:
            upgrade(engine)
            for line in seed_demo(engine):
                typer.echo(line)
            demo = _build_demo(None, force=False)
            for line in seed_demo_dataset(engine, demo.people_csv):
                typer.echo(line)
            passwords = {}
            if serve:
                # Passwords are stored hashed only, so the demo's are reset and shown at every start.
                with session_scope(engine) as s:
                    actor = next(p.username for p in people.list_people(s) if p.has_role(people.Role.operator))
                    for username, _, _ in DEMO_PEOPLE:
                        passwords[username] = set_password(s, actor, username)
        finally:
            engine.dispose()
        typer.echo(f"demo model: {demo.model_dir}")
        if serve:
            _serve_hub(str(demo.model_dir), unisolated, public_url, passwords)

    def _serve_hub(model_dir: str | None, unisolated: bool, public_url: str, passwords: dict[str, str]) -> None:
        import signal

        from enclave.hub.config import BANNER, EnclaveHubSettings
        from enclave.hub.launch import (DockerUnavailable, HubLaunchError, hub_environment, prepare_docker, start_hub,
                                        stop_leftover_proxy)
        from enclave.hub.network import FirewallError
        from enclave.envsettings import enclave_home

        settings = EnclaveHubSettings(mode="unisolated" if unisolated else "docker", public_url=public_url,
                                      model_dir=model_dir or os.environ.get("ENCLAVE_MODEL_DIR", ""))
        settings.review_command = _review_command(settings)
        image_id = None
        if not unisolated:
            try:
                image_id = prepare_docker(settings, enclave_home() / "logs", progress=typer.echo)
            except DockerUnavailable as exc:
                raise BadInput(f"{exc}. Without a Docker engine, `enclave up --unisolated` runs a developer "
                                    "mode with no isolation (never for real data)") from None
            except (HubLaunchError, FirewallError) as exc:
                raise BadInput(str(exc)) from None
        else:
            typer.echo(f"WARNING: {BANNER}", err=True)
        env = hub_environment(settings, image_id)
        try:
            hub = start_hub(env, Path(settings.state_dir))
        except HubLaunchError as exc:
            raise BadInput(str(exc)) from None
        typer.echo(f"hub: {settings.public_url}  (model gateway for notebooks: http://{settings.service_ip}:{settings.gateway_port}/v1/)")
        for username, password in passwords.items():
            typer.echo(f"  log in as {username:<9} password {password}")

        def on_term(signum, frame):  # a service manager's stop: same as Ctrl-C
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        try:
            code = hub.wait()
        except KeyboardInterrupt:
            hub.send_signal(signal.SIGINT)
            try:
                code = hub.wait(timeout=30)
            except subprocess.TimeoutExpired:
                hub.kill()
                code = hub.wait()
        stop_leftover_proxy(Path(settings.state_dir))
        if code not in (0, -signal.SIGINT, -signal.SIGTERM):
            raise BadInput(f"the hub exited with status {code}; see its log above")

    def _review_command(settings) -> str:
        """`enclave serve review`, for the hub to run as its managed service."""
        return shlex.join([sys.executable, "-m", "enclave.cli", "serve", "review", "--host", settings.service_ip,
                           "--port", str(settings.review_port)])

    @serve_app.command("review")
    def serve_review_cmd(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8002,
    ) -> None:
        """Serve the output-review airlock (submissions, reviewer UI, releases) until interrupted."""
        from enclave.review.app import serve_review

        serve_review(host, port)

    @serve_app.command("hub")
    def serve_hub(
        unisolated: Annotated[bool, typer.Option("--unisolated", help="Developer mode without Docker: NO isolation.")] = False,
        public_url: Annotated[str, typer.Option(help="Where browsers reach the hub.")] = "http://127.0.0.1:8000",
        model: Annotated[Optional[str], typer.Option("--model", help="GPT-2 model directory for the gateway (default: $ENCLAVE_MODEL_DIR).")] = None,
    ) -> None:
        """Run JupyterHub with the enclave's authenticator and spawner, and the gateway, review,
        warden and idle culler as its services (Ctrl-C stops everything)."""
        _serve_hub(model, unisolated, public_url, {})

    # ----- models and services -----------------------------------------------------------------

    def _build_demo(out: Path | None, force: bool):
        from enclave.demo.model import build_demo
        from enclave.envsettings import enclave_home

        return build_demo(out or enclave_home() / "demo", progress=True, force=force)

    @model_app.command("build-demo")
    def model_build_demo(
        out: Annotated[Optional[Path], typer.Option("--out", help="Where to write it (default: $ENCLAVE_HOME/demo).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching build is cached.")] = False,
    ) -> None:
        """Build the synthetic confidential dataset and a small GPT-2 trained on it (cached)."""
        demo = _build_demo(out, force)
        typer.echo(f"demo model: {demo.model_dir}")
        typer.echo(f"demo data:  {demo.people_csv}")

    def _serve_gateway(model_dir: str | None, host: str, port: int, device: str) -> None:
        import uvicorn

        from enclave.gateway.app import create_app
        from enclave.gateway.engine import Engine
        from enclave.gateway.model import ModelLoadError, load_model
        from enclave.gateway.settings import GatewaySettings, SettingsError

        try:
            settings = GatewaySettings.from_env(model_dir=model_dir, device=device)
        except SettingsError as exc:
            raise BadInput(str(exc)) from None
        db = make_engine(settings.db_url)
        try:
            check_schema(db)  # refuse to start on a registry that is missing or behind
        finally:
            db.dispose()
        try:
            loaded = load_model(settings.model_dir, device=settings.device)
        except ModelLoadError as exc:
            raise BadInput(str(exc)) from None
        engine = Engine(loaded, max_batch=settings.max_batch, max_queue=settings.max_queue)
        engine.start()
        try:
            uvicorn.run(create_app(settings, engine=engine), host=host, port=port, log_level="warning",
                        timeout_graceful_shutdown=5)
        finally:
            engine.close()

    @serve_app.command("gateway")
    def serve_gateway(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
        model: Annotated[Optional[str], typer.Option("--model", help="GPT-2 model directory (default: $ENCLAVE_MODEL_DIR).")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    ) -> None:
        """Serve the model API (generate, score, next-token, usage) until interrupted."""
        _serve_gateway(model, host, port, device)

    # ----- people -------------------------------------------------------------------------------

    @person_app.command("add")
    def person_add(
        username: Annotated[str, typer.Argument(metavar="USER", help="JupyterHub user name.")],
        name: Annotated[str, typer.Option("--name", help="Full name.")],
        email: Annotated[str, typer.Option("--email", help="E-mail address.")],
        affiliation: Annotated[str, typer.Option(help="Institution.")] = "",
        role: Annotated[Optional[list[str]], typer.Option("--role", help="scholar, reviewer or operator; repeat for several (default: scholar).")] = None,
        as_: AsUser = None,
    ) -> None:
        """Register a person."""
        with registry() as s:
            person = people.add_person(s, as_, username, name, email, affiliation, role or ["scholar"])
            typer.echo(f"added {person.username} ({', '.join(sorted(person.role_set))})")

    @person_app.command("password")
    def person_password(
        username: Annotated[str, typer.Argument(metavar="USER", help="User name.")],
        stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the new password from standard input instead of generating one.")] = False,
        as_: AsUser = None,
    ) -> None:
        """Set or reset a person's hub login password (stored hashed; a generated one is shown once)."""
        from enclave.registry.credentials import set_password

        given = sys.stdin.readline().rstrip("\n") if stdin else None
        with registry() as s:
            password = set_password(s, as_, username, given)
        typer.echo(f"password for {username} set" + ("" if stdin else f": {password}"))

    @person_app.command("role")
    def person_role(
        username: Annotated[str, typer.Argument(metavar="USER", help="User name.")],
        add: Annotated[Optional[list[str]], typer.Option("--add", help="Role to grant; repeatable.")] = None,
        remove: Annotated[Optional[list[str]], typer.Option("--remove", help="Role to take away; repeatable.")] = None,
        as_: AsUser = None,
    ) -> None:
        """Grant or take away roles."""
        with registry() as s:
            person = people.set_roles(s, as_, username, add or [], remove or [])
            typer.echo(f"{person.username}: {', '.join(sorted(person.role_set))}")

    @person_app.command("list")
    def person_list(as_json: AsJson = False) -> None:
        """List everyone registered."""
        with registry() as s:
            rows = [people.person_json(p) for p in people.list_people(s)]
        if as_json:
            _print_json(rows)
        else:
            _print_rows([[r["username"], r["name"], r["email"], ",".join(r["roles"])] for r in rows],
                        ["USER", "NAME", "EMAIL", "ROLES"])

    @person_app.command("show")
    def person_show(username: Annotated[str, typer.Argument(metavar="USER", help="User name.")], as_json: AsJson = False) -> None:
        """Show one person and their projects."""
        with registry() as s:
            person = people.get_person(s, username)
            record = people.person_json(person)
            record["projects"] = [p.slug for p in projects.list_projects(s)
                                  if person.username in {m.username for m in projects.members(s, p)}]
        if as_json:
            _print_json(record)
        else:
            for key, value in record.items():
                typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")

    # ----- projects -----------------------------------------------------------------------------

    @project_app.command("create")
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
        # Record due expiries in their own transaction first: a move refused because the project
        # has expired rolls its transaction back, and the expiry must stay on record regardless.
        with registry() as s:
            projects.expire_due(s)
        with registry() as s:
            project = projects.transition(s, as_, slug, action, reason=reason, until=until)
            suffix = f" until {_day(project.expires_at)}" if action == "approve" else ""
            typer.echo(f"project {slug}: {project.status}{suffix}")

    Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]

    @project_app.command("approve")
    def project_approve(
        slug: Slug,
        until: Annotated[str, typer.Option("--until", metavar="YYYY-MM-DD", help="Last day of access (UTC).")],
        as_: AsUser = None,
    ) -> None:
        """Approve a proposed project until a date."""
        _move(slug, "approve", as_, until=_until(until))

    @project_app.command("reject")
    def project_reject(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
        """Reject a proposed project (needs --reason)."""
        _move(slug, "reject", as_, reason)

    @project_app.command("suspend")
    def project_suspend(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
        """Suspend an approved project: access stops until it is reinstated."""
        _move(slug, "suspend", as_, reason)

    @project_app.command("reinstate")
    def project_reinstate(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
        """Reinstate a suspended project."""
        _move(slug, "reinstate", as_, reason)

    @project_app.command("revoke")
    def project_revoke(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
        """Revoke a project for good (needs --reason)."""
        _move(slug, "revoke", as_, reason)

    @project_app.command("close")
    def project_close(slug: Slug, reason: Reason = "", as_: AsUser = None) -> None:
        """Close a finished project."""
        _move(slug, "close", as_, reason)

    @project_app.command("extend")
    def project_extend(
        slug: Slug,
        until: Annotated[str, typer.Option("--until", metavar="YYYY-MM-DD", help="New last day of access (UTC).")],
        as_: AsUser = None,
    ) -> None:
        """Move the end date of an approved or suspended project."""
        with registry() as s:
            project = projects.extend(s, as_, slug, _until(until))
            typer.echo(f"project {slug}: {project.status} until {_day(project.expires_at)}")

    @project_app.command("expire-due")
    def project_expire_due() -> None:
        """Record the expiry of every project past its end date (access stops at the date anyway)."""
        with registry() as s:
            expired = projects.expire_due(s)
        typer.echo(f"expired: {', '.join(expired)}" if expired else "no project was due to expire")

    @project_app.command("show")
    def project_show(slug: Slug, as_json: AsJson = False) -> None:
        """Show a project: status, expiry, members, datasets and grant."""
        with registry() as s:
            record = projects.project_json(s, projects.get_project(s, slug))
        if as_json:
            _print_json(record)
            return
        for key, value in record.items():
            if key == "grant":
                continue
            typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else ('-' if value is None else value)}")
        grant = record["grant"]
        typer.echo("grant: " + ("none" if grant is None else ", ".join(f"{k}={v}" for k, v in grant.items() if k not in ("mem_bytes",))))

    @project_app.command("list")
    def project_list(as_json: AsJson = False) -> None:
        """List projects with their current status."""
        with registry() as s:
            records = [projects.project_json(s, p) for p in projects.list_projects(s)]
        if as_json:
            _print_json(records)
        else:
            _print_rows([[r["slug"], r["status"], r["pi"], r["until"] or "-", str(len(r["members"])), r["title"]]
                         for r in records], ["SLUG", "STATUS", "PI", "UNTIL", "MEMBERS", "TITLE"])

    # ----- members ------------------------------------------------------------------------------

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

    # ----- datasets -----------------------------------------------------------------------------

    @dataset_app.command("register")
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

    @dataset_app.command("allow")
    def dataset_allow(name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset.")], slug: Slug, as_: AsUser = None) -> None:
        """Let a project use a dataset."""
        with registry() as s:
            datasets.allow(s, as_, name, slug)
            typer.echo(f"{slug} may use {name}")

    @dataset_app.command("disallow")
    def dataset_disallow(name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset.")], slug: Slug, as_: AsUser = None) -> None:
        """Take a dataset away from a project."""
        with registry() as s:
            datasets.disallow(s, as_, name, slug)
            typer.echo(f"{slug} may no longer use {name}")

    @dataset_app.command("list")
    def dataset_list(as_json: AsJson = False) -> None:
        """List registered datasets."""
        with registry() as s:
            records = [datasets.dataset_json(s, d) for d in datasets.list_datasets(s)]
        if as_json:
            _print_json(records)
        else:
            _print_rows([[r["name"], r["sensitivity"], ",".join(r["quasi_identifiers"]), ",".join(r["projects"]), r["path"]]
                         for r in records], ["NAME", "SENSITIVITY", "QUASI-IDENTIFIERS", "PROJECTS", "PATH"])

    # ----- grants -------------------------------------------------------------------------------

    @grant_app.command("set")
    def grant_set(
        slug: Slug,
        tokens: Annotated[Optional[int], typer.Option("--tokens", help="Model tokens in total.")] = None,
        tokens_per_day: Annotated[Optional[int], typer.Option("--tokens-per-day", help="Model tokens per UTC day.")] = None,
        rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute.")] = None,
        max_tokens_per_request: Annotated[Optional[int], typer.Option("--max-tokens-per-request", help="Largest single request.")] = None,
        epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="Differential-privacy budget epsilon.")] = None,
        delta: Annotated[Optional[float], typer.Option("--delta", help="Differential-privacy budget delta.")] = None,
        cpu: Annotated[Optional[float], typer.Option("--cpu", help="CPUs per notebook.")] = None,
        mem: Annotated[Optional[str], typer.Option("--mem", help="Memory per notebook, e.g. 4G.")] = None,
        session_hours: Annotated[Optional[float], typer.Option("--session-hours", help="Longest notebook session.")] = None,
        export_bytes: Annotated[Optional[int], typer.Option("--export-bytes", help="Bytes the project may export in total.")] = None,
        logprob_calls_per_day: Annotated[Optional[int], typer.Option("--logprob-calls-per-day", help="Calls returning probabilities (score, next-token) per day.")] = None,
        as_: AsUser = None,
    ) -> None:
        """Create or change a project's grant; unset fields keep their values."""
        with registry() as s:
            grant = grants.set_grant(
                s, as_, slug, tokens_total=tokens, tokens_per_day=tokens_per_day, requests_per_minute=rpm,
                max_tokens_per_request=max_tokens_per_request, epsilon=epsilon, delta=delta, cpu=cpu,
                mem_bytes=grants.parse_size(mem) if mem is not None else None, session_hours=session_hours,
                export_bytes=export_bytes, logprob_calls_per_day=logprob_calls_per_day,
            )
            record = grants.grant_json(grant)
        typer.echo(f"grant for {slug}: " + ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("mem_bytes", "updated_at", "updated_by")))

    @grant_app.command("show")
    def grant_show(slug: Slug, as_json: AsJson = False) -> None:
        """Show a project's grant."""
        with registry() as s:
            record = grants.grant_json(grants.get_grant(s, slug))
        if as_json:
            _print_json(record)
        else:
            for key, value in record.items():
                typer.echo(f"{key}: {value}")

    # ----- keys ---------------------------------------------------------------------------------

    @key_app.command("issue")
    def key_issue(
        username: Annotated[str, typer.Argument(metavar="USER", help="Member the key is for.")],
        project: Annotated[str, typer.Option("--project", help="Project the key charges.")],
        expires: Annotated[Optional[str], typer.Option("--expires", metavar="YYYY-MM-DD", help="Last day the key works (default: 90 days, at most the project's end).")] = None,
        as_: AsUser = None,
    ) -> None:
        """Issue an API key and print it once (it is stored only hashed)."""
        with registry() as s:
            row, plaintext = keys.issue(s, as_, username, project, _until(expires, "--expires") if expires else None)
            expires_at = row.expires_at
            key_id = row.id
        typer.echo(plaintext)
        typer.echo(f"key {key_id} for {username} in {project}, expires {iso(expires_at)}; it will not be shown again", err=True)

    @key_app.command("revoke")
    def key_revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (the part after enk_).")], as_: AsUser = None) -> None:
        """Revoke an API key at once."""
        with registry() as s:
            keys.revoke(s, as_, key_id)
        typer.echo(f"key {key_id} revoked")

    @key_app.command("list")
    def key_list(
        user: Annotated[Optional[str], typer.Option("--user", help="Only this person's keys.")] = None,
        project: Annotated[Optional[str], typer.Option("--project", help="Only this project's keys.")] = None,
        as_json: AsJson = False,
    ) -> None:
        """List API keys (never their secrets)."""
        with registry() as s:
            records = [keys.key_json(s, k) for k in keys.list_keys(s, user, project)]
        if as_json:
            _print_json(records)
        else:
            _print_rows([[r["id"], r["user"], r["project"], r["state"], r["expires_at"][:10]] for r in records],
                        ["ID", "USER", "PROJECT", "STATE", "EXPIRES"])

    # ----- access (what the services will ask) --------------------------------------------------

    @app.command("check-access")
    def check_access(
        username: Annotated[str, typer.Argument(metavar="USER", help="Scholar.")],
        project: Annotated[Optional[str], typer.Option("--project", help="Project (needed when USER has several).")] = None,
    ) -> None:
        """Say whether USER may use the enclave now, and if not, why (exit 3 when refused)."""
        with registry() as s:
            try:
                granted = access.resolve(s, username, project)
            except UserError as exc:
                if isinstance(exc, access.AccessDenied):
                    typer.echo(f"refused ({exc.reason}): {exc.message}")
                    raise typer.Exit(3)
                raise
            typer.echo(f"allowed: {username} in {granted.project.slug} until {iso(granted.project.expires_at)}")

    # ----- audit --------------------------------------------------------------------------------

    @audit_app.command("verify")
    def audit_verify(
        file: Annotated[Optional[Path], typer.Option("--file", help="Verify an exported JSON-lines file instead of the database.")] = None,
        anchor: Annotated[Optional[list[str]], typer.Option("--anchor", metavar="SEQ:HASH", help="A published head the chain must pass through; repeatable.")] = None,
    ) -> None:
        """Recompute the hash chain; exit 0 if intact, 1 naming the first bad seq."""
        anchors = dict(audit.parse_anchor(a) for a in anchor or [])
        if file is not None:
            try:
                with file.open(encoding="utf-8") as handle:
                    result = audit.verify_records(audit.read_jsonl(handle), anchors)
            except OSError as exc:
                raise BadInput(f"cannot read {file}: {exc.strerror}") from None
        else:
            with registry() as s:
                result = audit.verify_database(s, anchors)
        typer.echo(result.summary(), err=not result.ok)
        if not result.ok:
            raise typer.Exit(1)

    @audit_app.command("export")
    def audit_export(
        out: Annotated[Optional[Path], typer.Option("--out", help="Write here instead of standard output.")] = None,
    ) -> None:
        """Write every event as JSON lines that an auditor can verify without our database."""
        with registry() as s:
            handle = out.open("w", encoding="utf-8") if out else sys.stdout
            try:
                count = 0
                for event in audit.iter_events(s):
                    handle.write(json.dumps(audit.event_record(event), ensure_ascii=False, sort_keys=True) + "\n")
                    count += 1
            finally:
                if out:
                    handle.close()
        if out:
            typer.echo(f"wrote {count} events to {out}", err=True)

    @audit_app.command("tail")
    def audit_tail(
        n: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many of the newest events.")] = 20,
        as_json: AsJson = False,
    ) -> None:
        """Show the newest events."""
        with registry() as s:
            events = [audit.event_record(e) for e in audit.tail(s, n)]
        if as_json:
            for record in events:
                typer.echo(json.dumps(record, ensure_ascii=False, sort_keys=True))
            return
        for r in events:
            typer.echo(f"{r['seq']:>6}  {r['time']}  {r['actor']:<12} {r['action']:<18} {r['subject']}  {r['details']}")

    @audit_app.command("head")
    def audit_head() -> None:
        """Print the newest event as SEQ:HASH, to publish outside the enclave as an anchor."""
        with registry() as s:
            event = audit.head(s)
        typer.echo(f"{event.seq}:{event.hash}" if event else f"0:{audit.GENESIS_HASH}")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status, turning our errors into one line on stderr."""
    if _IMPORT_ERROR is not None:
        print(f"enclave: the operator tools need the registry extra: pip install 'enclave[registry]' ({_IMPORT_ERROR})", file=sys.stderr)
        return 2
    try:
        app(args=argv, prog_name="enclave", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        print(f"enclave: {exc.message}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        print(f"enclave: database unreachable: {str(exc.orig or exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except IntegrityError as exc:
        # Two operators racing on the same name: the loser's whole transaction was rolled back.
        print(f"enclave: conflicting change, nothing was written: {str(exc.orig or exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: say so briefly, keep the traceback for ENCLAVE_DEBUG
        if os.environ.get("ENCLAVE_DEBUG"):
            raise
        print(f"enclave: internal error ({exc.__class__.__name__}: {exc}); set ENCLAVE_DEBUG=1 for details", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
