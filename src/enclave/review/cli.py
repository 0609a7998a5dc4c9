"""`enclave review ...` and `enclave release ...`: mounted by `enclave.cli`.

Reviewers' commands call the same service functions as the web UI, in one transaction each, as the
reviewer named by `--as` (or $ENCLAVE_REVIEWER): the same rules apply (never your own export, two
approvals when the checks warn or block). Refusals print one line and exit 2 (`enclave.cli.run`).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from enclave.review.scan_cli import scan_command

review_app = typer.Typer(help="Output review: automated checks and the reviewer's decisions.", no_args_is_help=True)
release_app = typer.Typer(help="Released exports: verify signed manifests.", no_args_is_help=True)

review_app.command("scan")(scan_command)

AsReviewer = Annotated[Optional[str], typer.Option(
    "--as", envvar="ENCLAVE_REVIEWER", show_envvar=True, metavar="USER",
    help="The reviewer on whose authority this runs (recorded in the audit log).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
RequestId = Annotated[str, typer.Argument(metavar="ID", help="Export id (exp-...).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (the author reads it).")]


def _registry():
    from enclave.envsettings import database_url
    from enclave.registry.db import registry_transaction

    return registry_transaction(database_url())


@contextlib.contextmanager
def _engine() -> Iterator:
    from enclave.envsettings import database_url
    from enclave.registry.db import check_schema, make_engine

    engine = make_engine(database_url())
    try:
        check_schema(engine)
        yield engine
    finally:
        engine.dispose()


def _need_actor(actor: str | None) -> str:
    from enclave.errors import BadInput, SettingsError, Forbidden

    if not actor:
        raise Forbidden("who is reviewing? pass --as USER or set ENCLAVE_REVIEWER")
    return actor


def _print_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _release(engine, request_id: str, actor: str, by_reviewer: bool) -> str:
    """Release an approved request as the service does; returns the release directory."""
    from enclave.review import service
    from enclave.review.quarantine import Quarantine
    from enclave.review.release import load_or_create_key
    from enclave.review.settings import ReviewSettings, SettingsError
    from enclave.review.workflow import Actor
    from enclave.errors import BadInput

    try:
        settings = ReviewSettings.from_env()
    except SettingsError as exc:
        raise BadInput(str(exc)) from None
    kind = Actor.reviewer if by_reviewer else Actor.system
    service.release_request(engine, Quarantine(settings.quarantine_dir), load_or_create_key(settings.signing_key_file),
                            settings.release_dir, request_id, actor=actor if by_reviewer else "system", actor_kind=kind)
    from enclave.registry.db import session_scope

    with session_scope(engine) as s:
        from enclave.registry.models import ExportRelease

        return s.get(ExportRelease, request_id).path


@review_app.command("list")
def review_list(
    state: Annotated[Optional[list[str]], typer.Option("--state", help="Only these states (repeat); default: awaiting_review.")] = None,
    all_states: Annotated[bool, typer.Option("--all", help="Every state.")] = False,
    as_: AsReviewer = None, as_json: AsJson = False,
) -> None:
    """The review queue: exports you may review (never your own or your projects')."""
    from enclave.registry.clock import iso
    from enclave.review import service
    from enclave.registry.models import ExportState

    actor = _need_actor(as_)
    states = [s.value for s in ExportState] if all_states else state
    with _registry() as s:
        rows = service.review_queue(s, actor, states)
    if as_json:
        _print_json([r.to_json() for r in rows])
        return
    if not rows:
        typer.echo("(none)")
        return
    header = ["ID", "PROJECT", "AUTHOR", "STATE", "V", "FILES", "CHECKS", "NEEDS", "SUBMITTED"]
    table = [[r.id, r.project, r.author, r.state, str(r.version), str(r.files), r.verdict or "-",
              str(r.approvals_needed or "-"), (iso(r.created_at) or "")[:19]] for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@review_app.command("show")
def review_show(request_id: RequestId, as_: AsReviewer = None, as_json: AsJson = False) -> None:
    """One export: files, findings, decisions and comments (as you may see them)."""
    from enclave.review import service

    actor = _need_actor(as_)
    with _registry() as s:
        data = service.view(s, actor, request_id).to_json()
    if as_json:
        _print_json(data)
        return
    typer.echo(f"export {data['id']}  project {data['project']}  author {data['author']}  state {data['state']}  "
               f"version {data['version']}")
    typer.echo(f"checks: {data['verdict'] or 'not finished'}; approvals {data['approvals']} of "
               f"{data['approvals_needed'] or '?'}")
    typer.echo(f"justification: {data['justification']}")
    if data["context"]:
        typer.echo(f"context: {data['context']}")
    typer.echo("files:")
    for f in data["files"]:
        typer.echo(f"  {f['name']}  {f['size']} bytes  sha256 {f['sha256']}")
    typer.echo(f"findings ({len(data['findings'])}):")
    for f in data["findings"]:
        message = f" — {f['message']}" if "message" in f else ""
        typer.echo(f"  [{f['severity']}] {f['check']}: {f['file']} {f['location']}{message}")
    for d in data["decisions"]:
        typer.echo(f"decision: {d['reviewer']} {d['decision']} (v{d['version']}, {d['at']})"
                   + (f": {d['reason']}" if d["reason"] else ""))
    for c in data["comments"]:
        typer.echo(f"comment ({c['visibility']}) {c['author']}: {c['body']}")


def _decide(request_id: str, actor: str | None, decision: str, reason: str) -> None:
    from enclave.registry.db import session_scope
    from enclave.review import service

    actor = _need_actor(actor)
    with _engine() as engine:
        with session_scope(engine) as s:
            result = service.decide(s, actor, request_id, decision, reason)
        if decision != "approve":
            typer.echo(f"{request_id}: {result.request.state.replace('_', ' ')}")
            return
        if not result.approved:
            typer.echo(f"{request_id}: approval recorded ({len(result.approvals)} of {result.needed}); "
                       "another reviewer must approve")
            return
        path = _release(engine, request_id, actor, by_reviewer=False)
        typer.echo(f"{request_id}: approved and released to {path}")


@review_app.command("approve")
def review_approve(request_id: RequestId, reason: Reason = "", as_: AsReviewer = None) -> None:
    """Approve an export; the last approval needed releases it."""
    _decide(request_id, as_, "approve", reason)


@review_app.command("reject")
def review_reject(request_id: RequestId, reason: Reason = "", as_: AsReviewer = None) -> None:
    """Reject an export (final; the author may submit a new one)."""
    _decide(request_id, as_, "reject", reason)


@review_app.command("request-changes")
def review_request_changes(request_id: RequestId, reason: Reason = "", as_: AsReviewer = None) -> None:
    """Send an export back to its author, saying what to change."""
    _decide(request_id, as_, "request_changes", reason)


@review_app.command("comment")
def review_comment(
    request_id: RequestId, text: Annotated[str, typer.Argument(metavar="TEXT", help="The comment.")],
    private: Annotated[bool, typer.Option("--private", help="Reviewers only (the author does not see it).")] = False,
    as_: AsReviewer = None,
) -> None:
    """Comment on an export (public by default: its author reads it)."""
    from enclave.review import service

    actor = _need_actor(as_)
    with _registry() as s:
        service.comment(s, actor, request_id, text, "private" if private else "public")
    typer.echo(f"{request_id}: {'private' if private else 'public'} comment added")


@review_app.command("release")
def review_release(request_id: RequestId, as_: AsReviewer = None) -> None:
    """Release an approved export whose automatic release failed (a full disk, say)."""
    actor = _need_actor(as_)
    with _engine() as engine:
        path = _release(engine, request_id, actor, by_reviewer=True)
    typer.echo(f"{request_id}: released to {path}")


@release_app.command("verify")
def release_verify(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="A release's manifest.json (or its directory).")],
    key: Annotated[Optional[Path], typer.Option("--key", help="The review service's public key (PEM), as published "
                                                "at /services/review/api/release-key. Default: the copy next to the manifest.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a release's signature and every file's SHA-256. Exit 0: verified; 1: something does not
    match (each problem is printed); 2: the manifest cannot be checked at all."""
    from enclave.review.release import verify

    result = verify(manifest, key)
    if as_json:
        _print_json({"ok": result.ok, "key_id": result.key_id, "key_source": result.key_source, "files": result.files,
                     "problems": result.problems})
    else:
        typer.echo(result.summary(), err=not result.ok)
        for problem in result.problems:
            typer.echo(f"  {problem}", err=True)
        if result.ok and key is None:
            typer.echo("  note: checked against the key shipped with the release; pass --key with the service's "
                       "published key to rule out a replaced key")
    if not result.ok:
        raise typer.Exit(1)
