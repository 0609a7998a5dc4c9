"""`enclave application ...`: applications for access, written by applicants (`--as USER`) and
moved through screening, review and decision by operators."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import registry
from enclave.errors import Forbidden
from enclave.registry import applications, awards, panel, people
from enclave.registry.models import Role

app = typer.Typer(help="Applications for access: drafts, submission, screening, decisions, appeals.", no_args_is_help=True)

AppId = Annotated[int, typer.Argument(metavar="ID", help="Application number.")]
Text = Optional[str]


def _fields(title: Text, lay_summary: Text, question: Text, least_access: Text, requests: Optional[int],
            tokens_per_request: Optional[int], token_justification: Text, dataset: Optional[list[str]], outputs: Text,
            risk: Text, ethics: Text, team: Optional[list[str]]) -> dict[str, Any]:
    return {"title": title, "lay_summary": lay_summary, "research_question": question, "least_access": least_access,
            "requests": requests, "tokens_per_request": tokens_per_request, "token_justification": token_justification,
            "datasets": dataset, "planned_outputs": outputs, "risk_assessment": risk, "ethics_reference": ethics,
            "team": team}


TitleOpt = Annotated[Text, typer.Option("--title", help="The project's title.")]
LayOpt = Annotated[Text, typer.Option("--lay-summary", help="What the work is, for a general reader.")]
QuestionOpt = Annotated[Text, typer.Option("--question", help="The research question.")]
LeastOpt = Annotated[Text, typer.Option("--least-access", help="Why this model and tier is the least access that answers it.")]
RequestsOpt = Annotated[Optional[int], typer.Option("--requests", help="How many model requests.")]
TokensOpt = Annotated[Optional[int], typer.Option("--tokens-per-request", help="Tokens per request.")]
JustOpt = Annotated[Text, typer.Option("--token-justification", help="Why that many requests and tokens.")]
DatasetOpt = Annotated[Optional[list[str]], typer.Option("--dataset", help="A dataset the work needs; repeatable.")]
OutputsOpt = Annotated[Text, typer.Option("--outputs", help="Planned outputs and how they will pass output review.")]
RiskOpt = Annotated[Text, typer.Option("--risk", help="Risk and misuse self-assessment.")]
EthicsOpt = Annotated[Text, typer.Option("--ethics", help="Ethics approval reference.")]
TeamOpt = Annotated[Optional[list[str]], typer.Option("--team", help="USER:YYYY-MM-DD, a member and their training date; repeatable (replaces the team).")]


@app.command("create")
def application_create(
    call: Annotated[str, typer.Argument(metavar="CALL", help="The call applied to.")],
    tier: Annotated[str, typer.Option("--tier", help="sample, score, internals or finetune.")] = "sample",
    title: TitleOpt = None, lay_summary: LayOpt = None, question: QuestionOpt = None, least_access: LeastOpt = None,
    requests: RequestsOpt = None, tokens_per_request: TokensOpt = None, token_justification: JustOpt = None,
    dataset: DatasetOpt = None, outputs: OutputsOpt = None, risk: RiskOpt = None, ethics: EthicsOpt = None,
    team: TeamOpt = None, as_: AsUser = None,
) -> None:
    """Start a draft (prints its number)."""
    with registry() as s:
        record = applications.create(s, as_, call, tier, **_fields(
            title, lay_summary, question, least_access, requests, tokens_per_request, token_justification, dataset,
            outputs, risk, ethics, team))
        typer.echo(record.id)


@app.command("edit")
def application_edit(
    app_id: AppId,
    tier: Annotated[Text, typer.Option("--tier", help="sample, score, internals or finetune.")] = None,
    title: TitleOpt = None, lay_summary: LayOpt = None, question: QuestionOpt = None, least_access: LeastOpt = None,
    requests: RequestsOpt = None, tokens_per_request: TokensOpt = None, token_justification: JustOpt = None,
    dataset: DatasetOpt = None, outputs: OutputsOpt = None, risk: RiskOpt = None, ethics: EthicsOpt = None,
    team: TeamOpt = None, as_: AsUser = None,
) -> None:
    """Change a draft (a submitted application is frozen)."""
    with registry() as s:
        applications.edit(s, as_, app_id, tier=tier, **_fields(
            title, lay_summary, question, least_access, requests, tokens_per_request, token_justification, dataset,
            outputs, risk, ethics, team))
    typer.echo(f"saved draft {app_id}")


@app.command("submit")
def application_submit(
    app_id: AppId,
    accept_terms: Annotated[str, typer.Option("--accept-terms", metavar="SHA256", help="The SHA-256 of the call's terms, which you accept (`enclave call show CALL`).")],
    as_: AsUser = None,
) -> None:
    """Submit a draft; it is frozen from now on."""
    with registry() as s:
        record = applications.submit(s, as_, app_id, accept_terms)
        typer.echo(f"submitted application {record.id} (version {record.version})")


def _view(s, actor: str | None, record) -> dict[str, Any]:
    """What `actor` may see of an application: operators everything, the applicant their own with
    the panel's summary and comments to them; panel members read through `panel open`."""
    if _is_operator(s, actor):
        return {**applications.application_json(s, record), "panel": panel.panel_json(s, record, private=True)}
    found = people.find_person(s, actor) if actor else None
    if found is not None and found.has_role(Role.panel) and not found.has_role(Role.applicant):
        raise Forbidden(f"panel members read an application with `enclave panel open {record.id}` (after declaring conflicts)")
    person = people.require_role(s, actor, Role.applicant)
    data = applications.application_json(s, record)
    if person.id != record.applicant_id:
        raise Forbidden(f"{actor!r} is not the applicant of application {record.id}")
    return {**data, "panel": panel.panel_json(s, record, private=False)}


def _is_operator(s, actor: str | None) -> bool:
    found = people.find_person(s, actor) if actor else None
    return found is not None and found.has_role(Role.operator)


@app.command("show")
def application_show(app_id: AppId, as_json: AsJson = False, as_: AsUser = None) -> None:
    """Show an application (operators, or its applicant; panel members use `panel open`)."""
    with registry() as s:
        data = _view(s, as_, applications.get_application(s, app_id))
    if as_json:
        print_json(data)
        return
    for key in ("id", "call", "applicant", "state", "outcome", "outcome_reason", "tier", "tokens_requested", "version"):
        typer.echo(f"{key}: {data[key]}")
    for key, value in data["content"].items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"panel: {data['panel']}")


@app.command("list")
def application_list(
    call: Annotated[Text, typer.Option("--call", help="Only this call's applications.")] = None,
    as_json: AsJson = False, as_: AsUser = None,
) -> None:
    """List applications: all of them for operators, their own for applicants."""
    with registry() as s:
        mine = None if _is_operator(s, as_) else people.require_role(s, as_, Role.applicant).username
        records = [applications.application_json(s, a, content=False)
                   for a in applications.list_applications(s, call, mine)]
    if as_json:
        print_json(records)
    else:
        print_rows([[r["id"], r["call"], r["applicant"], r["tier"], r["tokens_requested"], r["state"], r["outcome"] or "-"]
                    for r in records], ["id", "call", "applicant", "tier", "requested", "state", "outcome"])


@app.command("withdraw")
def application_withdraw(app_id: AppId, as_: AsUser = None) -> None:
    """Withdraw your application (before a decision)."""
    with registry() as s:
        applications.withdraw(s, as_, app_id)
    typer.echo(f"withdrew application {app_id}")


@app.command("appeal")
def application_appeal(app_id: AppId, reason: Annotated[str, typer.Option("--reason", help="Why the decision should change.")] = "",
                       as_: AsUser = None) -> None:
    """Appeal a decision (once, within the call's appeal window)."""
    with registry() as s:
        applications.appeal(s, as_, app_id, reason)
    typer.echo(f"appealed application {app_id}")


@app.command("revise")
def application_revise(app_id: AppId, as_: AsUser = None) -> None:
    """Turn a deferred application into a new draft version."""
    with registry() as s:
        record = applications.revise(s, as_, app_id)
        typer.echo(f"application {app_id} is a draft again (version {record.version})")


@app.command("screen")
def application_screen(app_id: AppId, as_: AsUser = None) -> None:
    """Take a submitted application in for screening (operators)."""
    with registry() as s:
        applications.screen(s, as_, app_id)
    typer.echo(f"screening application {app_id}")


@app.command("review")
def application_review(app_id: AppId, as_: AsUser = None) -> None:
    """Send a screened application to its panel (needs enough members without a conflict)."""
    with registry() as s:
        panel.start_review(s, as_, app_id)
    typer.echo(f"application {app_id} is in review")


@app.command("condition")
def application_condition(app_id: AppId, text: Annotated[str, typer.Option("--text", help="Conditions an award must meet.")],
                          as_: AsUser = None) -> None:
    """Attach conditions: if funded, the award is approved subject to them."""
    with registry() as s:
        awards.set_conditions(s, as_, app_id, text)
    typer.echo(f"conditions set on application {app_id}")


@app.command("decide")
def application_decide(
    app_id: AppId,
    outcome: Annotated[str, typer.Option("--outcome", help="rejected or deferred; after an appeal also approved or approved_subject_to.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the applicant).")] = "",
    tokens: Annotated[Optional[int], typer.Option("--tokens", help="Tokens for an approval after appeal.")] = None,
    as_: AsUser = None,
) -> None:
    """Decide an application outside allocation: screen it out, or answer an appeal."""
    with registry() as s:
        awards.decide_by_operator(s, as_, app_id, outcome, reason, tokens)
    typer.echo(f"decided application {app_id}: {outcome}")
