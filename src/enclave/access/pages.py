"""The access pages: applicants apply (a draft saves, a submission freezes it and accepts the
call's terms by their SHA-256) and follow their applications to the decision; panel members see
their assignments, declare conflicts before they open one, and score it criterion by criterion.

Every change goes through the registry's own functions (`applications`, `panel`), which decide
who may do what on every request and write the audit event; these routes only translate forms.
An applicant sees only their own applications; the panel's scores and comments to the applicant
are shown with the decision (the mean and spread only, unattributed; private notes never)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from enclave.access.deps import BrowserUser, FormUser, State, WebUser, access_state, form_user
from enclave.errors import BadInput, NotFound, UserError
from enclave.registry import applications, calls, panel
from enclave.registry.clock import iso
from enclave.registry.models import (
    AccessApplication, AccessAward, AccessCall, ApplicationState, ConflictKind, PanelAssignment, Person, Project, Role,
)
from enclave.registry.people import require_role
from enclave.web.oauth_pages import login_router

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = "/static/access.css"
# The states in which the applicant is shown the panel's summary and comments: after a decision.
DECIDED = frozenset({ApplicationState.decided.value, ApplicationState.appealed.value})
FIELD_LABELS = {
    "title": "Title", "lay_summary": "Lay summary", "research_question": "Research question",
    "least_access": "Why this is the least access that answers it",
    "token_justification": "Why this many requests and tokens",
    "planned_outputs": "Planned outputs (and how they will pass output review)",
    "risk_assessment": "Risk and misuse self-assessment", "ethics_reference": "Ethics approval reference",
}

router = APIRouter(include_in_schema=False)


def load_templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined)
    env.filters["when"] = lambda value: (iso(value) or "")[:16].replace("T", " ") + " UTC" \
        if isinstance(value, dt.datetime) else (value or "")
    env.filters["words"] = lambda value: str(value or "").replace("_", " ")
    return env


def _redirect(prefix: str, path: str, done: str = "") -> RedirectResponse:
    return RedirectResponse(f"{prefix}{path}" + (f"?done={quote(done)}" if done else ""), status_code=303)


def _flash(request: Request) -> str:
    return request.query_params.get("done", "")[:300]


# --- forms -> registry arguments ---------------------------------------------------------------

def _whole(name: str, raw: str) -> int | None:
    raw = raw.strip().replace(",", "").replace("_", "")
    if not raw:
        return None
    if not raw.isdigit():
        raise BadInput(f"{FIELD_LABELS.get(name, name.replace('_', ' '))} must be a whole number, not {raw[:20]!r}")
    return int(raw)


def _changes(form: dict[str, str]) -> dict:
    """The application's fields from the posted form (the registry checks each)."""
    changes: dict = {name: form.get(name, "") for name in applications.TEXT_FIELDS}
    changes["requests"] = _whole("requests", form.get("requests", ""))
    changes["tokens_per_request"] = _whole("tokens_per_request", form.get("tokens_per_request", ""))
    changes["datasets"] = [d for d in form.get("datasets", "").replace("\n", ",").split(",") if d.strip()]
    changes["team"] = [line.strip() for line in form.get("team", "").splitlines() if line.strip()]
    return changes


def _form_values(content: dict) -> dict[str, str]:
    """An application's content as the form shows it."""
    values = {name: content.get(name, "") for name in applications.TEXT_FIELDS}
    values["requests"] = str(content.get("requests") or "")
    values["tokens_per_request"] = str(content.get("tokens_per_request") or "")
    values["datasets"] = ", ".join(content.get("datasets", []))
    values["team"] = "\n".join(f"{m['username']}:{m['training_date']}" for m in content.get("team", []))
    return values


def _posted(title: str, lay_summary: str, research_question: str, least_access: str, token_justification: str,
            planned_outputs: str, risk_assessment: str, ethics_reference: str, requests: str, tokens_per_request: str,
            datasets: str, team: str) -> dict[str, str]:
    return dict(title=title, lay_summary=lay_summary, research_question=research_question, least_access=least_access,
                token_justification=token_justification, planned_outputs=planned_outputs,
                risk_assessment=risk_assessment, ethics_reference=ethics_reference, requests=requests,
                tokens_per_request=tokens_per_request, datasets=datasets, team=team)


def _submit_after_save(state, user: WebUser, app_id: int, accept_terms: str) -> str:
    """Submit a draft just saved, in a transaction of its own: a refusal leaves the draft saved
    and says why on the form, rather than losing what was typed."""
    if not accept_terms.strip():
        return "draft saved; not submitted: tick the box to accept the call's terms"
    try:
        state.transaction(lambda s: applications.submit(s, user.username, app_id, accept_terms))
    except UserError as exc:
        return f"draft saved; not submitted: {exc.message}"
    return "submitted: your application is frozen and goes to screening"


# --- pages: home -------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def home(request: Request, state: State, user: BrowserUser) -> HTMLResponse:
    def work(s):
        me = s.exec(select(Person).where(Person.username == user.username)).one()
        open_calls = [calls.call_json(c) for c in calls.list_calls(s) if calls.accepting(c)]
        own = [applications.application_json(s, a, content=False)
               for a in s.exec(select(AccessApplication).where(AccessApplication.applicant_id == me.id)
                               .order_by(AccessApplication.id)).all()]
        for row in own:
            row["title"] = applications.content_of(s.get(AccessApplication, row["id"]))["title"]
        assigned = []
        for row in s.exec(select(PanelAssignment).where(PanelAssignment.person_id == me.id)
                          .order_by(PanelAssignment.application_id)).all():
            app = s.get(AccessApplication, row.application_id)
            assigned.append({"id": app.id, "call": s.get(AccessCall, app.call_id).slug, "tier": app.tier,
                             "state": app.state, "conflict": row.conflict, "note": row.conflict_note,
                             "scored_at": row.scored_at})
        return open_calls, own, assigned

    open_calls, own, assigned = state.transaction(work)
    return state.page("home.html", user, flash=_flash(request), calls=open_calls, own=own, assigned=assigned,
                      is_applicant=user.has(Role.applicant.value), is_panel=user.has(Role.panel.value))


# --- pages: applicants -------------------------------------------------------------------------

@router.get("/calls/{slug}/apply", response_class=HTMLResponse)
def apply_page(slug: str, state: State, user: BrowserUser) -> HTMLResponse:
    def work(s):
        require_role(s, user.username, Role.applicant)
        call = calls.get_call(s, slug)
        if not calls.accepting(call):
            raise NotFound(f"call {slug!r} is not taking applications")
        return calls.call_json(call, full=True)

    call = state.transaction(work)
    values = _form_values({"team": [{"username": user.username, "training_date": ""}]})
    values["team"] = f"{user.username}:YYYY-MM-DD"
    return state.page("application_form.html", user, call=call, values=values, tier=call["tiers"][0], app=None,
                      labels=FIELD_LABELS)


@router.post("/calls/{slug}/apply")
def apply_form(slug: str, state: State, user: FormUser, action: str = Form("save"), tier: str = Form(""),
               accept_terms: str = Form(""), title: str = Form(""), lay_summary: str = Form(""),
               research_question: str = Form(""), least_access: str = Form(""), token_justification: str = Form(""),
               planned_outputs: str = Form(""), risk_assessment: str = Form(""), ethics_reference: str = Form(""),
               requests: str = Form(""), tokens_per_request: str = Form(""), datasets: str = Form(""),
               team: str = Form("")) -> Response:
    changes = _changes(_posted(title, lay_summary, research_question, least_access, token_justification,
                               planned_outputs, risk_assessment, ethics_reference, requests, tokens_per_request,
                               datasets, team))
    app_id = state.transaction(lambda s: applications.create(s, user.username, slug, tier, **changes).id)
    done = _submit_after_save(state, user, app_id, accept_terms) if action == "submit" else "draft saved"
    return _redirect(state.settings.prefix, f"/applications/{app_id}", done)


def _own_application(s, user: WebUser, app_id: int) -> AccessApplication:
    """The caller's own application; anyone else's is not found (not even its existence shows)."""
    app = s.get(AccessApplication, app_id)
    me = s.exec(select(Person).where(Person.username == user.username)).one()
    if app is None or app.applicant_id != me.id:
        raise NotFound(f"you have no application {app_id}")
    return app


@router.get("/applications/{app_id}", response_class=HTMLResponse)
def application_page(app_id: int, request: Request, state: State, user: BrowserUser) -> HTMLResponse:
    def work(s):
        app = _own_application(s, user, app_id)
        call = s.get(AccessCall, app.call_id)
        record = applications.application_json(s, app)
        summary = panel.panel_json(s, app, private=False) if app.state in DECIDED else None
        award = s.exec(select(AccessAward).where(AccessAward.application_id == app.id)).first()
        granted = None
        if award is not None:
            granted = {"project": s.get(Project, award.project_id).slug, "tokens": award.tokens_awarded,
                       "first": award.tranche_first, "second": award.tranche_second}
        return record, calls.call_json(call, full=True), summary, granted

    record, call, summary, granted = state.transaction(work)
    editable = record["state"] == ApplicationState.draft.value
    return state.page("application.html", user, flash=_flash(request), a=record, call=call, summary=summary,
                      award=granted, editable=editable, values=_form_values(record["content"]), tier=record["tier"],
                      labels=FIELD_LABELS, app=record)


@router.post("/applications/{app_id}")
def application_form(app_id: int, state: State, user: FormUser, action: str = Form("save"), tier: str = Form(""),
                     accept_terms: str = Form(""), title: str = Form(""), lay_summary: str = Form(""),
                     research_question: str = Form(""), least_access: str = Form(""),
                     token_justification: str = Form(""), planned_outputs: str = Form(""),
                     risk_assessment: str = Form(""), ethics_reference: str = Form(""), requests: str = Form(""),
                     tokens_per_request: str = Form(""), datasets: str = Form(""), team: str = Form("")) -> Response:
    changes = _changes(_posted(title, lay_summary, research_question, least_access, token_justification,
                               planned_outputs, risk_assessment, ethics_reference, requests, tokens_per_request,
                               datasets, team))
    state.transaction(lambda s: applications.edit(s, user.username, _own_application(s, user, app_id).id,
                                                  tier=tier or None, **changes))
    done = _submit_after_save(state, user, app_id, accept_terms) if action == "submit" else "draft saved"
    return _redirect(state.settings.prefix, f"/applications/{app_id}", done)


@router.post("/applications/{app_id}/withdraw")
def withdraw_form(app_id: int, state: State, user: FormUser) -> Response:
    state.transaction(lambda s: applications.withdraw(s, user.username, _own_application(s, user, app_id).id))
    return _redirect(state.settings.prefix, f"/applications/{app_id}", "withdrawn")


@router.post("/applications/{app_id}/appeal")
def appeal_form(app_id: int, state: State, user: FormUser, reason: str = Form("")) -> Response:
    if len(reason) > 4000:
        raise BadInput("an appeal's reason may be at most 4000 characters")
    state.transaction(lambda s: applications.appeal(s, user.username, _own_application(s, user, app_id).id, reason))
    return _redirect(state.settings.prefix, f"/applications/{app_id}", "appealed: an operator will answer it")


@router.post("/applications/{app_id}/revise")
def revise_form(app_id: int, state: State, user: FormUser) -> Response:
    app = state.transaction(lambda s: applications.revise(s, user.username, _own_application(s, user, app_id).id))
    return _redirect(state.settings.prefix, f"/applications/{app_id}",
                     f"version {app.version} is a draft; version {app.version - 1} stays as it was submitted")


# --- pages: panel ------------------------------------------------------------------------------

def _assignment(s, user: WebUser, app_id: int) -> tuple[AccessApplication, PanelAssignment]:
    person = require_role(s, user.username, Role.panel)
    app = s.get(AccessApplication, app_id)
    row = s.get(PanelAssignment, (app_id, person.id)) if app is not None else None
    if row is None:
        raise NotFound(f"you are not on the panel of an application {app_id}")
    return app, row


@router.get("/panel/{app_id}", response_class=HTMLResponse)
def panel_page(app_id: int, request: Request, state: State, user: BrowserUser) -> HTMLResponse:
    def work(s):
        app, row = _assignment(s, user, app_id)
        call = s.get(AccessCall, app.call_id)
        if row.conflict is None:
            # Before opening: only what a member needs to know to declare (who applied, who is on
            # the team, for which call), never the content.
            team = [m["username"] for m in applications.content_of(app).get("team", [])]
            return "declare", {"id": app.id, "call": call.slug, "call_title": call.title,
                               "applicant": s.get(Person, app.applicant_id).username, "team": team}, None
        opened = panel.open_application(s, user.username, app_id)  # refuses a conflict; audited
        return "open", opened, {"scored_at": row.scored_at, "state": app.state}

    mode, shown, mine = state.transaction(work)
    if mode == "declare":
        return state.page("panel_declare.html", user, flash=_flash(request), a=shown)
    return state.page("panel_open.html", user, flash=_flash(request), a=shown, mine=mine, labels=FIELD_LABELS,
                      can_score=mine["state"] == ApplicationState.in_review.value)


@router.post("/panel/{app_id}/declare")
def declare_form(app_id: int, state: State, user: FormUser, answer: str = Form(""), conflict: str = Form("")) -> Response:
    if answer not in ("none", "conflict"):
        raise BadInput("say whether you have a conflict with this application")
    if answer == "conflict" and not conflict.strip():
        raise BadInput("say what the conflict is")
    row = state.transaction(lambda s: panel.declare(s, user.username, app_id, conflict if answer == "conflict" else ""))
    if row.conflict != ConflictKind.none.value:
        return _redirect(state.settings.prefix, "/", f"conflict recorded for application {app_id}: you will not see it")
    return _redirect(state.settings.prefix, f"/panel/{app_id}", "no conflict declared")


@router.post("/panel/{app_id}/score")
async def score_form(app_id: int, request: Request, state: State, user: FormUser) -> Response:
    form = await request.form()
    scores = {}
    for key, value in form.items():
        if key.startswith("score_"):
            raw = str(value).strip()
            if not raw.isdigit():
                raise BadInput(f"score {key[6:]} with a whole number from 1 (best) to 9")
            scores[key[6:]] = int(raw)
    comment, private = str(form.get("comment", "")), str(form.get("private", ""))
    if len(comment) > 4000 or len(private) > 4000:
        raise BadInput("comments may be at most 4000 characters")
    await run_in_threadpool(state.transaction, lambda s: panel.score(s, user.username, app_id, scores, comment, private))
    return _redirect(state.settings.prefix, f"/panel/{app_id}", "scores recorded")


# --- login -------------------------------------------------------------------------------------

router.include_router(login_router(access_state, form_user, service="access service",
                                   logged_out="You are logged out of the access pages."))


@router.get(STYLESHEET)
async def stylesheet() -> Response:
    return Response((TEMPLATES / "access.css").read_text(), media_type="text/css",
                    headers={"Cache-Control": "max-age=3600"})
