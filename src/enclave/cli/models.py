"""`enclave model ...`: the model catalog (onboarding with a checked card, staged release,
incidents) and the demo GPT-2.

Onboarding, proposing a promotion and signing one need the operator's own password (the one their
hub login takes), as review decisions need the reviewer's: typed at a prompt that does not echo,
read from `--password-file` (mode 0600) or $ENCLAVE_OPERATOR_PASSWORD. Naming an operator with
`--as` is not being one; a failed attempt is on the audit log (`model.login_failed`). Demotion and
incidents need only `--as`: they make the enclave safer, and must be quick.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Optional

import typer

from enclave.cli import login
from enclave.cli.output import AsJson, AsUser, print_json, print_rows
from enclave.cli.session import engine, registry
from enclave.demo.model import DemoPaths, build_demo
from enclave.envsettings import enclave_home
from enclave.errors import BadInput
from enclave.registry import catalog, model_card
from enclave.registry.db import session_scope

app = typer.Typer(help="Models: the catalog (onboard, lint, promote, sign, demote, incidents) and the demo GPT-2.",
                  no_args_is_help=True)

PASSWORD_ENV = "ENCLAVE_OPERATOR_PASSWORD"
COSIGN_PASSWORD_ENV = "ENCLAVE_COSIGNER_PASSWORD"
POLICY_ENV = "ENCLAVE_REVIEW_POLICY"
Name = Annotated[str, typer.Argument(metavar="NAME", help="The model's name in the catalog.")]
Stage = Annotated[str, typer.Option("--to", help=f"Target stage: {', '.join(catalog.STAGES)}.")]
PasswordFile = Annotated[Optional[Path], typer.Option(
    "--password-file", metavar="FILE", dir_okay=False,
    help="Read your password (the one your hub login takes) from the first line of FILE, which only you may "
         f"read (mode 0600). Without it: ${PASSWORD_ENV}, else a prompt that does not echo.")]
PolicyFile = Annotated[Optional[Path], typer.Option(
    "--policy", metavar="FILE", dir_okay=False, envvar=POLICY_ENV, show_envvar=True,
    help="The risk-appetite file whose [release] min_days_at_stage applies (default: output_review/policy.toml; "
         f"without the key, {catalog.DEFAULT_MIN_DAYS_AT_STAGE:g} days).")]


def demo_build(out: Path | None, force: bool) -> DemoPaths:
    """The demo under `out` (default $ENCLAVE_HOME/demo), built or reused from its cache."""
    return build_demo(out or enclave_home() / "demo", progress=True, force=force)


@app.command("build-demo")
def model_build_demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write it (default: $ENCLAVE_HOME/demo).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching build is cached.")] = False,
) -> None:
    """Build the synthetic confidential dataset and a small GPT-2 trained on it (cached)."""
    demo = demo_build(out, force)
    typer.echo(f"demo model: {demo.model_dir}")
    typer.echo(f"demo data:  {demo.people_csv}")


# --- the operator's own password ------------------------------------------------------------------

def _operator_login(eng, actor: str | None, password_file: Path | None, doing: str,
                    env_name: str = PASSWORD_ENV, option: str = "--password-file") -> tuple[str, str]:
    return login.require_password(eng, actor, password_file, doing, env_name=env_name, option=option,
                                  failed_action="model.login_failed")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror}") from None


def _text(path: Path, what: str) -> str:
    try:
        return _read(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{what} {path} is not UTF-8 text") from None


def min_days_at_stage(policy: Path | None) -> float:
    """`[release] min_days_at_stage` of the policy file (the shipped one when none is named)."""
    if policy is None:
        from enclave.review.scan.policy import DEFAULT_POLICY

        policy = DEFAULT_POLICY
    try:
        data = tomllib.loads(_text(policy, "policy file"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy file {policy} is not valid TOML: {exc}") from None
    value = (data.get("release") or {}).get("min_days_at_stage", catalog.DEFAULT_MIN_DAYS_AT_STAGE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadInput(f"{policy}: [release] min_days_at_stage must be a number of days >= 0, not {value!r}")
    return float(value)


# --- authors --------------------------------------------------------------------------------------

@app.command("lint")
def model_lint(
    card: Annotated[Path, typer.Argument(metavar="CARD.md", dir_okay=False, help="A Hugging Face model card.")],
    checklist: Annotated[Optional[Path], typer.Option("--checklist", dir_okay=False,
                                                      help="Also check a risk checklist (TOML).")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a model card (metadata, Mitchell et al.'s sections, no template placeholders) and,
    optionally, a risk checklist; exit 1 if anything is an error."""
    findings = [(str(card), f) for f in model_card.lint_card(_text(card, "model card"))]
    if checklist is not None:
        findings += [(str(checklist), f) for f in model_card.lint_checklist(_text(checklist, "checklist"))]
    if as_json:
        print_json([{"file": source, **f.as_json()} for source, f in findings])
    else:
        for source, finding in findings:
            typer.echo(finding.render(source))
        errors = sum(f.severity == "error" for _, f in findings)
        typer.echo(f"{errors} error(s), {len(findings) - errors} warning(s)" if findings else "no findings")
    if any(f.severity == "error" for _, f in findings):
        raise typer.Exit(1)


@app.command("checklist-template")
def model_checklist_template() -> None:
    """Print a blank risk checklist (Madaio et al. 2020, by lifecycle stage) to answer for onboarding."""
    typer.echo(model_card.checklist_template())


# --- operators ------------------------------------------------------------------------------------

def check_model_dir(directory: Path) -> None:
    """The gateway's own check that a directory holds a whole GPT-2 checkpoint it can serve."""
    from enclave.gateway.model import ModelLoadError, _check_dir

    try:
        _check_dir(directory.expanduser().resolve())
    except ModelLoadError as exc:
        raise BadInput(str(exc)) from None


@app.command("onboard")
def model_onboard(
    directory: Annotated[Path, typer.Argument(metavar="DIR", file_okay=False, help="A Hugging Face GPT-2 directory.")],
    name: Annotated[str, typer.Option("--name", help="The model's name in the catalog (what calls put in `model`).")],
    card: Annotated[Path, typer.Option("--card", dir_okay=False, help="Its model card (Markdown with YAML front matter).")],
    checklist: Annotated[Path, typer.Option("--checklist", dir_okay=False,
                                            help="The answered risk checklist (TOML; see `checklist-template`).")],
    stage: Annotated[str, typer.Option("--stage", help=f"Starting stage: {', '.join(catalog.STAGES)}; beyond "
                                                       "internal needs --cosign.")] = "internal",
    cosign: Annotated[Optional[str], typer.Option(
        "--cosign", metavar="OPERATOR",
        help="A second operator who signs off a start beyond internal (staged release skipped).")] = None,
    cosign_password_file: Annotated[Optional[Path], typer.Option(
        "--cosign-password-file", metavar="FILE", dir_okay=False,
        help=f"The cosigner's password file (mode 0600). Without it: ${COSIGN_PASSWORD_ENV}, else a prompt.")] = None,
    as_: AsUser = None,
    password_file: PasswordFile = None,
) -> None:
    """Add a model to the catalog: the directory is checked, the card linted (refused on errors),
    the checklist signed off by you, the weights fingerprinted for the review's weight checks."""
    check_model_dir(directory)
    card_text, checklist_text = _text(card, "model card"), _text(checklist, "checklist")
    with engine() as eng:
        actor, via = _operator_login(eng, as_, password_file, f"onboarding model {name!r}")
        cosigner, cosign_via = None, ""
        if cosign:
            cosigner, cosign_via = _operator_login(eng, cosign, cosign_password_file,
                                                   f"cosigning the onboarding of {name!r} at {stage!r}",
                                                   COSIGN_PASSWORD_ENV, "--cosign-password-file")
        with session_scope(eng) as s:
            entry = catalog.onboard(s, actor=actor, name=name, directory=directory, card=card_text,
                                    checklist=checklist_text, stage=stage, via=via, cosigned_by=cosigner,
                                    cosign_via=cosign_via)
            record = catalog.model_json(entry)
    typer.echo(f"onboarded {record['name']} at stage {record['stage']}: {record['parameters']:,} parameters, "
               f"weights sha256 {record['weights_sha256']}")


@app.command("list")
def model_list(as_json: AsJson = False) -> None:
    """Every model in the catalog, with its stage (projects' own fine-tunes too)."""
    from enclave.registry.models import Project

    with registry() as s:
        records = []
        for entry in catalog.list_models(s):
            owner = s.get(Project, entry.owner_project_id).slug if entry.owner_project_id else None
            records.append(catalog.model_json(entry, owner=owner))
    if as_json:
        print_json(records)
        return
    print_rows([(r["name"], r["stage"] if not r["owner_project"] else f"own:{r['owner_project']}",
                 f"{r['parameters']:,}", r["stage_since"][:10], r["summary"]) for r in records],
               ("NAME", "STAGE", "PARAMETERS", "SINCE", "SUMMARY"), caps=(32, 24, 14, 10, 60))


@app.command("show")
def model_show(name: Name, as_json: AsJson = False) -> None:
    """One model: card metadata, checklist sign-off, pending promotion, incidents at its stage."""
    from enclave.registry.models import Project

    with registry() as s:
        entry = catalog.get_model(s, name)
        owner = s.get(Project, entry.owner_project_id).slug if entry.owner_project_id else None
        record = catalog.model_json(entry, full=True, owner=owner)
        pending = catalog.pending_promotion(s, entry)
        record["pending_promotion"] = None if pending is None else {
            "to": pending.to_stage, "proposed_by": pending.proposed_by, "evidence": pending.evidence_name,
            "evidence_sha256": pending.evidence_sha256}
        record["incidents_at_stage"] = [{"at": i.at.isoformat(), "by": i.reported_by, "note": i.note}
                                        for i in catalog.incidents_at_stage(s, entry)]
        stage_tiers = dict(catalog.STAGE_TIERS)
    if as_json:
        print_json(record)
        return
    for key in ("name", "stage", "stage_since", "parameters", "weights_sha256", "directory", "base_model",
                "owner_project", "onboarded_by", "onboarded_at", "checklist_signed_by", "checklist_signed_at"):
        typer.echo(f"{key}: {record[key]}")
    if not record["owner_project"]:
        typer.echo(f"visible to projects at tier: {stage_tiers[record['stage']]} or above")
    typer.echo(f"summary: {record['summary']}")
    pending = record["pending_promotion"]
    typer.echo("pending promotion: " + ("none" if pending is None else
               f"to {pending['to']}, proposed by {pending['proposed_by']} on {pending['evidence']}; needs a second "
               f"operator: enclave model sign {name}"))
    typer.echo(f"incidents at this stage: {len(record['incidents_at_stage'])}")
    for incident in record["incidents_at_stage"]:
        typer.echo(f"  {incident['at'][:19]} {incident['by']}: {incident['note']}")


@app.command("history")
def model_history(name: Name, as_json: AsJson = False) -> None:
    """The model's release timeline: onboarding, proposals, signatures, demotions, incidents."""
    with registry() as s:
        events = catalog.history(s, name)
    if as_json:
        print_json(events)
        return
    rows = []
    for e in events:
        move = f"{e['from'] or '-'} -> {e['to']}" if e["event"] != "incident" else f"at {e['to']}"
        who = e["by"] + (f" + {e['signed_by']}" if e.get("signed_by") else "")
        event = e["event"] + (f" ({e['state']})" if e.get("state") else "")
        rows.append((e["at"][:19].replace("T", " "), event, move, who, e["note"]))
    print_rows(rows, ("WHEN (UTC)", "EVENT", "STAGE", "BY", "NOTE"), caps=(19, 20, 22, 30, 80))


@app.command("promote")
def model_promote(
    name: Name,
    to: Stage,
    evidence: Annotated[Path, typer.Option("--evidence", dir_okay=False, help="The evaluation report (text).")],
    as_: AsUser = None,
    password_file: PasswordFile = None,
    policy: PolicyFile = None,
) -> None:
    """Propose a promotion one stage up, with evidence; a second operator signs it (`model sign`).
    The incidents at the current stage are attached; refused before the policy's time at a stage."""
    min_days = min_days_at_stage(policy)
    report = _read(evidence, "evaluation report")
    with engine() as eng:
        actor, via = _operator_login(eng, as_, password_file, f"proposing to promote {name!r}")
        with session_scope(eng) as s:
            promotion = catalog.propose_promotion(s, actor=actor, name=name, to_stage=to, evidence_name=evidence.name,
                                                  evidence=report, min_days=min_days, via=via)
            incidents = len(json.loads(promotion.incidents))
    typer.echo(f"proposed {name}: {promotion.from_stage} -> {promotion.to_stage} (evidence sha256 "
               f"{promotion.evidence_sha256[:16]}, {incidents} incident(s) attached); another operator must sign: "
               f"enclave model sign {name}")


@app.command("sign")
def model_sign(name: Name, as_: AsUser = None, password_file: PasswordFile = None, policy: PolicyFile = None) -> None:
    """Sign the pending promotion (a different operator from the one who proposed it): the stage
    changes now. Your policy's minimum time at the stage is checked again."""
    days = min_days_at_stage(policy)
    with engine() as eng:
        actor, via = _operator_login(eng, as_, password_file, f"signing the promotion of {name!r}")
        with session_scope(eng) as s:
            entry = catalog.sign_promotion(s, actor=actor, name=name, via=via, min_days=days)
            stage = entry.stage
    typer.echo(f"{name} is now at stage {stage}")


@app.command("demote")
def model_demote(
    name: Name,
    to: Stage,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the history and the audit log).")],
    as_: AsUser = None,
) -> None:
    """Demote at once to any lower stage (one operator); bites on the gateway's next call."""
    with registry() as s:
        entry = catalog.demote(s, actor=as_ or "", name=name, to_stage=to, reason=reason)
        stage = entry.stage
    typer.echo(f"{name} is now at stage {stage}")


@app.command("withdraw")
def model_withdraw(
    name: Name,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the history and the audit log).")],
    as_: AsUser = None,
) -> None:
    """Take any model out of service at once, for every project (a project's own fine-tune too, e.g.
    after a high canary exposure); the gateway refuses it from its next call."""
    with registry() as s:
        catalog.withdraw(s, actor=as_ or "", name=name, reason=reason)
    typer.echo(f"{name} is withdrawn: no project is served it until `enclave model restore {name}`")


@app.command("restore")
def model_restore(
    name: Name,
    reason: Annotated[str, typer.Option("--reason", help="Why it may be served again (recorded).")],
    as_: AsUser = None,
    password_file: PasswordFile = None,
) -> None:
    """Put a withdrawn model back in service at its stage (needs your own password)."""
    with engine() as eng:
        actor, via = _operator_login(eng, as_, password_file, f"restoring model {name!r}")
        with session_scope(eng) as s:
            entry = catalog.restore(s, actor=actor, name=name, reason=reason, via=via)
            stage = entry.stage
    typer.echo(f"{name} is back in service at stage {stage}")


@app.command("incident")
def model_incident(
    name: Name,
    note: Annotated[str, typer.Option("--note", help="What happened.")],
    as_: AsUser = None,
) -> None:
    """Record an incident at the model's current stage (attached to its next promotion proposal)."""
    with registry() as s:
        incident = catalog.record_incident(s, actor=as_ or "", name=name, note=note)
        stage = incident.stage
    typer.echo(f"recorded an incident for {name} at stage {stage}")
