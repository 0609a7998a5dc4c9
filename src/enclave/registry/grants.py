"""Grants: what a project may consume (model tokens, rate, privacy budget, compute, exports), and
what the model API lets it do (its tier)."""

from __future__ import annotations

import math
import re
from typing import Any

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.registry.clock import iso, utcnow
from enclave.errors import BadInput, NotFound
from enclave.registry.lifecycle import require_live
from enclave.registry.models import Grant, GrantModelTier
from enclave.registry.people import require_role
from enclave.registry.projects import get_project

GIB = 1024**3
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
MIB = 1024**2

# The model API's tiers, least first; each allows what the ones before it allow: sample
# (generate), score (also score and next-token, under the probability-call cap), internals (also
# activations, under the activation byte budget), finetune (reserved for DP fine-tuning).
TIERS = ("sample", "score", "internals", "finetune")
DEFAULT_TIER = "score"  # what every grant could do before tiers existed

# What a project gets for any field the operator leaves unset when the grant is first made.
DEFAULTS: dict[str, Any] = {
    "tokens_total": 200_000,
    "tokens_per_day": 50_000,
    "requests_per_minute": 60,
    "max_tokens_per_request": 512,
    "epsilon": 1.0,
    "delta": 1e-6,
    "cpu": 1.0,
    "mem_bytes": 2 * GIB,
    "session_hours": 8.0,
    "export_bytes": 10 * MIB,
    "logprob_calls_per_day": 2000,
    # A day of ordinary JupyterLab use (the application itself, plots, tables) is a few tens of MB;
    # pulling a dataset out through the browser is more.
    "view_bytes_per_day": 128 * MIB,
    "work_bytes": 2 * GIB,
    "activation_bytes_per_day": 16 * MIB,
    "tier": DEFAULT_TIER,
}

# field -> (type, smallest allowed value, whether that smallest value itself is excluded)
LIMITS: dict[str, tuple[type, float, bool]] = {
    "tokens_total": (int, 0, False),
    "tokens_per_day": (int, 0, False),
    "requests_per_minute": (int, 1, False),
    "max_tokens_per_request": (int, 1, False),
    "epsilon": (float, 0, False),
    "delta": (float, 0, False),
    "cpu": (float, 0, True),
    "mem_bytes": (int, 64 * MIB, False),
    "session_hours": (float, 0, True),
    "export_bytes": (int, 0, False),
    "logprob_calls_per_day": (int, 0, False),
    "view_bytes_per_day": (int, 0, False),
    "work_bytes": (int, 16 * MIB, False),
    "activation_bytes_per_day": (int, 0, False),
}
# Every field of a grant that `set_grant` takes: the numbers above, and the tier (a choice).
FIELDS = (*LIMITS, "tier")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Docker-style sizes: `4G`, `512m`, `1.5GiB`, or plain bytes. Units are binary (1G = 2^30)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise BadInput(f"bad size {text!r}: use a number with an optional unit, e.g. 4G or 512M")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": MIB, "g": GIB, "t": 1024 * GIB}[unit])


def format_size(n: int) -> str:
    for unit, size in (("T", 1024 * GIB), ("G", GIB), ("M", MIB), ("K", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def validate_tier(value: Any) -> str:
    """A tier's name, as given, if it is one of TIERS."""
    if value not in TIERS:
        raise BadInput(f"tier must be one of {', '.join(TIERS)}, not {value!r}")
    return value


def validate(field: str, value: Any) -> Any:
    if field == "tier":
        return validate_tier(value)
    kind, smallest, exclusive = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise BadInput(f"{field} must be a number")
    if kind is int and float(value) != int(value):
        raise BadInput(f"{field} must be a whole number, not {value}")
    value = kind(value)
    if value < smallest or (exclusive and value == smallest):
        bound = f"more than {smallest:g}" if exclusive else f"at least {smallest:g}"
        raise BadInput(f"{field} must be {bound}, not {value:g}")
    if field == "delta" and value >= 1:
        raise BadInput(f"delta must be below 1, not {value:g}")
    return value


def set_grant(session: Session, actor: str, slug: str, **changes: Any) -> Grant:
    """Create or change a project's grant; unset fields keep their value (or get DEFAULTS)."""
    require_role(session, actor)
    project = get_project(session, slug)
    require_live(project, "change its grant")
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise BadInput(f"unknown grant field {sorted(unknown)[0]!r}")
    changes = {field: validate(field, value) for field, value in changes.items() if value is not None}
    grant = session.get(Grant, project.id)
    created = grant is None
    before = {} if created else grant_values(grant)
    if created:
        grant = Grant(project_id=project.id, updated_by=actor, **{**DEFAULTS, **changes})
    else:
        for field, value in changes.items():
            setattr(grant, field, value)
        grant.updated_by, grant.updated_at = actor, utcnow()
    after = grant_values(grant)
    if not created and after == before:
        return grant
    session.add(grant)
    session.flush()
    diff = {k: {"from": before.get(k), "to": v} for k, v in after.items() if before.get(k) != v}
    audit.append(session, actor=actor, action="grant.set", subject=f"project:{slug}",
                 details={"created": created, "changes": diff})
    return grant


def get_grant(session: Session, slug: str) -> Grant:
    grant = session.get(Grant, get_project(session, slug).id)
    if grant is None:
        raise NotFound(f"project {slug!r} has no grant yet: set one with `enclave grant set {slug}`")
    return grant


def grant_values(grant: Grant) -> dict[str, Any]:
    return {field: getattr(grant, field) for field in FIELDS}


def grant_json(grant: Grant) -> dict[str, Any]:
    return {**grant_values(grant), "mem": format_size(grant.mem_bytes),
            "view_per_day": format_size(grant.view_bytes_per_day), "work": format_size(grant.work_bytes),
            "activations_per_day": format_size(grant.activation_bytes_per_day),
            "updated_at": iso(grant.updated_at), "updated_by": grant.updated_by}


# --- tiers per model ------------------------------------------------------------------------------
# A grant's tier applies to every model; a project may have a different tier for one model (a row
# of GrantModelTier), e.g. internals on a small model and sample on a large one. "inherit" removes
# the exception.
INHERIT = "inherit"


def model_tiers(session: Session, project_id: int) -> dict[str, str]:
    """The project's per-model exceptions: model name -> tier."""
    rows = session.exec(select(GrantModelTier).where(GrantModelTier.project_id == project_id)).all()
    return {row.model: row.tier for row in rows}


def tier_for(session: Session, grant: Grant, model: str | None) -> str:
    """The project's tier for `model` (None: the grant's own tier)."""
    if model is None:
        return grant.tier
    row = session.exec(select(GrantModelTier).where(GrantModelTier.project_id == grant.project_id,
                                                    GrantModelTier.model == model)).first()
    return row.tier if row is not None else grant.tier


def set_model_tier(session: Session, actor: str, slug: str, model: str, tier: str) -> str:
    """Give project `slug` tier `tier` for `model` (INHERIT: the grant's tier again); returns the
    tier that now applies. The model need not be in the catalog yet (the gateway's default model
    may not be), but its name must be a plausible one."""
    require_role(session, actor)
    project = get_project(session, slug)
    require_live(project, "change its grant")
    grant = get_grant(session, slug)
    model = (model or "").strip()
    if not MODEL_NAME_RE.match(model):
        raise BadInput(f"bad model name {model!r}: 1-200 letters, digits, '.', '_', '-' or '/'")
    if tier != INHERIT:
        tier = validate_tier(tier)
    row = session.exec(select(GrantModelTier).where(GrantModelTier.project_id == project.id,
                                                    GrantModelTier.model == model)).first()
    before = row.tier if row is not None else None
    if tier == INHERIT:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(GrantModelTier(project_id=project.id, model=model, tier=tier, set_by=actor))
    else:
        row.tier, row.set_by, row.set_at = tier, actor, utcnow()
        session.add(row)
    after = None if tier == INHERIT else tier
    if before != after:
        session.flush()
        audit.append(session, actor=actor, action="grant.model_tier", subject=f"project:{slug}",
                     details={"model": model, "from": before, "to": after, "grant_tier": grant.tier})
    return after or grant.tier
