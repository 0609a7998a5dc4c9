"""The reviewer web UI: server-rendered pages for browsers, logged in through the hub's OAuth.

Exports are attacker-controlled, so every value is escaped (Jinja2, autoescape on), responses carry
a strict Content-Security-Policy (no scripts at all), and every form carries a CSRF token. Only
reviewers see the files' contents; authors see names, sizes and hashes.

A reviewer sees each file whole: the request page shows the first page of each, and a file's own
page (`/requests/{id}/files/{n}`) pages through all of it (tables 500 rows at a time) and through
everything inside it as the checks found it (archive members, container parts such as a zip's
comment or the data after a PNG's end), with the bytes no check reads as a hex and text dump.
Every view of a file's contents is on the audit log ("export.file_viewed": the file, its SHA-256
and the page), so a decision can be traced to what its reviewer looked at.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from enclave.errors import Forbidden, NotFound
from enclave.registry import audit, sessions
from enclave.registry.clock import iso
from enclave.registry.models import ExportState, Grant, Person, Project, Role
from enclave.registry.sizes import human_size
from enclave.review import render, service
from enclave.review.deps import BrowserUser, FormUser, State, WebUser, form_user, review_state
from enclave.review.scan import DEFAULT_POLICY, ExportFile as ScanFile, Inspection, inspect, load_policy
from enclave.review.scan.coverage import CHECKED, HUMAN, INSIDE, UNEXAMINED
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item
from enclave.review.workflow import TERMINAL
from enclave.web.oauth_pages import login_router

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = "/static/review.css"
RECENT_ON_HOME = 100
FILE_VIEWED = "export.file_viewed"
# Pictures a browser shows without running anything (SVG can carry script: it is shown as text).
INLINE_IMAGES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif"}
RAW_CSP = "default-src 'none'; sandbox"
HOW_WORDS = {CHECKED: "read by the checks", INSIDE: "opened (see the items inside)", HUMAN: "for human eyes",
             UNEXAMINED: "unexamined"}

router = APIRouter(include_in_schema=False)


def load_templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    env.filters["when"] = lambda value: (iso(value) or "")[:19].replace("T", " ") + " UTC" if isinstance(value, dt.datetime) else (value or "")
    return env


def _back(prefix: str, request_id: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{prefix}/requests/{request_id}?done={quote(done)}", status_code=303)


@router.get("/", response_class=HTMLResponse)
def home(state: State, user: BrowserUser) -> HTMLResponse:
    is_reviewer = Role.reviewer.value in user.roles

    def work(s):
        own = service.list_own(s, user.username)
        if not is_reviewer:
            return [], [], own
        queue = service.review_queue(s, user.username)
        others = service.review_queue(s, user.username, [e.value for e in ExportState
                                                         if e is not ExportState.awaiting_review])
        # The most recent decisions and releases, for context; the queue is what needs work.
        return queue, sorted(others, key=lambda r: r.updated_at, reverse=True)[:RECENT_ON_HOME], own

    queue, others, own = state.transaction(work)
    return state.page("home.html", user, queue=queue, others=others, own=own, is_reviewer=is_reviewer,
                      is_scholar=Role.scholar.value in user.roles)


def _record_views(session, user: WebUser, request_id: str, viewed: list[dict]) -> None:
    """One audit event per file whose contents a reviewer was shown (file, SHA-256, page, and the
    item inside it when that is not the file itself)."""
    for details in viewed:
        audit.append(session, actor=user.username, action=FILE_VIEWED, subject=f"export:{request_id}", details=details)


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request_id: str, request: Request, state: State, user: BrowserUser) -> HTMLResponse:
    def work(s):
        shown = service.view(s, user.username, request_id)
        egress = None
        if shown.is_reviewer:  # the page shows the first page of every file
            _record_views(s, user, request_id, [{"file": f.name, "sha256": f.sha256, "page": 1, "view": "request page"}
                                                for f in shown.files])
            egress = _browser_egress(s, shown.request)
        return shown, egress

    shown, egress = state.transaction(work)
    previews, diffs = {}, []
    if shown.is_reviewer:
        current = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.files}
        previews = {name: render.preview(name, data, shown.findings) for name, (_, data) in current.items()}
        if shown.previous_files:
            previous = {f.name: (f.sha256, state.quarantine.read(f.sha256)) for f in shown.previous_files}
            diffs = render.diff_files(previous, current)
    return state.page("request.html", user, v=shown, r=shown.request, previews=previews, diffs=diffs, egress=egress,
                      flash=request.query_params.get("done", "")[:200],
                      comments_open=shown.state not in TERMINAL, max_comment_chars=state.settings.max_comment_chars)


def _browser_egress(session, request) -> dict:
    """What else left the author's notebooks for this project: their sessions' bytes sent towards
    browsers (counted on the host), and the project's total today against its budget."""
    project, author = session.get(Project, request.project_id), session.get(Person, request.author_id)
    grant = session.get(Grant, project.id)
    records = sessions.list_sessions(session, project=project.slug, username=author.username, limit=10)
    return {"sessions": [sessions.session_json(session, r) for r in records],
            "today": human_size(sessions.egress_spent(session, project.id)),
            "budget": human_size(grant.view_bytes_per_day) if grant else None}


@dataclasses.dataclass(frozen=True)
class ItemRow:
    """One line of a file page's list of what is inside the file."""

    index: int
    name: str  # relative to the file ("" for the file itself)
    kind: str
    size: int
    hows: list[str]  # words for where its bytes went

    @property
    def attention(self) -> bool:
        return HOW_WORDS[UNEXAMINED] in self.hows or HOW_WORDS[HUMAN] in self.hows


def _reviewer_file(state, user: WebUser, request_id: str, number: int):
    """(view, file row) of the `number`th file (from 1) of a request, for a reviewer only."""
    shown = state.transaction(lambda s: service.view(s, user.username, request_id))
    if not shown.is_reviewer:
        raise Forbidden("only reviewers see the contents of exported files")
    if not 1 <= number <= len(shown.files):
        raise NotFound(f"export {request_id} has no file number {number}")
    return shown, shown.files[number - 1]


def _inspect(state, name: str, data: bytes) -> Inspection:
    # The policy in force now decides what is left to human eyes (the scan used the one of its time).
    return inspect(ScanFile(name, data), load_policy(state.settings.policy_file or DEFAULT_POLICY))


def _item(inspection: Inspection, index: int) -> Item:
    if not 0 <= index < len(inspection.items):
        raise NotFound(f"this file has no item number {index}")
    return inspection.items[index]


def _item_preview(item: Item, findings, page: int, dump: bool, raw_url: str) -> render.Preview:
    if item.unread:
        return render.Preview(kind="empty", note=f"{item.size:,} bytes, over the size limit: not read, not shown")
    fmt = item.sniffed.format
    if item.kind is Kind.image and fmt in INLINE_IMAGES and not dump:
        return render.Preview(kind="image", note=f"an image ({fmt}); its bytes as a dump: add dump=1", html=raw_url)
    binary = not item.is_textual or item.kind in (Kind.archive, Kind.pdf, Kind.tensor, Kind.binary)
    return render.preview(item.name, item.data, findings, page, dump=dump or binary)


@router.get("/requests/{request_id}/files/{number}", response_class=HTMLResponse)
def file_page(request_id: str, number: int, state: State, user: BrowserUser, item: int = 0, page: int = 1,
              dump: int = 0) -> HTMLResponse:
    shown, exported = _reviewer_file(state, user, request_id, number)
    inspection = _inspect(state, exported.name, state.quarantine.read(exported.sha256))
    chosen = _item(inspection, item)
    raw_url = f"{state.settings.prefix}/requests/{request_id}/files/{number}/raw?item={item}"
    preview = _item_preview(chosen, shown.findings, page, bool(dump), raw_url)
    shown_page = preview.paging.page if preview.paging else 1
    details = {"file": exported.name, "sha256": exported.sha256, "page": shown_page, "view": "file page"}
    if item:
        details["item"] = chosen.name
    if preview.kind == "dump":
        details["dump"] = True
    state.transaction(lambda s: _record_views(s, user, request_id, [details]))
    rows = [ItemRow(k, it.name[len(exported.name) + 1:], f"{it.kind.value} ({it.sniffed.format})" if not it.unread
                    else "not read", it.size, [HOW_WORDS[h] for h in sorted(inspection.hows.get(it.name, ()))])
            for k, it in enumerate(inspection.items)]
    findings = [f for f in shown.findings if f.file == exported.name or f.file.startswith(exported.name + "!")]
    return state.page("file.html", user, v=shown, r=shown.request, f=exported, number=number, item=chosen,
                      index=item, items=rows, coverage=inspection.coverage, preview=preview, findings=findings,
                      dump=bool(dump), raw_url=raw_url)


def _download_name(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1].rsplit("!", 1)[-1]).strip("._")
    return (base or "file")[:100]


@router.get("/requests/{request_id}/files/{number}/raw")
def file_raw(request_id: str, number: int, state: State, user: BrowserUser, item: int = 0) -> Response:
    """A file's (or an item's) bytes for a reviewer: pictures a browser shows without running
    anything inline, everything else as a download. Sandboxed either way, never sniffed."""
    _, exported = _reviewer_file(state, user, request_id, number)
    inspection = _inspect(state, exported.name, state.quarantine.read(exported.sha256))
    chosen = _item(inspection, item)
    details = {"file": exported.name, "sha256": exported.sha256, "page": "raw", "view": "raw bytes"}
    if item:
        details["item"] = chosen.name
    state.transaction(lambda s: _record_views(s, user, request_id, [details]))
    headers = {"Content-Security-Policy": RAW_CSP, "Cache-Control": "no-store"}
    media = INLINE_IMAGES.get(chosen.sniffed.format) if chosen.kind is Kind.image else None
    if media is None:
        media = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{_download_name(chosen.name)}"'
    return Response(chosen.data, media_type=media, headers=headers)


@router.post("/requests/{request_id}/decision")
def decision_form(request_id: str, state: State, user: FormUser, decision: str = Form(""),
                  reason: str = Form(""), seen: list[str] = Form([]), version: str = Form("")) -> Response:
    # The form carries the sha256 of each file the page showed and the version it showed: a page
    # opened before a resubmission cannot approve files its reviewer never saw.
    shown = int(version) if version.isdigit() else None
    result = state.transaction(lambda s: service.decide(s, user.username, request_id, decision, reason,
                                                        seen=seen, seen_version=shown, login=user.login))
    if result.approved:
        state.release_if_approved(request_id)
    done = {"approve": f"approval recorded ({len(result.approvals)} of {result.needed})",
            "request_changes": "changes requested", "reject": "rejected"}.get(decision, "recorded")
    return _back(state.settings.prefix, request_id, done)


@router.post("/requests/{request_id}/comments")
def comment_form(request_id: str, state: State, user: FormUser, body: str = Form(""),
                 visibility: str = Form("public")) -> Response:
    state.transaction(lambda s: service.comment(s, user.username, request_id, body, visibility,
                                                max_comments=state.settings.max_comments,
                                                max_chars=state.settings.max_comment_chars))
    return _back(state.settings.prefix, request_id, "comment added")


@router.post("/requests/{request_id}/withdraw")
def withdraw_form(request_id: str, state: State, user: FormUser) -> Response:
    state.transaction(lambda s: service.withdraw(s, user.username, request_id))
    return _back(state.settings.prefix, request_id, "withdrawn")


router.include_router(login_router(review_state, form_user, service="review service",
                                   logged_out="You are logged out of the review service."))


@router.get(STYLESHEET)
async def stylesheet() -> Response:
    return Response((TEMPLATES / "review.css").read_text(), media_type="text/css",
                    headers={"Cache-Control": "max-age=3600"})
