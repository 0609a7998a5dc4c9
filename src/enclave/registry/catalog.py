"""The model catalog: onboarding models with a checked card, releasing them in stages, and who may
see which.

**Stages and tiers.** A catalog model is at one stage, `internal -> partner -> gated -> general`,
and a project sees it only when its grant's tier allows that stage (`STAGE_TIERS`, the one table):
`general` models need `sample`, `gated` ones `score`, `partner` ones `internals`, `internal` ones
`finetune`. The further a model is from general release, the more the project must already be
trusted with. A project's own model (a DP fine-tune, `owner_project_id` set) is visible to that
project alone, whatever its stage, and never named to anyone else.

**Release.** Promotion goes one stage up at a time, in two steps by two different operators: one
proposes with evidence (an evaluation report, kept with its SHA-256; the incidents recorded at the
current stage, attached automatically; the time at the stage, which must reach the policy's
minimum), another signs, and only then the stage changes. Demotion goes to any lower stage at
once, by one operator, and cancels a pending promotion. Each step is a row of `model_stage_step`
(append-only) and an audit event; `history` is the timeline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from enclave.errors import BadInput, Conflict, NotFound, Refused
from enclave.registry import audit, model_card
from enclave.registry.clock import iso, utcnow
from enclave.registry.grants import TIERS
from enclave.registry.lifecycle import require_live
from enclave.registry.models import (
    Grant, ModelEntry, ModelIncident, ModelPromotion, ModelStageStep, Project,
)
from enclave.registry.people import SYSTEM_ACTOR, require_role
from enclave.registry.projects import get_project

STAGES = ("internal", "partner", "gated", "general")  # least released first
# The least tier a project needs to see a catalog model at each stage.
STAGE_TIERS = {"general": "sample", "gated": "score", "partner": "internals", "internal": "finetune"}
DEFAULT_MIN_DAYS_AT_STAGE = 14.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_EVIDENCE_BYTES = 1024 * 1024
# The files that hold weights in a Hugging Face directory (save_pretrained, sharded or not).
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Buffers some checkpoints carry beside the parameters (GPT-2's causal mask): not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class UnknownModel(BadInput):
    """A call named a model that does not exist for its project (HTTP 400, as a bad field of the
    request): unknown, or another project's own model, which is answered the same way."""

    code = "unknown_model"


class ModelNotReleased(Refused):
    """The model's stage is beyond what the project's tier may see (HTTP 403); the message says
    which tier would."""

    code = "model_not_released"


# --- fingerprints ---------------------------------------------------------------------------------

def weight_files(directory: str | Path) -> list[Path]:
    folder = Path(directory)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name in WEIGHT_INDEXES))


def fingerprint(directory: str | Path) -> tuple[str, int]:
    """(SHA-256 over the weight files' names and digests, number of parameters) of a Hugging Face
    model directory. Parameters are counted from the safetensors headers (no torch needed), or
    from a pytorch_model.bin when that is all there is."""
    folder = Path(directory).expanduser().resolve()
    if not folder.is_dir():
        raise BadInput(f"model directory {folder} does not exist")
    files = weight_files(folder)
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        raise BadInput(f"{folder} has no weight files (*.safetensors or *.bin)")
    outer = hashlib.sha256()
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest(), count_parameters(folder, files)


def count_parameters(folder: Path, files: list[Path]) -> int:
    safetensors = [p for p in files if p.name.endswith(".safetensors")]
    if safetensors:
        return sum(_safetensors_numel(p) for p in safetensors)
    import torch  # only for a directory without safetensors

    total = 0
    for path in (p for p in files if p.name.endswith(".bin")):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        total += sum(t.numel() for name, t in state.items() if not name.endswith(_BUFFER_SUFFIXES))
    return total


def _safetensors_numel(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its JSON header (8-byte length first)."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise BadInput(f"{path} is not a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 1024 * 1024:
            raise BadInput(f"{path} has an implausible safetensors header")
        try:
            header = json.loads(handle.read(size))
        except ValueError:
            raise BadInput(f"{path} is not a safetensors file") from None
    total = 0
    for name, info in header.items():
        if name == "__metadata__" or name.endswith(_BUFFER_SUFFIXES):
            continue
        count = 1
        for dim in info.get("shape", []):
            count *= int(dim)
        total += count
    return total


# --- look-ups -----------------------------------------------------------------------------------

def find_model(session: Session, name: str) -> ModelEntry | None:
    return session.exec(select(ModelEntry).where(ModelEntry.name == name)).first()


def get_model(session: Session, name: str, *, lock: bool = False) -> ModelEntry:
    """The model `name`; with `lock`, its row locked for this transaction (PostgreSQL's FOR UPDATE;
    SQLite's write lock is the whole database), so two operators' stage changes cannot interleave."""
    query = select(ModelEntry).where(ModelEntry.name == name)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    entry = session.exec(query).first()
    if entry is None:
        raise NotFound(f"no model {name!r} in the catalog (see `enclave model list`)")
    return entry


def find_by_directory(session: Session, directory: str | Path) -> ModelEntry | None:
    """The catalog model (not a project's own) served from `directory`, if one is."""
    wanted = str(Path(directory).expanduser().resolve())
    return session.exec(select(ModelEntry).where(ModelEntry.owner_project_id.is_(None),
                                                 ModelEntry.directory == wanted).order_by(ModelEntry.id)).first()


def list_models(session: Session) -> list[ModelEntry]:
    return list(session.exec(select(ModelEntry).order_by(ModelEntry.name)).all())


def directories(session: Session) -> list[str]:
    """Every model's weight directory (catalog and projects' own): what the review's weight checks
    fingerprint."""
    return sorted({e.directory for e in session.exec(select(ModelEntry)).all()})


def stage_visible(stage: str, tier: str) -> bool:
    return TIERS.index(tier) >= TIERS.index(STAGE_TIERS[stage])


def _project(session: Session, project: Project | str) -> Project:
    return project if isinstance(project, Project) else get_project(session, project)


def visible_models(session: Session, project: Project | str) -> list[ModelEntry]:
    """The models `project` may use now: catalog models at a stage its grant's tier allows, and its
    own. (A tier for one model, `grants.set_model_tier`, decides that model's endpoints; it does not
    open a stage the grant's tier does not: releasing a model further is a promotion's business.)"""
    project = _project(session, project)
    grant = session.get(Grant, project.id)
    return [e for e in list_models(session) if e.withdrawn_at is None and (
            e.owner_project_id == project.id
            or (e.owner_project_id is None and grant is not None and stage_visible(e.stage, grant.tier)))]


def require_visible(session: Session, project: Project | str, name: str) -> ModelEntry:
    """The model `name`, if `project` may use it now; otherwise a refusal that says why. Another
    project's own model is answered exactly like a model that does not exist, and why a model was
    withdrawn is told only to projects that could otherwise use it."""
    project = _project(session, project)
    entry = find_model(session, name)
    if entry is None or (entry.owner_project_id is not None and entry.owner_project_id != project.id):
        names = ", ".join(e.name for e in visible_models(session, project)) or "no catalog model"
        raise UnknownModel(f"no model {name!r} for project {project.slug!r}: the enclave serves it {names} "
                           f"(GET /v1/models)")
    if entry.owner_project_id is None:
        grant = session.get(Grant, project.id)
        if grant is None:
            raise ModelNotReleased(f"project {project.slug!r} has no grant, so no model is released to it")
        if not stage_visible(entry.stage, grant.tier):
            needed = STAGE_TIERS[entry.stage]
            raise ModelNotReleased(
                f"model {name!r} is at the {entry.stage!r} release stage, which needs the {needed!r} tier; project "
                f"{project.slug!r} has the {grant.tier!r} tier (stages need: "
                + ", ".join(f"{s} {STAGE_TIERS[s]}" for s in reversed(STAGES)) + ")")
    if entry.withdrawn_at is not None:
        raise ModelNotReleased(f"model {name!r} was withdrawn from service by {entry.withdrawn_by} on "
                               f"{iso(entry.withdrawn_at)}: {entry.withdrawn_reason}")
    return entry


# --- onboarding ---------------------------------------------------------------------------------

def _check_name(session: Session, name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise BadInput(f"bad model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
                       f"letter or digit")
    if find_model(session, name) is not None:
        raise Conflict(f"a model named {name!r} exists already")
    return name


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise BadInput(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    return stage


def _first_errors(what: str, findings: list[model_card.Finding]) -> str:
    errs = model_card.errors(findings)
    shown = "; ".join(f"line {f.line}: {f.message}" for f in errs[:3])
    more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
    return f"the {what} has {len(errs)} error(s): {shown}{more}"


def onboard(session: Session, *, actor: str, name: str, directory: str | Path, card: str, checklist: str,
            stage: str = "internal", via: str = "", cosigned_by: str | None = None, cosign_via: str = "",
            now: dt.datetime | None = None) -> ModelEntry:
    """Add a catalog model: its card must lint clean and its checklist be fully answered (the actor,
    an operator, signs it off); its weights are fingerprinted. The caller checks beforehand that
    the directory loads as a model (the gateway's check). `via` says how the operator
    authenticated (recorded with the sign-off).

    A model starts at `internal`. Starting it further along (a model already public elsewhere)
    skips staged release, so it takes what a promotion takes: a second, different operator's
    sign-off (`cosigned_by`, authenticated by the caller; `cosign_via` says how). Only the demo's
    own seeding cosigns as the enclave itself (SYSTEM_ACTOR, a name no person can hold)."""
    require_role(session, actor)
    now = now or utcnow()
    _check_name(session, name)
    _check_stage(stage)
    if stage != STAGES[0]:
        if not cosigned_by:
            raise Refused(f"onboarding {name!r} straight to the {stage!r} stage skips staged release: it needs a "
                          f"second operator's sign-off (--cosign OPERATOR), or onboard at {STAGES[0]!r} and promote")
        if cosigned_by == actor:
            raise Refused(f"{actor!r} cannot cosign their own onboarding of {name!r} at {stage!r}: "
                          "a second, different operator must")
        if cosigned_by != SYSTEM_ACTOR:
            require_role(session, cosigned_by)
    card_findings = model_card.lint_card(card)
    if model_card.errors(card_findings):
        raise BadInput(_first_errors("model card", card_findings) + " (run `enclave model lint CARD`)")
    checklist_findings = model_card.lint_checklist(checklist)
    if model_card.errors(checklist_findings):
        raise BadInput(_first_errors("risk checklist", checklist_findings))
    folder = Path(directory).expanduser().resolve()
    digest, parameters = fingerprint(folder)
    parsed = model_card.parse_card(card)
    base = parsed.meta.get("base_model")
    base = ", ".join(base) if isinstance(base, list) else str(base)
    entry = ModelEntry(
        name=name, directory=str(folder), weights_sha256=digest, parameters=parameters, stage=stage,
        stage_since=now, card=card, card_meta=audit.canonical_json(parsed.meta), summary=parsed.summary,
        checklist=audit.canonical_json(model_card.parse_checklist(checklist)), checklist_signed_by=actor,
        checklist_signed_at=now, base_model=None if base.lower() == "none" else base,
        onboarded_by=actor, onboarded_at=now,
    )
    session.add(entry)
    session.flush()
    session.add(ModelStageStep(model_id=entry.id, kind="onboard", to_stage=stage, actor=actor, at=now,
                               reason="onboarded with a checked card and a signed risk checklist"))
    audit.append(session, actor=actor, action="model.onboard", subject=f"model:{name}",
                 details={"directory": str(folder), "weights_sha256": digest, "parameters": parameters,
                          "stage": stage, "card_sha256": audit.sha256_text(card),
                          "checklist_sha256": audit.sha256_text(checklist), "base_model": entry.base_model,
                          **({"auth": via} if via else {}),
                          **({"cosigned_by": cosigned_by, "cosign_auth": cosign_via} if cosigned_by else {})})
    return entry


def register_finetune(session: Session, *, name: str, directory: str, base_model: str, project_slug: str,
                      epsilon: float | None, delta: float | None, non_private: bool, actor: str,
                      report: dict) -> ModelEntry:
    """Record a project's fine-tuned model (a GPT-2 directory written by save_pretrained): served to
    that project only, never listed to others. `report` is the training and exposure summary."""
    now = utcnow()
    _check_name(session, name)
    project = get_project(session, project_slug)
    require_live(project, "register a fine-tuned model")
    if not non_private and (epsilon is None or delta is None):
        raise BadInput("a private fine-tune needs its epsilon and delta (or say it is non-private)")
    folder = Path(directory).expanduser().resolve()
    digest, parameters = fingerprint(folder)
    guarantee = "without differential privacy" if non_private else f"with DP (epsilon={epsilon:g}, delta={delta:g})"
    entry = ModelEntry(
        name=name, directory=str(folder), weights_sha256=digest, parameters=parameters, stage="internal",
        stage_since=now, summary=f"Fine-tune of {base_model} for project {project_slug}, trained {guarantee}.",
        base_model=base_model, owner_project_id=project.id, non_private=non_private,
        dp_epsilon=epsilon, dp_delta=delta, report=audit.canonical_json(report), onboarded_by=actor,
        onboarded_at=now,
    )
    session.add(entry)
    session.flush()
    session.add(ModelStageStep(model_id=entry.id, kind="onboard", to_stage="internal", actor=actor, at=now,
                               reason=f"fine-tune registered for project {project_slug}"))
    audit.append(session, actor=actor, action="model.finetune_registered", subject=f"model:{name}",
                 details={"project": project_slug, "directory": str(folder), "weights_sha256": digest,
                          "parameters": parameters, "base_model": base_model, "epsilon": epsilon,
                          "delta": delta, "non_private": non_private, "report": report})
    return entry


# --- stages ---------------------------------------------------------------------------------------

def _catalog_model(session: Session, name: str, doing: str) -> ModelEntry:
    entry = get_model(session, name, lock=True)
    if entry.owner_project_id is not None:
        raise Conflict(f"cannot {doing} {name!r}: it is a project's own model, not released in stages")
    if entry.withdrawn_at is not None and doing == "promote":
        raise Conflict(f"cannot promote {name!r}: it is withdrawn from service (`enclave model restore` first)")
    return entry


def pending_promotion(session: Session, entry: ModelEntry) -> ModelPromotion | None:
    return session.exec(select(ModelPromotion).where(ModelPromotion.model_id == entry.id,
                                                     ModelPromotion.state == "pending")).first()


def incidents_at_stage(session: Session, entry: ModelEntry) -> list[ModelIncident]:
    """The incidents recorded since the model reached its current stage."""
    rows = session.exec(select(ModelIncident).where(ModelIncident.model_id == entry.id)
                        .order_by(ModelIncident.id)).all()
    return [i for i in rows if i.stage == entry.stage and i.at >= entry.stage_since]


def days_at_stage(entry: ModelEntry, now: dt.datetime) -> float:
    return (now - entry.stage_since).total_seconds() / 86400


def _cancel(session: Session, promotion: ModelPromotion, actor: str, why: str) -> None:
    promotion.state, promotion.closed_reason = "cancelled", why
    session.add(promotion)
    audit.append(session, actor=actor, action="model.promotion_cancelled", subject=f"model_promotion:{promotion.id}",
                 details={"reason": why})


def propose_promotion(session: Session, *, actor: str, name: str, to_stage: str, evidence_name: str,
                      evidence: bytes, min_days: float = DEFAULT_MIN_DAYS_AT_STAGE, via: str = "",
                      now: dt.datetime | None = None) -> ModelPromotion:
    """The first operator's half of a promotion: one stage up, with an evaluation report, after the
    minimum time at the current stage. A second operator must `sign_promotion`."""
    require_role(session, actor)
    now = now or utcnow()
    entry = _catalog_model(session, name, "promote")
    _check_stage(to_stage)
    current = STAGES.index(entry.stage)
    if current == len(STAGES) - 1:
        raise Conflict(f"model {name!r} is at {entry.stage!r} already, the last stage")
    if STAGES.index(to_stage) != current + 1:
        raise Conflict(f"model {name!r} is at {entry.stage!r}: promotion goes one stage at a time, to "
                       f"{STAGES[current + 1]!r}")
    if not evidence.strip():
        raise BadInput("the evaluation report is empty: promotion needs evidence")
    if len(evidence) > MAX_EVIDENCE_BYTES:
        raise BadInput(f"the evaluation report is over {MAX_EVIDENCE_BYTES} bytes: attach a summary")
    try:
        evidence_text = evidence.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the evaluation report must be UTF-8 text (Markdown, JSON, CSV...)") from None
    days = days_at_stage(entry, now)
    if days < min_days:
        earliest = entry.stage_since + dt.timedelta(days=min_days)
        raise Refused(f"model {name!r} has been at {entry.stage!r} for {days:.1f} days; the release policy needs "
                      f"{min_days:g} days at a stage before promotion (earliest {iso(earliest)})")
    previous = pending_promotion(session, entry)
    incidents = [{"id": i.id, "at": iso(i.at), "by": i.reported_by, "note": i.note}
                 for i in incidents_at_stage(session, entry)]
    promotion = ModelPromotion(
        model_id=entry.id, from_stage=entry.stage, to_stage=to_stage, proposed_by=actor, proposed_at=now,
        evidence_name=Path(evidence_name).name, evidence_sha256=hashlib.sha256(evidence).hexdigest(),
        evidence=evidence_text, incidents=audit.canonical_json(incidents), days_at_stage=round(days, 3),
    )
    session.add(promotion)
    session.flush()
    if previous is not None:
        _cancel(session, previous, actor, f"superseded by proposal {promotion.id}")
    audit.append(session, actor=actor, action="model.promotion_proposed", subject=f"model:{name}",
                 details={"promotion": promotion.id, "from": entry.stage, "to": to_stage,
                          "evidence": promotion.evidence_name, "evidence_sha256": promotion.evidence_sha256,
                          "incidents": [i["id"] for i in incidents], "days_at_stage": promotion.days_at_stage,
                          "min_days": min_days, **({"auth": via} if via else {})})
    return promotion


def sign_promotion(session: Session, *, actor: str, name: str, via: str = "",
                   min_days: float = DEFAULT_MIN_DAYS_AT_STAGE, now: dt.datetime | None = None) -> ModelEntry:
    """The second operator's half: the stage changes now. The proposer cannot sign their own; the
    signer's own policy's minimum time at the stage is checked again (the proposer's policy file is
    theirs to choose), and an incident recorded since the proposal refuses the signature until the
    promotion is proposed again with that evidence attached."""
    require_role(session, actor)
    now = now or utcnow()
    entry = _catalog_model(session, name, "promote")
    promotion = pending_promotion(session, entry)
    if promotion is None:
        raise Conflict(f"model {name!r} has no pending promotion: one operator proposes "
                       f"(`enclave model promote {name} --to STAGE --evidence FILE`), another signs")
    if promotion.proposed_by == actor:
        raise Refused(f"{actor!r} proposed this promotion and cannot also sign it: a second operator must")
    if promotion.from_stage != entry.stage:
        _cancel(session, promotion, actor, f"the model moved to {entry.stage!r} since")
        raise Conflict(f"the pending promotion of {name!r} was from {promotion.from_stage!r}, but the model is at "
                       f"{entry.stage!r} now: it was cancelled; propose again")
    days = days_at_stage(entry, now)
    if days < min_days:
        raise Refused(f"model {name!r} has been at {entry.stage!r} for {days:.1f} days; the release policy needs "
                      f"{min_days:g} days at a stage before promotion: not signed")
    attached = {i["id"] for i in json.loads(promotion.incidents)}
    newer = [i for i in incidents_at_stage(session, entry) if i.id not in attached]
    if newer:
        raise Conflict(f"{len(newer)} incident(s) were recorded for {name!r} since the promotion was proposed: not "
                       "signed; propose again (the new proposal replaces this one, with them attached)")
    promotion.state, promotion.signed_by, promotion.signed_at = "signed", actor, now
    before = entry.stage
    entry.stage, entry.stage_since = promotion.to_stage, now
    session.add(promotion)
    session.add(entry)
    session.add(ModelStageStep(model_id=entry.id, kind="promote", from_stage=before, to_stage=entry.stage,
                               actor=promotion.proposed_by, signed_by=actor, promotion_id=promotion.id, at=now,
                               reason=f"evidence {promotion.evidence_name} ({promotion.evidence_sha256[:12]})"))
    audit.append(session, actor=actor, action="model.promoted", subject=f"model:{name}",
                 details={"promotion": promotion.id, "from": before, "to": entry.stage,
                          "proposed_by": promotion.proposed_by, "signed_by": actor,
                          "evidence_sha256": promotion.evidence_sha256, **({"auth": via} if via else {})})
    return entry


def demote(session: Session, *, actor: str, name: str, to_stage: str, reason: str,
           now: dt.datetime | None = None) -> ModelEntry:
    """Down to any lower stage, at once, by one operator; cancels a pending promotion."""
    require_role(session, actor)
    now = now or utcnow()
    entry = _catalog_model(session, name, "demote")
    _check_stage(to_stage)
    if STAGES.index(to_stage) >= STAGES.index(entry.stage):
        raise Conflict(f"model {name!r} is at {entry.stage!r}: demotion goes to a lower stage "
                       f"({', '.join(STAGES[:STAGES.index(entry.stage)]) or 'none'})")
    if not reason.strip():
        raise BadInput("say why the model is demoted (--reason)")
    pending = pending_promotion(session, entry)
    if pending is not None:
        _cancel(session, pending, actor, "the model was demoted")
    before = entry.stage
    entry.stage, entry.stage_since = to_stage, now
    session.add(entry)
    session.add(ModelStageStep(model_id=entry.id, kind="demote", from_stage=before, to_stage=to_stage, actor=actor,
                               reason=reason.strip(), at=now))
    audit.append(session, actor=actor, action="model.demoted", subject=f"model:{name}",
                 details={"from": before, "to": to_stage, "reason": reason.strip()})
    return entry


def withdraw(session: Session, *, actor: str, name: str, reason: str, now: dt.datetime | None = None) -> ModelEntry:
    """Take a model out of service at once, for every project: a catalog model (beyond demotion)
    or a project's own fine-tune (whose stage no project's tier governs), e.g. after its audit
    showed high canary exposure. The gateway refuses it from the next call."""
    require_role(session, actor)
    now = now or utcnow()
    entry = get_model(session, name, lock=True)
    if not reason.strip():
        raise BadInput("say why the model is withdrawn (--reason)")
    if entry.withdrawn_at is not None:
        raise Conflict(f"model {name!r} was withdrawn already, by {entry.withdrawn_by} on {iso(entry.withdrawn_at)}")
    pending = pending_promotion(session, entry)
    if pending is not None:
        _cancel(session, pending, actor, "the model was withdrawn")
    entry.withdrawn_at, entry.withdrawn_by, entry.withdrawn_reason = now, actor, reason.strip()
    session.add(entry)
    session.add(ModelStageStep(model_id=entry.id, kind="withdraw", from_stage=entry.stage, to_stage=entry.stage,
                               actor=actor, reason=reason.strip(), at=now))
    audit.append(session, actor=actor, action="model.withdrawn", subject=f"model:{name}",
                 details={"stage": entry.stage, "reason": reason.strip(), "own_model": entry.owner_project_id is not None})
    return entry


def restore(session: Session, *, actor: str, name: str, reason: str, via: str = "",
            now: dt.datetime | None = None) -> ModelEntry:
    """Put a withdrawn model back in service, at the stage it had (one operator, with a reason;
    `via` says how they authenticated)."""
    require_role(session, actor)
    now = now or utcnow()
    entry = get_model(session, name, lock=True)
    if entry.withdrawn_at is None:
        raise Conflict(f"model {name!r} is in service; nothing to restore")
    if not reason.strip():
        raise BadInput("say why the model is restored (--reason)")
    entry.withdrawn_at = entry.withdrawn_by = entry.withdrawn_reason = None
    session.add(entry)
    session.add(ModelStageStep(model_id=entry.id, kind="restore", from_stage=entry.stage, to_stage=entry.stage,
                               actor=actor, reason=reason.strip(), at=now))
    audit.append(session, actor=actor, action="model.restored", subject=f"model:{name}",
                 details={"stage": entry.stage, "reason": reason.strip(), **({"auth": via} if via else {})})
    return entry


def record_incident(session: Session, *, actor: str, name: str, note: str,
                    now: dt.datetime | None = None) -> ModelIncident:
    """Something that went wrong with the model at its current stage: evidence for the next promotion."""
    require_role(session, actor)
    entry = get_model(session, name)
    if not note.strip():
        raise BadInput("say what happened (--note)")
    incident = ModelIncident(model_id=entry.id, stage=entry.stage, note=note.strip(), reported_by=actor,
                             at=now or utcnow())
    session.add(incident)
    session.flush()
    audit.append(session, actor=actor, action="model.incident", subject=f"model:{name}",
                 details={"incident": incident.id, "stage": entry.stage, "note": incident.note})
    return incident


# --- views ----------------------------------------------------------------------------------------

def history(session: Session, name: str) -> list[dict[str, Any]]:
    """The model's timeline, oldest first: stage steps, proposals (and their fate) and incidents."""
    entry = get_model(session, name)
    events: list[tuple[dt.datetime, int, dict[str, Any]]] = []
    for step in session.exec(select(ModelStageStep).where(ModelStageStep.model_id == entry.id)).all():
        events.append((step.at, 2, {"at": iso(step.at), "event": step.kind, "from": step.from_stage,
                                    "to": step.to_stage, "by": step.actor, "signed_by": step.signed_by,
                                    "note": step.reason}))
    for p in session.exec(select(ModelPromotion).where(ModelPromotion.model_id == entry.id)).all():
        events.append((p.proposed_at, 1, {
            "at": iso(p.proposed_at), "event": "proposed", "from": p.from_stage, "to": p.to_stage,
            "by": p.proposed_by, "signed_by": p.signed_by, "state": p.state,
            "note": f"evidence {p.evidence_name} sha256 {p.evidence_sha256}; {len(json.loads(p.incidents))} "
                    f"incident(s) at {p.from_stage}; {p.days_at_stage:g} days at stage"
                    + (f"; {p.closed_reason}" if p.closed_reason else "")}))
    for i in session.exec(select(ModelIncident).where(ModelIncident.model_id == entry.id)).all():
        events.append((i.at, 0, {"at": iso(i.at), "event": "incident", "from": None, "to": i.stage,
                                 "by": i.reported_by, "signed_by": None, "note": i.note}))
    return [e for _, _, e in sorted(events, key=lambda t: (t[0], t[1]))]


def model_json(entry: ModelEntry, *, full: bool = False, owner: str | None = None) -> dict[str, Any]:
    """What a caller may know about a model; `full` adds the operator's view (directory, card,
    checklist, fine-tune report)."""
    out: dict[str, Any] = {
        "name": entry.name, "stage": entry.stage, "summary": entry.summary, "parameters": entry.parameters,
        "base_model": entry.base_model, "weights_sha256": entry.weights_sha256,
        "owner_project": owner, "stage_since": iso(entry.stage_since),
        "withdrawn": None if entry.withdrawn_at is None else {
            "at": iso(entry.withdrawn_at), "by": entry.withdrawn_by, "reason": entry.withdrawn_reason},
    }
    if entry.owner_project_id is not None:
        out.update(non_private=entry.non_private, dp_epsilon=entry.dp_epsilon, dp_delta=entry.dp_delta)
    if full:
        out.update(directory=entry.directory, card_meta=json.loads(entry.card_meta), card=entry.card,
                   checklist=json.loads(entry.checklist), checklist_signed_by=entry.checklist_signed_by,
                   checklist_signed_at=iso(entry.checklist_signed_at), onboarded_by=entry.onboarded_by,
                   onboarded_at=iso(entry.onboarded_at), report=json.loads(entry.report))
    return out
