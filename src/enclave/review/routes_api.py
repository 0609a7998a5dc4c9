"""The review service's JSON API, for notebooks (`enclave.client`) and tools, authenticated by a
hub token in the Authorization header.

Submission: authenticate and ask the registry *before* reading the body, take a place in the
bounded check queue (503 with Retry-After when it is full), stream the multipart body under the
size caps into the quarantine, then record request + files + audit event in one transaction and
answer at once with the id; the background worker runs the checks. There is no route that returns
a quarantined file's bytes: files leave only through release. A submission from a notebook session
(its token, or its container's address) is filed under that session's project and no other.

No review decision is taken here. A hub token proves less than it seems: a hub admin, or a service
with the `tokens` scope, can mint one for any user. Decisions come from the review pages (the
hub's OAuth login, a session cookie and a CSRF token) or from `enclave review` with the reviewer's
own password; the decision route only says so.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from enclave.errors import Forbidden
from enclave.registry import access
from enclave.registry.models import ExportState, Project
from enclave.review import service
from enclave.review.deps import ApiCaller, State, registered
from enclave.review.release import key_id, public_pem
from enclave.review.uploads import read_upload
from enclave.review.workflow import check_transition
from enclave.web.hub_auth import bearer_token
from enclave.web.session_binding import session_project

router = APIRouter()


class CommentBody(BaseModel):
    body: str = Field(min_length=1, max_length=service.MAX_COMMENT_CHARS)
    visibility: str = "public"


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/api/limits", summary="Size caps for one submission")
async def limits(state: State) -> dict:
    settings = state.settings
    return {"max_file_bytes": settings.max_file_bytes, "max_request_bytes": settings.max_request_bytes,
            "max_files": settings.max_files, "max_comments": settings.max_comments,
            "max_comment_chars": settings.max_comment_chars}


@router.get("/api/release-key", summary="The public key that signs release manifests (PEM)")
async def release_key(state: State) -> Response:
    public = state.signing_key.public_key()
    return PlainTextResponse(public_pem(public).decode("ascii"), media_type="application/x-pem-file",
                             headers={"X-Key-Id": key_id(public)})


@router.post("/api/exports", status_code=202, summary="Submit files for output review")
async def submit_export(request: Request, state: State, username: ApiCaller) -> dict:
    requested = (request.headers.get("x-enclave-project") or "").strip() or None

    def decide(s) -> str | None:
        # From a notebook session, only that session's project (no filing one project's data under
        # another's name, where the other's checks would not know it).
        project = _session_project(s, request, username, requested)
        access.resolve(s, username, project)
        return project

    # The registry decides before a single byte of the body is read, and so does the check queue:
    # a submission it has no place for stores nothing.
    project = await state.run(decide)
    with state.worker.place(username):
        fields, staged = await read_upload(request, state.quarantine, state.settings)
        created = await state.run(lambda s: service.submit(
            s, username, project, staged, fields.get("justification", ""), fields.get("context", ""),
            max_files=state.settings.max_files))
        state.worker.enqueue(created.id, username)
    return {"id": created.id, "state": created.state, "version": created.version,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in staged],
            "url": f"{state.settings.prefix}/requests/{created.id}"}


def _session_project(session, request: Request, username: str, requested: str | None) -> str | None:
    return session_project(session, username, requested, token=bearer_token(request.headers.get("authorization")),
                           address=request.client.host if request.client else None)


def _check_resubmit(session, username: str, request_id: str, http_request: Request) -> None:
    """Only the author of a request waiting for changes may upload to it, and from a notebook
    session only to a request of that session's project."""
    request = service.get_request(session, request_id)
    _, actor = service.standing(session, request, username)
    _session_project(session, http_request, username, session.get(Project, request.project_id).slug)
    check_transition(request.id, ExportState(request.state), "resubmit", actor)


@router.post("/api/exports/{request_id}/resubmit", status_code=202, summary="New files after changes were requested")
async def resubmit_export(request_id: str, request: Request, state: State, username: ApiCaller) -> dict:
    # Checked before the body is read, like a first submission.
    await state.run(lambda s: _check_resubmit(s, username, request_id, request))
    with state.worker.place(username):
        fields, staged = await read_upload(request, state.quarantine, state.settings)
        updated = await state.run(lambda s: service.resubmit(
            s, username, request_id, staged, fields.get("note", ""), max_files=state.settings.max_files,
            max_comments=state.settings.max_comments, max_chars=state.settings.max_comment_chars))
        state.worker.enqueue(updated.id, username)
    return {"id": updated.id, "state": updated.state, "version": updated.version}


@router.get("/api/exports", summary="Your exports")
async def list_exports(state: State, username: ApiCaller) -> dict:
    def work(s):
        registered(s, username)
        return [r.to_json() for r in service.list_own(s, username)]

    return {"exports": await state.run(work)}


@router.get("/api/exports/{request_id}", summary="One export: status, files, public comments")
async def get_export(request_id: str, state: State, username: ApiCaller) -> dict:
    def work(s):
        registered(s, username)
        return service.view(s, username, request_id).to_json()

    return await state.run(work)


@router.post("/api/exports/{request_id}/withdraw", summary="Withdraw your export")
async def withdraw_export(request_id: str, state: State, username: ApiCaller) -> dict:
    done = await state.run(lambda s: service.withdraw(s, username, request_id))
    return {"id": done.id, "state": done.state}


@router.post("/api/exports/{request_id}/comments", status_code=201, summary="Comment on an export")
async def comment_export(request_id: str, body: CommentBody, state: State, username: ApiCaller) -> dict:
    row = await state.run(lambda s: service.comment(s, username, request_id, body.body, body.visibility,
                                                    max_comments=state.settings.max_comments,
                                                    max_chars=state.settings.max_comment_chars))
    return {"id": row.id, "visibility": row.visibility}


# What a decision sent with a token is told, whoever sent it.
NO_TOKEN_DECISIONS = ("review decisions are not taken with an API token (a hub admin can mint one for anyone): "
                      "decide on the export's page in the review service, logged in through the hub, or with "
                      "`enclave review approve|reject|request-changes` and your own password")


@router.post("/api/exports/{request_id}/decision", summary="Refused: decisions need the reviewer's own login")
async def decide_export(request_id: str) -> dict:
    # Refused before the token is even looked at: nobody's token carries a decision.
    refused = Forbidden(NO_TOKEN_DECISIONS)
    refused.code = "decision_needs_login"
    raise refused
