"""What can be done to an export request. Each operation runs inside the caller's transaction and
appends its audit event there, so the change and its record commit together or not at all.

The HTTP API, the reviewer web UI and the `enclave review` CLI all call these functions: the
rules (who may do what, the two-person rule, resetting reviews when a file changes) live here and
in `workflow`, nowhere else.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import secrets
from collections import Counter
from typing import Any, Collection, Iterable

from sqlmodel import Session, select

from enclave.registry import access, audit, credentials
from enclave.registry.clock import iso, utcnow
from enclave.errors import UserError, BadInput, NotFound, Forbidden, Conflict, InvalidTransition, Unauthenticated
from enclave.registry.models import AuditEvent, Credential, Membership, Person, Project, Role
from enclave.registry.people import SYSTEM_ACTOR, find_person
from enclave.review.scan.findings import Finding, Severity
from enclave.registry.models import (
    Decision, ExportComment, ExportFile, ExportFinding, ExportRelease, ExportRequest, ExportReview, ExportState,
    Visibility,
)
from enclave.review.quarantine import Orphan, Quarantine, StagedFile, check_unique, export_name
from enclave.review.settings import COMMENT_CEILING, ReviewSettings
from enclave.review.workflow import TERMINAL, Actor, Transition, actor_for, approvals_needed, check_transition

MAX_JUSTIFICATION_CHARS = 20_000
# The hard ceiling on any comment, note or reason; the service's settings choose a lower cap for
# comments (authors read comments back from outside the enclave, so they are a channel out).
MAX_COMMENT_CHARS = COMMENT_CEILING
# Defaults for in-process callers; the service passes its settings' values.
COMMENTS_PER_PERSON = ReviewSettings.max_comments
COMMENT_CHARS = ReviewSettings.max_comment_chars
ID_PREFIX = "exp-"


def new_request_id() -> str:
    # 60 random bits, lower-case base32: short enough to read out, unguessable enough not to matter.
    return ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:12]


def valid_request_id(request_id: str) -> bool:
    rest = request_id[len(ID_PREFIX):] if request_id.startswith(ID_PREFIX) else ""
    return len(rest) == 12 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in rest)


# ----- loading and standing -----------------------------------------------------------------------

def get_request(session: Session, request_id: str, *, lock: bool = False) -> ExportRequest:
    """The request, or NotFound. `lock` takes its row lock for the rest of the transaction: every
    change reads the state, checks the move and writes it, and two of those at once (a withdrawal
    racing the check worker, two reviewers approving together) must not both read the old state.
    (SQLite transactions here are serialised anyway by BEGIN IMMEDIATE; PostgreSQL needs the lock.)"""
    request = None
    if valid_request_id(request_id or ""):
        query = select(ExportRequest).where(ExportRequest.id == request_id)
        if lock:
            query = query.with_for_update()
        request = session.exec(query).first()
        if request is not None and lock:
            session.refresh(request)  # a copy cached in this session may predate the lock
    if request is None:
        raise NotFound(f"no export {request_id!r}")
    return request


def member_ids(session: Session, project_id: int) -> set[int]:
    return set(session.exec(select(Membership.person_id).where(Membership.project_id == project_id)).all())


# The audit events that record a change of a project's members (`registry.projects`): subject
# "project:<slug>", details {"user": <username>}.
MEMBERSHIP_ACTIONS = ("member.add", "member.remove")


def _submitted_seq(session: Session, request_id: str) -> int:
    """The sequence number of the request's submission event: where its life began on the log.
    0 if there is none (then every membership event counts, which errs on the side of refusing)."""
    seq = session.exec(select(AuditEvent.seq).where(AuditEvent.subject == f"export:{request_id}",
                                                    AuditEvent.action == "export.submit")).first()
    return seq or 0


def _event_user(details: str) -> str | None:
    try:
        user = json.loads(details).get("user")
    except (ValueError, AttributeError):
        return None
    return user if isinstance(user, str) else None


def former_member_ids(session: Session, request: ExportRequest) -> set[int]:
    """People who joined or left the request's project after it was submitted: each of them was a
    member at some time during its life (someone removed later was a member until then, someone
    added was one from then). Read from the audit log, where every change of members is an event
    in the same transaction as the change; with today's members this is everyone who was a member
    at any time since the submission."""
    project = session.get(Project, request.project_id)
    details = session.exec(select(AuditEvent.details).where(
        AuditEvent.subject == f"project:{project.slug}", AuditEvent.action.in_(MEMBERSHIP_ACTIONS),
        AuditEvent.seq > _submitted_seq(session, request.id))).all()
    names = {name for name in map(_event_user, details) if name}
    if not names:
        return set()
    return set(session.exec(select(Person.id).where(Person.username.in_(names))).all())


def not_independent(session: Session, request: ExportRequest) -> tuple[set[int], set[int]]:
    """(today's members of the request's project, those who were members at some time since it
    was submitted): neither may review it."""
    return member_ids(session, request.project_id), former_member_ids(session, request)


def standing(session: Session, request: ExportRequest, username: str | None) -> tuple[Person, Actor]:
    """The acting person and how they stand towards `request` (author or independent reviewer)."""
    if not username:
        raise Forbidden("who is acting? pass --as USER")
    person = find_person(session, username)
    if person is None:
        raise Forbidden(f"unknown user {username!r}")
    if person.id != request.author_id and not person.has_role(Role.reviewer):
        # Someone with no business here learns nothing, not even that the request exists.
        raise NotFound(f"no export {request.id!r}")
    return person, actor_for(person, request.author_id, *not_independent(session, request))


# ----- who is deciding ----------------------------------------------------------------------------

class AuthMethod(str, enum.Enum):
    """How the person deciding proved who they are. A hub API token is not one of them: a hub admin
    (and any service holding the `tokens` scope) can mint one for any user, so a bearer token
    never carries a review decision."""

    # The review UI: a browser session begun by the hub's OAuth login (cookie and CSRF token).
    hub_session = "hub_session"
    # The CLI: the reviewer's own registry password, typed or read from a file only they can read.
    password = "password"


@dataclasses.dataclass(frozen=True)
class ReviewerLogin:
    """Who is deciding and how they authenticated. Every entry point that records a decision makes
    one from what *it* checked (`password_login` for the CLI; the UI's session, `deps.WebUser.login`),
    and `decide` refuses one that names somebody else."""

    username: str
    method: AuthMethod
    via: str = ""  # where it came from, for the audit log (the CLI's operating-system user, say)


# Failed password checks for reviews (their own transaction, so the refusal does not roll them back).
LOGIN_FAILED_ACTION = "review.login_failed"


def password_login(db, username: str, password: str | None, *, request_id: str, decision: str,
                   via: str = "") -> ReviewerLogin:
    """Check that `password` is `username`'s own registry password (the one the hub's login takes),
    for a decision on `request_id`. A wrong or missing one is refused (Unauthenticated) and leaves
    an audit event of the attempt, committed on its own: an operator trying names with `--as`
    leaves a trace even though nothing was decided."""
    from enclave.registry.db import session_scope

    with session_scope(db) as session:
        ok = bool(username) and bool(password) and credentials.check_password(session, username, password)
    if ok:
        return ReviewerLogin(username, AuthMethod.password, via)
    with session_scope(db) as session:
        audit.append(session, actor=SYSTEM_ACTOR, action=LOGIN_FAILED_ACTION, subject=f"person:{username or '?'}",
                     details={"request": request_id, "decision": decision, "method": AuthMethod.password.value,
                              "via": via, "password_given": bool(password)})
    raise Unauthenticated(f"{username!r} did not authenticate: a review decision needs the reviewer's own password "
                          "(the one their hub login takes); nothing was decided")


def _login_details(session: Session, person: Person, login: ReviewerLogin) -> dict[str, Any]:
    """What the decision's audit event records about how its reviewer authenticated, including
    who last set the password they used (an operator's reset just before a decision shows here)."""
    details: dict[str, Any] = {"auth": login.method.value}
    if login.via:
        details["via"] = login.via
    credential = session.get(Credential, person.id)
    if credential is not None:
        details["password_set_by"] = credential.set_by
        details["password_set_at"] = iso(credential.set_at)
    return details


def _move(session: Session, request: ExportRequest, step: Transition, actor: str, now: dt.datetime,
          details: dict[str, Any] | None = None) -> None:
    before = request.state
    request.state = step.target.value
    request.updated_at = now
    session.add(request)
    session.flush()
    audit.append(session, actor=actor, action=f"export.{step.action}", subject=f"export:{request.id}",
                 details={"from": before, "to": step.target.value, "version": request.version, **(details or {})})


def current_files(session: Session, request: ExportRequest, version: int | None = None) -> list[ExportFile]:
    version = request.version if version is None else version
    return list(session.exec(select(ExportFile).where(ExportFile.request_id == request.id, ExportFile.version == version)
                             .order_by(ExportFile.name)).all())


def current_findings(session: Session, request: ExportRequest) -> list[ExportFinding]:
    return list(session.exec(select(ExportFinding).where(ExportFinding.request_id == request.id,
                                                         ExportFinding.version == request.version)
                             .order_by(ExportFinding.id)).all())


def _clean_text(value: str | None, what: str, limit: int, required: bool) -> str:
    text = (value or "").strip()
    if required and not text:
        raise BadInput(f"{what} is required")
    if len(text) > limit:
        raise BadInput(f"{what} is longer than {limit} characters")
    if "\x00" in text:
        raise BadInput(f"{what} contains a NUL character")
    return text


def _check_files(files: list[StagedFile], max_files: int | None) -> list[StagedFile]:
    if not files:
        raise BadInput("an export needs at least one file")
    if max_files is not None and len(files) > max_files:
        raise BadInput(f"an export may hold at most {max_files} files, not {len(files)}")
    checked = [dataclasses.replace(f, name=export_name(f.name)) for f in files]
    check_unique(f.name for f in checked)
    return checked


def _file_rows(request_id: str, version: int, files: list[StagedFile], now: dt.datetime) -> list[ExportFile]:
    return [ExportFile(request_id=request_id, version=version, name=f.name, sha256=f.sha256, size_bytes=f.size,
                       created_at=now) for f in files]


# ----- the scholar's side -------------------------------------------------------------------------

def submit(session: Session, username: str, project_slug: str | None, files: list[StagedFile], justification: str,
           context: str = "", *, max_files: int | None = None, now: dt.datetime | None = None) -> ExportRequest:
    """Record a new request for files already in the quarantine. The registry decides first: only a
    member of an approved, unexpired project may export, and only through that project."""
    now = now or utcnow()
    granted = access.resolve(session, username, project_slug, now=now)
    files = _check_files(files, max_files)
    justification = _clean_text(justification, "a justification (why these files may leave)", MAX_JUSTIFICATION_CHARS, True)
    context = _clean_text(context, "the context", MAX_JUSTIFICATION_CHARS, False)
    request = ExportRequest(
        id=new_request_id(), project_id=granted.project.id, author_id=granted.person.id,
        state=ExportState.submitted.value, version=1, justification=justification, context=context,
        total_bytes=sum(f.size for f in files), created_at=now, updated_at=now,
    )
    session.add(request)
    session.flush()
    session.add_all(_file_rows(request.id, 1, files, now))
    session.flush()
    audit.append(session, actor=username, action="export.submit", subject=f"export:{request.id}", details={
        "project": granted.project.slug, "version": 1, "bytes": request.total_bytes,
        "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
    })
    return request


def resubmit(session: Session, username: str, request_id: str, files: list[StagedFile], note: str = "", *,
             max_files: int | None = None, max_comments: int = COMMENTS_PER_PERSON, max_chars: int = COMMENT_CHARS,
             now: dt.datetime | None = None) -> ExportRequest:
    """A new version of the files after a reviewer asked for changes. Files whose bytes changed lose
    their approvals (approvals are bound to file hashes); unchanged files keep them. A note is a
    public comment, under the same caps as any other."""
    now = now or utcnow()
    request = get_request(session, request_id, lock=True)
    person, actor = standing(session, request, username)
    step = check_transition(request.id, ExportState(request.state), "resubmit", actor)
    project = session.get(Project, request.project_id)
    access.resolve(session, username, project.slug, now=now)  # still allowed to export through it?
    files = _check_files(files, max_files)
    note = _clean_text(note, "the note", max_chars, False)
    if note:
        _check_comment_count(session, request, person, max_comments)
    previous = {f.name: f.sha256 for f in current_files(session, request)}
    request.version += 1
    request.total_bytes = sum(f.size for f in files)
    request.verdict = request.approvals_needed = None
    session.add_all(_file_rows(request.id, request.version, files, now))
    if note:
        session.add(ExportComment(request_id=request.id, version=request.version, author_id=person.id,
                                  visibility=Visibility.public.value, body=note, created_at=now))
    _move(session, request, step, username, now, {
        "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
        "changed": sorted(f.name for f in files if previous.get(f.name) != f.sha256),
        "removed": sorted(set(previous) - {f.name for f in files}),
    })
    return request


def withdraw(session: Session, username: str, request_id: str, now: dt.datetime | None = None) -> ExportRequest:
    now = now or utcnow()
    request = get_request(session, request_id, lock=True)
    _, actor = standing(session, request, username)
    step = check_transition(request.id, ExportState(request.state), "withdraw", actor)
    _move(session, request, step, username, now)
    return request


def _check_comment_count(session: Session, request: ExportRequest, person: Person, max_comments: int) -> None:
    written = len(session.exec(select(ExportComment.id).where(ExportComment.request_id == request.id,
                                                              ExportComment.author_id == person.id)).all())
    if written >= max_comments:
        raise Conflict(f"you have written {written} comments on export {request.id}, the most one person may "
                       f"({max_comments} comments); say the rest in a new export's justification")


def comment(session: Session, username: str, request_id: str, body: str, visibility: str = "public",
            now: dt.datetime | None = None, *, max_comments: int = COMMENTS_PER_PERSON,
            max_chars: int = COMMENT_CHARS) -> ExportComment:
    """Reviewers write public comments (the author sees them) or private ones (reviewers only);
    authors write public ones.

    Comments are capped (so many per person and request, so many characters each) and closed
    requests (withdrawn, rejected, released) take none: the author reads comments back from
    outside the enclave, so without caps they would be a channel out around review."""
    now = now or utcnow()
    request = get_request(session, request_id, lock=True)
    person, actor = standing(session, request, username)
    try:
        vis = Visibility(visibility)
    except ValueError:
        raise BadInput(f"visibility must be public or private, not {visibility!r}") from None
    if vis is Visibility.private and actor is not Actor.reviewer:
        raise Forbidden("only reviewers write private comments")
    if ExportState(request.state) in TERMINAL:
        raise InvalidTransition(f"cannot comment on export {request.id}: it is {request.state}, which is final")
    body = _clean_text(body, "a comment", min(max_chars, MAX_COMMENT_CHARS), True)
    _check_comment_count(session, request, person, max_comments)
    row = ExportComment(request_id=request.id, version=request.version, author_id=person.id, visibility=vis.value,
                        body=body, created_at=now)
    session.add(row)
    session.flush()
    audit.append(session, actor=username, action="export.comment", subject=f"export:{request.id}", details={
        "visibility": vis.value, "version": request.version,
        "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
    })
    return row


# ----- the checks ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckJob:
    request_id: str
    version: int
    project_slug: str
    project_id: int
    files: list[tuple[str, str]]  # (name, sha256)


def start_check(session: Session, request_id: str, now: dt.datetime | None = None) -> CheckJob | None:
    """Move a request into checking; None if it no longer needs checks (withdrawn meanwhile)."""
    now = now or utcnow()
    request = get_request(session, request_id, lock=True)
    if request.state not in (ExportState.submitted.value, ExportState.checking.value):
        return None
    step = check_transition(request.id, ExportState(request.state), "check", Actor.system)
    _move(session, request, step, SYSTEM_ACTOR, now)
    project = session.get(Project, request.project_id)
    return CheckJob(request.id, request.version, project.slug, project.id,
                    [(f.name, f.sha256) for f in current_files(session, request)])


def record_checks(session: Session, job: CheckJob, findings: Iterable[Finding], verdict: str,
                  policy_version: str | None, policy_sha256: str | None, always_two: bool,
                  now: dt.datetime | None = None) -> ExportRequest | None:
    """Store the findings of `job` and hand the request to reviewers. A stale job (the request was
    withdrawn or resubmitted while the checks ran) records nothing."""
    now = now or utcnow()
    request = get_request(session, job.request_id, lock=True)
    if request.state != ExportState.checking.value or request.version != job.version:
        return None
    findings = list(findings)
    for f in findings:
        session.add(ExportFinding(
            request_id=request.id, version=request.version, check=f.check[:64], severity=Severity(f.severity).value,
            file=f.file, location=f.location, message=f.message, evidence=_evidence_json(f.evidence)))
    request.verdict = verdict
    request.approvals_needed = approvals_needed({Severity(f.severity).value for f in findings}, always_two)
    request.policy_version, request.policy_sha256 = policy_version, policy_sha256
    step = check_transition(request.id, ExportState.checking, "checked", Actor.system)
    _move(session, request, step, SYSTEM_ACTOR, now, {
        "verdict": verdict, "findings": dict(sorted(Counter(Severity(f.severity).value for f in findings).items())),
        "approvals_needed": request.approvals_needed, "policy_version": policy_version, "policy_sha256": policy_sha256,
    })
    return request


def _evidence_json(evidence: Any) -> str:
    try:
        return json.dumps(evidence or {}, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps({"unserialisable": repr(evidence)[:1000]})


def approved_unreleased(session: Session) -> list[str]:
    """Approved requests whose release never happened (the service stopped in between)."""
    return list(session.exec(select(ExportRequest.id).where(ExportRequest.state == ExportState.approved.value)
                             .order_by(ExportRequest.updated_at)).all())


def pending_checks(session: Session) -> list[str]:
    """Requests whose checks have not finished (a restart re-queues them)."""
    return list(session.exec(select(ExportRequest.id).where(
        ExportRequest.state.in_([ExportState.submitted.value, ExportState.checking.value]))
        .order_by(ExportRequest.created_at)).all())


# ----- reviewers ----------------------------------------------------------------------------------

def approvers(session: Session, request: ExportRequest) -> list[str]:
    """Reviewers whose approvals cover every current file, in the order they completed them.

    An approval counts for a file only while the file has the bytes that were approved (a changed
    file resets its reviews), only if the same reviewer has not since asked for changes or
    rejected (their latest word counts), and only while its reviewer is independent: one who has
    joined the project since (or was a member at any time since the submission) no longer counts.
    """
    files = {(f.name, f.sha256) for f in current_files(session, request)}
    current, former = not_independent(session, request)
    rows = session.exec(select(ExportReview).where(ExportReview.request_id == request.id).order_by(ExportReview.id)).all()
    covered: dict[int, set[tuple[str, str]]] = {}
    completed: dict[int, int] = {}
    for row in rows:
        if row.decision == Decision.approve.value:
            covered.setdefault(row.reviewer_id, set()).add((row.file_name, row.file_sha256))
            if files <= covered[row.reviewer_id] and row.reviewer_id not in completed:
                completed[row.reviewer_id] = row.id
        else:
            covered.pop(row.reviewer_id, None)
            completed.pop(row.reviewer_id, None)
    for reviewer_id in current | former:
        completed.pop(reviewer_id, None)
    names = {p.id: p.username for p in session.exec(select(Person).where(Person.id.in_(list(completed)))).all()} if completed else {}
    return [names[pid] for pid, _ in sorted(completed.items(), key=lambda kv: kv[1])]


@dataclasses.dataclass(frozen=True)
class DecisionResult:
    request: ExportRequest
    approvals: list[str]
    needed: int

    @property
    def approved(self) -> bool:
        return self.request.state == ExportState.approved.value


def check_seen(request: ExportRequest, files: list[ExportFile], seen: Collection[str],
               seen_version: int | None = None) -> None:
    """A decision binds to what the reviewer was shown: `seen` is the sha256 of every file of the
    version they opened (the page's decision form carries them, the API's body and the CLI's
    --seen name them), `seen_version` that version's number where known (the page carries it).
    Both are compared with the request's current files inside the decision's transaction, under
    the request's row lock, so a resubmission cannot slip in between. There is no way around it:
    every caller, in-process ones too, says what it decides on."""
    given = sorted(str(sha).strip().lower() for sha in seen if str(sha).strip())
    if not given:
        raise BadInput(f"say which files you reviewed: the sha256 of every file of export {request.id} "
                       "as you were shown it (enclave review show prints them)")
    if seen_version is not None and seen_version != request.version:
        raise Conflict(f"the files changed since you opened this request (version {seen_version} -> "
                       f"{request.version}): reload and review the new files")
    if given != sorted(f.sha256 for f in files):
        raise Conflict(f"the files you reviewed are not those of version {request.version} of export {request.id}: "
                       "reload and review the new files")


def decide(session: Session, username: str, request_id: str, decision: str, reason: str = "",
           now: dt.datetime | None = None, *, seen: Collection[str], login: ReviewerLogin,
           seen_version: int | None = None) -> DecisionResult:
    """A reviewer's decision. Approvals accumulate until the two-person rule is met; the last one
    moves the request to approved (release follows, see `release_request`).

    `login` says how `username` proved who they are (see `ReviewerLogin`): it must be theirs, so
    the two approvals of the two-person rule come from two people who each authenticated, never
    from one operator naming two reviewers. `seen` (and `seen_version`) say what the reviewer was
    shown, see `check_seen`: every entry point a person uses (the page, the CLI) passes them, and
    a decision on files that changed since is refused before anything is recorded."""
    now = now or utcnow()
    if not isinstance(login, ReviewerLogin) or not isinstance(login.method, AuthMethod):
        raise Unauthenticated("a review decision needs the reviewer's own login")
    if login.username != username:
        raise Forbidden(f"{login.username!r} authenticated, not {username!r}: a reviewer decides only as themselves")
    request = get_request(session, request_id, lock=True)
    person, actor = standing(session, request, username)
    how = _login_details(session, person, login)
    try:
        choice = Decision(decision)
    except ValueError:
        raise BadInput(f"decision must be approve, request_changes or reject, not {decision!r}") from None
    reason = _clean_text(reason, "the reason", MAX_COMMENT_CHARS, False)
    needed = request.approvals_needed or 1
    current = ExportState(request.state)
    files = current_files(session, request)
    if choice is Decision.approve:
        before = approvers(session, request)
        # Check who/when first, so an author or a late reviewer hears the real reason.
        check_transition(request.id, current, "approve", actor)
        check_seen(request, files, seen, seen_version)
        already = session.exec(select(ExportReview.id).where(
            ExportReview.request_id == request.id, ExportReview.version == request.version,
            ExportReview.reviewer_id == person.id, ExportReview.decision == Decision.approve.value)).first()
        if already is not None:
            raise Conflict(f"you have already approved version {request.version} of export {request.id}; "
                           "the next approval must come from another reviewer")
        if not reason and any(f.severity == Severity.block.value for f in current_findings(session, request)):
            raise BadInput("this export has blocking findings: give a reason why it may leave anyway")
        # A reviewer whose approval of unchanged files carried over from an earlier version may
        # confirm it on this one; they still count once.
        after = before if username in before else [*before, username]
        step = check_transition(request.id, current, "approve" if len(after) >= needed else "add_approval", actor)
        session.add_all([
            ExportReview(request_id=request.id, version=request.version, reviewer_id=person.id,
                         decision=choice.value, reason=reason, file_name=f.name, file_sha256=f.sha256, created_at=now)
            for f in files])
        _move(session, request, step, username, now, {"reason": reason, "approvals": after, "needed": needed, **how})
        return DecisionResult(request, after, needed)
    step = check_transition(request.id, current, choice.value, actor)
    check_seen(request, files, seen, seen_version)
    if step.needs_reason and not reason:
        raise BadInput(f"{choice.value.replace('_', ' ')} needs a reason the author will read")
    session.add(ExportReview(request_id=request.id, version=request.version, reviewer_id=person.id,
                             decision=choice.value, reason=reason, created_at=now))
    _move(session, request, step, username, now, {"reason": reason, **how})
    return DecisionResult(request, approvers(session, request), needed)


# ----- release ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReleasePlan:
    request_id: str
    version: int
    project_slug: str
    files: list[tuple[str, str, int]]  # (name, sha256, size)
    manifest: dict[str, Any]


def plan_release(session: Session, request_id: str, actor: str, actor_kind: Actor, policy_file_sha256: str | None = None,
                 now: dt.datetime | None = None) -> ReleasePlan:
    """Check that `actor` may release the request now and assemble its manifest."""
    from enclave.review.release import FORMAT

    now = now or utcnow()
    request = get_request(session, request_id)
    if actor_kind is not Actor.system:
        _, actor_kind = standing(session, request, actor)
    check_transition(request.id, ExportState(request.state), "release", actor_kind)
    project = session.get(Project, request.project_id)
    author = session.get(Person, request.author_id)
    files = current_files(session, request)
    people = {p.id: p.username for p in session.exec(select(Person)).all()}
    decisions = review_history(session, request, people)
    approved_by = approvers(session, request)
    if len(approved_by) < (request.approvals_needed or 1):
        # An approver joined the export's project between the approval and its release.
        raise Conflict(f"export {request.id} no longer has the {request.approvals_needed or 1} independent "
                       f"approval(s) it needs (it has {len(approved_by)}): it is not released")
    approval_notes = [d["reason"] for d in decisions if d["decision"] == "approve" and d["reason"]
                      and d["reviewer"] in approved_by]
    findings = [{
        "check": f.check, "severity": f.severity, "file": f.file, "location": f.location, "message": f.message,
        "resolution": {"outcome": "released after review", "approved_by": approved_by, "notes": approval_notes},
    } for f in current_findings(session, request)]
    approved_at = max((d["at"] for d in decisions if d["decision"] == "approve"), default=None)
    manifest = {
        "format": FORMAT,
        "request": request.id,
        "project": project.slug,
        "version": request.version,
        "author": author.username,
        "submitted_at": iso(request.created_at),
        "justification": request.justification,
        "context": request.context,
        "files": [{"name": f.name, "sha256": f.sha256, "size": f.size_bytes} for f in files],
        "verdict": request.verdict,
        "findings": findings,
        "policy": {"version": request.policy_version, "sha256": request.policy_sha256},
        "reviews": decisions,
        "approvals_needed": request.approvals_needed,
        "approved_by": approved_by,
        "approved_at": approved_at,
        "released_by": actor,
        "released_at": iso(now),
    }
    return ReleasePlan(request.id, request.version, project.slug,
                       [(f.name, f.sha256, f.size_bytes) for f in files], manifest)


def record_release(session: Session, plan: ReleasePlan, path: str, manifest_sha256: str, key_id: str, actor: str,
                   actor_kind: Actor, now: dt.datetime | None = None) -> ExportRequest:
    now = now or utcnow()
    request = get_request(session, plan.request_id, lock=True)
    if request.version != plan.version:
        raise Conflict(f"export {request.id} changed while it was being released")
    step = check_transition(request.id, ExportState(request.state), "release", actor_kind)
    session.add(ExportRelease(request_id=request.id, version=request.version, path=path,
                              manifest_sha256=manifest_sha256, key_id=key_id, released_by=actor, released_at=now))
    _move(session, request, step, actor, now, {"path": path, "manifest_sha256": manifest_sha256, "key_id": key_id,
                                               "files": len(plan.files)})
    return request


def review_history(session: Session, request: ExportRequest, people: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Every decision on the request, one entry per decision (an approval's per-file rows folded)."""
    rows = session.exec(select(ExportReview).where(ExportReview.request_id == request.id).order_by(ExportReview.id)).all()
    if people is None:
        ids = list({r.reviewer_id for r in rows})
        people = {p.id: p.username for p in session.exec(select(Person).where(Person.id.in_(ids))).all()} if ids else {}
    history: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for row in rows:
        key = (row.reviewer_id, row.version, row.decision, row.created_at)
        if key in seen:
            continue
        seen.add(key)
        history.append({"reviewer": people.get(row.reviewer_id, "?"), "decision": row.decision, "reason": row.reason,
                        "version": row.version, "at": iso(row.created_at)})
    return history


def released_files(session: Session, project_id: int) -> list[tuple[str, str, int]]:
    """(name, sha256, size) of every file the project has released, oldest first: the checks
    difference new tables against them and count them against the grant's export allowance."""
    rows = session.exec(
        select(ExportFile.name, ExportFile.sha256, ExportFile.size_bytes)
        .join(ExportRelease, (ExportRelease.request_id == ExportFile.request_id) & (ExportRelease.version == ExportFile.version))
        .join(ExportRequest, ExportRequest.id == ExportFile.request_id)
        .where(ExportRequest.project_id == project_id)
        .order_by(ExportRelease.released_at, ExportFile.name)
    ).all()
    return [(name, sha, size) for name, sha, size in rows]


# ----- the quarantine's orphans --------------------------------------------------------------------

# How many removed blobs the collection's audit event names one by one (the rest are counted).
ORPHANS_NAMED = 1000


@dataclasses.dataclass(frozen=True)
class Collected:
    removed: list[Orphan]
    tmp_removed: int
    dry_run: bool

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {"removed": [{"sha256": o.sha256, "size": o.size} for o in self.removed], "bytes": self.bytes,
                "tmp_removed": self.tmp_removed, "dry_run": self.dry_run}


def collect_orphans(db, quarantine: Quarantine, grace_s: float, actor: str = SYSTEM_ACTOR, *,
                    dry_run: bool = False, now: float | None = None) -> Collected:
    """Remove the quarantine's blobs that no export references (any version, any state: a
    released or rejected export keeps its bytes) and that nobody stored in the last `grace_s`
    seconds, and temporary files as old; record what went in one audit event. The references are
    read in the same transaction as the event is written; the grace period covers an upload whose
    blobs are stored and whose export is being recorded meanwhile."""
    from enclave.registry.db import session_scope

    with session_scope(db) as session:
        referenced = set(session.exec(select(ExportFile.sha256).distinct()).all())
        found = quarantine.orphans(referenced, grace_s, now)
        if dry_run:
            return Collected(found, 0, True)
        removed = quarantine.remove(found, grace_s, now)
        tmp_removed = quarantine.sweep_tmp(older_than_s=grace_s, now=now)
        if removed or tmp_removed:
            audit.append(session, actor=actor, action="quarantine.collect", subject="quarantine", details={
                "removed": len(removed), "bytes": sum(o.size for o in removed), "tmp_removed": tmp_removed,
                "grace_s": int(grace_s), "sha256": [o.sha256 for o in removed[:ORPHANS_NAMED]],
            })
        return Collected(removed, tmp_removed, False)


# ----- reading ------------------------------------------------------------------------------------

@dataclasses.dataclass
class RequestView:
    """One request as a particular person may see it."""

    request: ExportRequest
    viewer: Person
    stance: Actor
    project_slug: str
    author: str
    files: list[ExportFile]
    previous_files: list[ExportFile]
    findings: list[ExportFinding]
    comments: list[tuple[ExportComment, str]]  # (comment, author name)
    decisions: list[dict[str, Any]]
    approvals: list[str]
    release: ExportRelease | None

    @property
    def is_reviewer(self) -> bool:
        return self.stance is Actor.reviewer

    @property
    def state(self) -> ExportState:
        return ExportState(self.request.state)

    def can(self, action: str) -> bool:
        try:
            check_transition(self.request.id, self.state, action, self.stance)
        except UserError:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The API's view. Authors see check names and places, never messages or evidence (a
        message may quote a protected record); reviewers see everything."""
        r = self.request
        data: dict[str, Any] = {
            "id": r.id, "project": self.project_slug, "author": self.author, "state": r.state, "version": r.version,
            "justification": r.justification, "context": r.context, "bytes": r.total_bytes,
            "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
            "verdict": r.verdict, "approvals_needed": r.approvals_needed, "approvals": len(self.approvals),
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size_bytes} for f in self.files],
            "comments": [{"author": name, "visibility": c.visibility, "body": c.body, "version": c.version,
                          "at": iso(c.created_at)} for c, name in self.comments],
            "decisions": self.decisions,
            "release": {"manifest_sha256": self.release.manifest_sha256, "key_id": self.release.key_id,
                        "released_at": iso(self.release.released_at)} if self.release else None,
        }
        if self.is_reviewer:
            data["approved_by"] = self.approvals
            data["findings"] = [{"id": f.id, "check": f.check, "severity": f.severity, "file": f.file,
                                 "location": f.location, "message": f.message, "evidence": json.loads(f.evidence)}
                                for f in self.findings]
        else:
            data["findings"] = [{"check": f.check, "severity": f.severity, "file": f.file, "location": f.location}
                                for f in self.findings]
        return data


def view(session: Session, username: str, request_id: str) -> RequestView:
    """The request as `username` may see it. Anyone who is neither its author nor an independent
    reviewer gets NotFound, exactly as for an id that does not exist, so ids reveal nothing."""
    request = get_request(session, request_id)
    person = find_person(session, username) if username else None
    if person is None:
        raise NotFound(f"no export {request_id!r}")
    try:
        stance = actor_for(person, request.author_id, *not_independent(session, request))
    except Forbidden:
        raise NotFound(f"no export {request_id!r}") from None
    project = session.get(Project, request.project_id)
    people = {p.id: p.username for p in session.exec(select(Person)).all()}
    query = select(ExportComment).where(ExportComment.request_id == request.id)
    if stance is not Actor.reviewer:
        query = query.where(ExportComment.visibility == Visibility.public.value)
    comments = [(c, people.get(c.author_id, "?")) for c in session.exec(query.order_by(ExportComment.id)).all()]
    return RequestView(
        request=request, viewer=person, stance=stance, project_slug=project.slug, author=people[request.author_id],
        files=current_files(session, request),
        previous_files=current_files(session, request, request.version - 1) if request.version > 1 else [],
        findings=current_findings(session, request), comments=comments, decisions=review_history(session, request, people),
        approvals=approvers(session, request), release=session.get(ExportRelease, request.id),
    )


@dataclasses.dataclass(frozen=True)
class Summary:
    id: str
    project: str
    author: str
    state: str
    version: int
    files: int
    bytes: int
    verdict: str | None
    approvals_needed: int | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["created_at"], d["updated_at"] = iso(self.created_at), iso(self.updated_at)
        return d


def _summaries(session: Session, requests: list[ExportRequest]) -> list[Summary]:
    if not requests:
        return []
    projects = {p.id: p.slug for p in session.exec(select(Project)).all()}
    people = {p.id: p.username for p in session.exec(select(Person)).all()}
    counts = Counter()
    for r in requests:
        counts[r.id] = len(current_files(session, r))
    return [Summary(r.id, projects.get(r.project_id, "?"), people.get(r.author_id, "?"), r.state, r.version,
                    counts[r.id], r.total_bytes, r.verdict, r.approvals_needed, r.created_at, r.updated_at)
            for r in requests]


def list_own(session: Session, username: str) -> list[Summary]:
    person = find_person(session, username)
    if person is None:
        return []
    rows = session.exec(select(ExportRequest).where(ExportRequest.author_id == person.id)
                        .order_by(ExportRequest.created_at.desc())).all()
    return _summaries(session, list(rows))


def _last_membership_change(session: Session, username: str) -> dict[str, int]:
    """Project slug -> the sequence number of the latest event that added `username` to it or
    removed them from it."""
    rows = session.exec(select(AuditEvent.subject, AuditEvent.seq, AuditEvent.details)
                        .where(AuditEvent.action.in_(MEMBERSHIP_ACTIONS))).all()
    latest: dict[str, int] = {}
    for subject, seq, details in rows:
        if subject.startswith("project:") and _event_user(details) == username:
            slug = subject[len("project:"):]
            latest[slug] = max(seq, latest.get(slug, 0))
    return latest


def _submitted_seqs(session: Session, request_ids: list[str]) -> dict[str, int]:
    if not request_ids:
        return {}
    rows = session.exec(select(AuditEvent.subject, AuditEvent.seq).where(
        AuditEvent.action == "export.submit", AuditEvent.subject.in_([f"export:{r}" for r in request_ids]))).all()
    return {subject[len("export:"):]: seq for subject, seq in rows}


def review_queue(session: Session, username: str, states: list[str] | None = None) -> list[Summary]:
    """Requests this reviewer may review: never their own, never those of a project they belong
    to or belonged to at any time since the request was submitted. Default: those waiting for a
    decision, oldest first."""
    person = find_person(session, username) if username else None
    if person is None or not person.has_role(Role.reviewer):
        raise Forbidden(f"{username!r} does not hold the reviewer role")
    wanted = states or [ExportState.awaiting_review.value]
    bad = [s for s in wanted if s not in {e.value for e in ExportState}]
    if bad:
        raise BadInput(f"unknown state {bad[0]!r}: choose from {', '.join(e.value for e in ExportState)}")
    own_projects = set(session.exec(select(Membership.project_id).where(Membership.person_id == person.id)).all())
    rows = session.exec(select(ExportRequest).where(ExportRequest.state.in_(wanted))
                        .order_by(ExportRequest.created_at)).all()
    mine = [r for r in rows if r.author_id != person.id and r.project_id not in own_projects]
    changes = _last_membership_change(session, person.username)
    if changes and mine:
        slugs = {p.id: p.slug for p in session.exec(select(Project)).all()}
        submitted = _submitted_seqs(session, [r.id for r in mine])
        mine = [r for r in mine if changes.get(slugs.get(r.project_id, ""), 0) <= submitted.get(r.id, 0)]
    return _summaries(session, mine)


def release_request(db, quarantine, key, release_dir, request_id: str, actor: str = SYSTEM_ACTOR,
                    actor_kind: Actor = Actor.system) -> ExportRequest:
    """Copy an approved request's files to the release store with a signed manifest, then record
    the release. The one operation that spans two transactions, because the copy must not hold the
    registry: (1) check and plan, (2) build the directory off to the side and rename it into place,
    (3) record it with its audit event. If (3) fails, the directory is removed again, so the store
    never holds a release the registry does not know about (and a retry starts clean)."""
    from enclave.registry.db import session_scope
    from enclave.review import release

    with session_scope(db) as session:
        plan = plan_release(session, request_id, actor, actor_kind)
    envelope = release.sign(plan.manifest, key)
    path = release.write_release(
        release_dir, plan.project_slug, plan.request_id,
        [release.ReleasedFile(name, sha, size) for name, sha, size in plan.files], quarantine, envelope, key)
    manifest_sha256 = hashlib.sha256((path / release.MANIFEST_NAME).read_bytes()).hexdigest()
    try:
        with session_scope(db) as session:
            if actor_kind is not Actor.system:
                _, actor_kind = standing(session, get_request(session, request_id), actor)
            return record_release(session, plan, str(path), manifest_sha256, envelope["signature"]["key_id"], actor,
                                  actor_kind)
    except BaseException:
        release.remove_release(path)
        raise
