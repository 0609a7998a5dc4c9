"""`enclave review ...`: the reviewer's decisions, `review gc` (the quarantine's orphans), and
`review scan` (in `enclave.cli.scan`).

Reviewers' commands call the same service functions as the web UI, in one transaction each, as the
reviewer named by `--as` (or $ENCLAVE_REVIEWER): the same rules apply (never your own export, two
approvals when the checks warn or block). A decision (approve, reject, request-changes) also needs
that reviewer's own password, the one their hub login takes: typed at a prompt that does not echo,
or read from `--password-file` (a file only its owner can read) or $ENCLAVE_REVIEWER_PASSWORD.
Naming a reviewer is not being one: an operator who runs `--as rita` and then `--as ravi` is
refused, and each failed attempt is on the audit log. A decision names the files it was made on
(`--seen`, the sha256 of each file as `review show` prints them), so it never lands on a version
the reviewer has not seen. Refusals print one line and exit 2 (`enclave.cli.run`).
The review service's modules come with the [review] extra, so each command imports them itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli import login
from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.scan import scan_command
from enclave.cli.session import engine, registry
from enclave.errors import Forbidden, Unauthenticated
from enclave.registry.clock import iso
from enclave.registry.db import session_scope

app = typer.Typer(help="Output review: automated checks and the reviewer's decisions.", no_args_is_help=True)

app.command("scan")(scan_command)

AsReviewer = Annotated[Optional[str], typer.Option(
    "--as", envvar="ENCLAVE_REVIEWER", show_envvar=True, metavar="USER",
    help="The reviewer on whose authority this runs (recorded in the audit log); a decision also needs "
         "their own password.")]
RequestId = Annotated[str, typer.Argument(metavar="ID", help="Export id (exp-...).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (the author reads it).")]
Seen = Annotated[Optional[list[str]], typer.Option(
    "--seen", metavar="SHA256[,SHA256...]",
    help="The sha256 of every file you reviewed, as `enclave review show` prints them (comma-separated or "
         "repeated). Refused if the export's files are no longer those.")]
PasswordFile = Annotated[Optional[Path], typer.Option(
    "--password-file", metavar="FILE", dir_okay=False,
    help="Read your password (the one your hub login takes) from the first line of FILE, which only you may "
         "read (mode 0600). Without it: $ENCLAVE_REVIEWER_PASSWORD, else a prompt that does not echo.")]
PASSWORD_ENV = "ENCLAVE_REVIEWER_PASSWORD"


def _seen(values: list[str] | None) -> list[str]:
    from enclave.errors import BadInput

    seen = [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
    if not seen:
        raise BadInput("say which files you reviewed: --seen with the sha256 of every file, as "
                       "`enclave review show ID` prints them")
    return seen


def _need_actor(actor: str | None) -> str:
    if not actor:
        raise Forbidden("who is reviewing? pass --as USER or set ENCLAVE_REVIEWER")
    return actor


def _release(eng, request_id: str, actor: str, by_reviewer: bool) -> str:
    """Release an approved request as the service does; returns the release directory."""
    from enclave.registry.models import ExportRelease
    from enclave.review import service
    from enclave.review.quarantine import Quarantine
    from enclave.review.release import load_or_create_key
    from enclave.review.settings import ReviewSettings
    from enclave.review.workflow import Actor

    settings = ReviewSettings.from_env()
    kind = Actor.reviewer if by_reviewer else Actor.system
    service.release_request(eng, Quarantine(settings.quarantine_dir), load_or_create_key(settings.signing_key_file),
                            settings.release_dir, request_id, actor=actor if by_reviewer else "system", actor_kind=kind)
    with session_scope(eng) as s:
        return s.get(ExportRelease, request_id).path


@app.command("list")
def review_list(
    state: Annotated[Optional[list[str]], typer.Option("--state", help="Only these states (repeat); default: awaiting_review.")] = None,
    all_states: Annotated[bool, typer.Option("--all", help="Every state.")] = False,
    as_: AsReviewer = None, as_json: AsJson = False,
) -> None:
    """The review queue: exports you may review (never your own or your projects')."""
    from enclave.registry.models import ExportState
    from enclave.review import service

    actor = _need_actor(as_)
    states = [s.value for s in ExportState] if all_states else state
    with registry() as s:
        rows = service.review_queue(s, actor, states)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    print_rows([[r.id, r.project, r.author, r.state, str(r.version), str(r.files), r.verdict or "-",
                 str(r.approvals_needed or "-"), (iso(r.created_at) or "")[:19]] for r in rows],
               ["ID", "PROJECT", "AUTHOR", "STATE", "V", "FILES", "CHECKS", "NEEDS", "SUBMITTED"])


@app.command("show")
def review_show(request_id: RequestId, as_: AsReviewer = None, as_json: AsJson = False) -> None:
    """One export: files, findings, decisions and comments (as you may see them)."""
    from enclave.review import service

    actor = _need_actor(as_)
    with registry() as s:
        data = service.view(s, actor, request_id).to_json()
    if as_json:
        print_json(data)
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
    if data["files"]:
        typer.echo(f"to decide on these files (version {data['version']}): "
                   f"--seen {','.join(sorted(f['sha256'] for f in data['files']))}")
    typer.echo(f"findings ({len(data['findings'])}):")
    for f in data["findings"]:
        message = f" — {f['message']}" if "message" in f else ""
        typer.echo(f"  [{f['severity']}] {f['check']}: {f['file']} {f['location']}{message}")
    for d in data["decisions"]:
        typer.echo(f"decision: {d['reviewer']} {d['decision']} (v{d['version']}, {d['at']})"
                   + (f": {d['reason']}" if d["reason"] else ""))
    for c in data["comments"]:
        typer.echo(f"comment ({c['visibility']}) {c['author']}: {c['body']}")


def _password(actor: str, password_file: Path | None) -> str | None:
    return login.password(actor, password_file, PASSWORD_ENV)


def _decide(request_id: str, actor: str | None, decision: str, reason: str, seen: list[str] | None,
            password_file: Path | None) -> None:
    from enclave.review import service

    actor = _need_actor(actor)
    seen = _seen(seen)
    password = _password(actor, password_file)
    via = f"cli, os user {login.os_user()}"
    with engine() as eng:
        try:
            # A missing password is refused and recorded like a wrong one: naming a reviewer
            # without their credential is an attempt too.
            reviewer = service.password_login(eng, actor, password, request_id=request_id, decision=decision,
                                              via=via)
        except Unauthenticated:
            if password:
                raise
            raise Unauthenticated(f"a review decision needs {actor}'s own password (the one their hub login takes): "
                                  f"type it when asked on a terminal, or give --password-file or ${PASSWORD_ENV}; "
                                  "nothing was decided") from None
        with session_scope(eng) as s:
            result = service.decide(s, actor, request_id, decision, reason, seen=seen, login=reviewer)
        if decision != "approve":
            typer.echo(f"{request_id}: {result.request.state.replace('_', ' ')}")
            return
        if not result.approved:
            typer.echo(f"{request_id}: approval recorded ({len(result.approvals)} of {result.needed}); "
                       "another reviewer must approve")
            return
        path = _release(eng, request_id, actor, by_reviewer=False)
        typer.echo(f"{request_id}: approved and released to {path}")


@app.command("approve")
def review_approve(request_id: RequestId, reason: Reason = "", seen: Seen = None, as_: AsReviewer = None,
                   password_file: PasswordFile = None) -> None:
    """Approve an export (needs your own password); the last approval needed releases it."""
    _decide(request_id, as_, "approve", reason, seen, password_file)


@app.command("reject")
def review_reject(request_id: RequestId, reason: Reason = "", seen: Seen = None, as_: AsReviewer = None,
                  password_file: PasswordFile = None) -> None:
    """Reject an export (final; the author may submit a new one). Needs your own password."""
    _decide(request_id, as_, "reject", reason, seen, password_file)


@app.command("request-changes")
def review_request_changes(request_id: RequestId, reason: Reason = "", seen: Seen = None,
                           as_: AsReviewer = None, password_file: PasswordFile = None) -> None:
    """Send an export back to its author, saying what to change. Needs your own password."""
    _decide(request_id, as_, "request_changes", reason, seen, password_file)


@app.command("comment")
def review_comment(
    request_id: RequestId, text: Annotated[str, typer.Argument(metavar="TEXT", help="The comment.")],
    private: Annotated[bool, typer.Option("--private", help="Reviewers only (the author does not see it).")] = False,
    as_: AsReviewer = None,
) -> None:
    """Comment on an export (public by default: its author reads it)."""
    from enclave.review import service
    from enclave.review.settings import ReviewSettings

    actor = _need_actor(as_)
    settings = ReviewSettings.from_env()  # the same caps as the service's
    with registry() as s:
        service.comment(s, actor, request_id, text, "private" if private else "public",
                        max_comments=settings.max_comments, max_chars=settings.max_comment_chars)
    typer.echo(f"{request_id}: {'private' if private else 'public'} comment added")


@app.command("release")
def review_release(request_id: RequestId, as_: AsReviewer = None) -> None:
    """Release an approved export whose automatic release failed (a full disk, say)."""
    actor = _need_actor(as_)
    with engine() as eng:
        path = _release(eng, request_id, actor, by_reviewer=True)
    typer.echo(f"{request_id}: released to {path}")


@app.command("gc")
def review_gc(
    grace: Annotated[Optional[int], typer.Option(
        "--grace", metavar="SECONDS", min=60,
        help="Spare blobs stored in the last SECONDS (at least 60; default: $ENCLAVE_REVIEW_ORPHAN_GRACE, 3600): an "
             "upload in flight has stored its files and not yet recorded its export.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    as_: AsUser = None, as_json: AsJson = False,
) -> None:
    """Remove quarantined files that no export references (a crash between upload and record left
    them); what goes is recorded on the audit log. Safe while the review service runs."""
    from enclave.registry.people import require_role
    from enclave.review import service
    from enclave.review.quarantine import Quarantine
    from enclave.review.settings import ReviewSettings

    settings = ReviewSettings.from_env()
    with registry() as s:
        actor = require_role(s, as_).username
    with engine() as eng:
        collected = service.collect_orphans(eng, Quarantine(settings.quarantine_dir),
                                            settings.orphan_grace_s if grace is None else grace, actor,
                                            dry_run=dry_run)
    if as_json:
        print_json(collected.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    for orphan in collected.removed:
        typer.echo(f"{verb} {orphan.sha256}  {orphan.size} bytes")
    typer.echo(f"{verb} {len(collected.removed)} unreferenced file(s), {collected.bytes} bytes"
               + (f", and {collected.tmp_removed} stale upload(s)" if collected.tmp_removed else ""))
