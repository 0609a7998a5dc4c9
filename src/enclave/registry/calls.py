"""Calls for applications: a window, a pool of model tokens, the tiers on offer, the rubric the
panel scores by and the data-use terms applicants accept, each copied into the call's row (with
its SHA-256) when it opens so that a running call is always judged by what it opened with."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from enclave.errors import BadInput, Conflict, NotFound
from enclave.registry import audit
from enclave.registry.clock import iso, last_day, utcnow
from enclave.registry.models import AccessCall, CallState, Tier
from enclave.registry.people import require_role

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")
# The shipped rubric and terms, beside the source tree (like output_review/policy.toml).
ACCESS_DIR = Path(__file__).resolve().parents[3] / "access"
DEFAULT_RUBRIC = ACCESS_DIR / "rubric.toml"
DEFAULT_TERMS = ACCESS_DIR / "terms.md"
# Largest pool one call may hold: far above any real budget, well inside a 64-bit column.
MAX_POOL = 10**15


@dataclasses.dataclass(frozen=True)
class Criterion:
    name: str
    weight: float
    text: str


@dataclasses.dataclass(frozen=True)
class Rubric:
    """The rubric and award policy of one call (see access/rubric.toml for what each value means)."""

    version: str
    criteria: tuple[Criterion, ...]
    best: int
    worst: int
    fund_threshold: float
    min_members: int
    min_members_high_tier: int
    high_tiers: frozenset[str]
    disagreement_range: float
    tier_caps: dict[str, int]
    award_days: int
    training_valid_days: int
    appeal_days: int

    def panel_size(self, tier: str) -> int:
        return self.min_members_high_tier if tier in self.high_tiers else self.min_members

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rubric": {"scale_best": self.best, "scale_worst": self.worst, "fund_threshold": self.fund_threshold,
                       "criteria": [dataclasses.asdict(c) for c in self.criteria]},
            "panel": {"min_members": self.min_members, "min_members_high_tier": self.min_members_high_tier,
                      "high_tiers": sorted(self.high_tiers), "disagreement_range": self.disagreement_range},
            "tiers": dict(self.tier_caps),
            "awards": {"days": self.award_days, "training_valid_days": self.training_valid_days,
                       "appeal_days": self.appeal_days},
        }


def _number(data: dict, key: str, where: str, *, whole: bool = False, positive: bool = True) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"rubric: {where}.{key} must be a number")
    if whole and int(value) != value:
        raise BadInput(f"rubric: {where}.{key} must be a whole number")
    if positive and value <= 0:
        raise BadInput(f"rubric: {where}.{key} must be above 0")
    return int(value) if whole else float(value)


def parse_rubric(data: dict[str, Any]) -> Rubric:
    """Validate a rubric document (the TOML file, or a call's stored copy) into a `Rubric`."""
    if not isinstance(data.get("version"), str) or not data["version"].strip():
        raise BadInput("rubric: needs a version string")
    section = data.get("rubric") or {}
    panel = data.get("panel") or {}
    awards = data.get("awards") or {}
    tiers = data.get("tiers") or {}
    best, worst = _number(section, "scale_best", "rubric", whole=True), _number(section, "scale_worst", "rubric", whole=True)
    if (best, worst) != (1, 9):
        raise BadInput("rubric: the scale is 1 (best) to 9 (worst)")
    criteria = []
    for i, item in enumerate(section.get("criteria") or []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]{0,63}$", name):
            raise BadInput(f"rubric: criterion {i + 1} needs a name of lower-case letters, digits and '_'")
        criteria.append(Criterion(name, _number(item, "weight", f"criteria.{name}"), str(item.get("text", ""))))
    if not criteria:
        raise BadInput("rubric: needs at least one criterion")
    if len({c.name for c in criteria}) != len(criteria):
        raise BadInput("rubric: criterion names must be unique")
    unknown = set(tiers) - {t.value for t in Tier}
    if unknown:
        raise BadInput(f"rubric: unknown tier {sorted(unknown)[0]!r} (tiers: {', '.join(t.value for t in Tier)})")
    caps = {t.value: _number(tiers, t.value, "tiers", whole=True) for t in Tier if t.value in tiers}
    high = panel.get("high_tiers", [])
    if not isinstance(high, list) or set(high) - {t.value for t in Tier}:
        raise BadInput("rubric: panel.high_tiers must list tier names")
    threshold = _number(section, "fund_threshold", "rubric")
    if not best <= threshold <= worst:
        raise BadInput(f"rubric: rubric.fund_threshold must lie on the scale, {best} to {worst}")
    rubric = Rubric(
        version=data["version"].strip(), criteria=tuple(criteria), best=best, worst=worst, fund_threshold=threshold,
        min_members=_number(panel, "min_members", "panel", whole=True),
        min_members_high_tier=_number(panel, "min_members_high_tier", "panel", whole=True),
        high_tiers=frozenset(high), disagreement_range=_number(panel, "disagreement_range", "panel"),
        tier_caps=caps, award_days=_number(awards, "days", "awards", whole=True),
        training_valid_days=_number(awards, "training_valid_days", "awards", whole=True),
        appeal_days=_number(awards, "appeal_days", "awards", whole=True),
    )
    if rubric.min_members < 2:
        raise BadInput("rubric: panel.min_members must be at least 2")
    return rubric


def load_rubric(path: Path | str | None = None) -> tuple[Rubric, str]:
    """The rubric file at `path` (default: the shipped access/rubric.toml) and its SHA-256."""
    path = Path(path) if path is not None else DEFAULT_RUBRIC
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read rubric {str(path)!r}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"rubric {str(path)!r} is not valid TOML: {exc}") from None
    return parse_rubric(data), hashlib.sha256(raw).hexdigest()


def load_terms(path: Path | str | None = None) -> str:
    path = Path(path) if path is not None else DEFAULT_TERMS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read terms {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text.strip():
        raise BadInput(f"the terms file {str(path)!r} is empty")
    return text


def rubric_of(call: AccessCall) -> Rubric:
    return parse_rubric(json.loads(call.rubric))


def parse_tiers(tiers: list[str] | tuple[str, ...]) -> list[str]:
    valid = [t.value for t in Tier]
    bad = [t for t in tiers if t not in valid]
    if bad:
        raise BadInput(f"unknown tier {bad[0]!r}: choose from {', '.join(valid)}")
    return sorted(set(tiers), key=valid.index)


def open_call(
    session: Session, actor: str, slug: str, title: str, closes_at: dt.datetime, pool_tokens: int,
    tiers: list[str] | tuple[str, ...] = (Tier.sample.value,), max_award: int | None = None,
    rubric_path: Path | str | None = None, terms_path: Path | str | None = None, now: dt.datetime | None = None,
) -> AccessCall:
    now = now or utcnow()
    require_role(session, actor)
    if not SLUG_RE.match(slug or ""):
        raise BadInput(f"bad call slug {slug!r}: use 2-41 lower-case letters, digits and '-'")
    if not title.strip():
        raise BadInput("a call needs a title (--title)")
    if closes_at <= now:
        raise BadInput(f"the closing date {last_day(closes_at)} is not in the future")
    if isinstance(pool_tokens, bool) or not isinstance(pool_tokens, int) or not 0 < pool_tokens <= MAX_POOL:
        raise BadInput(f"the token pool must be a whole number from 1 to {MAX_POOL}, not {pool_tokens}")
    tier_list = parse_tiers(list(tiers) or [Tier.sample.value])
    rubric, rubric_sha = load_rubric(rubric_path)
    uncapped = [t for t in tier_list if t not in rubric.tier_caps]
    if uncapped:
        raise BadInput(f"the rubric sets no cap for tier {uncapped[0]!r}")
    if max_award is not None and (isinstance(max_award, bool) or not isinstance(max_award, int) or max_award <= 0):
        raise BadInput(f"--max-award must be a whole number above 0, not {max_award}")
    terms = load_terms(terms_path)
    if session.exec(select(AccessCall).where(AccessCall.slug == slug)).first():
        raise Conflict(f"call {slug!r} already exists")
    call = AccessCall(
        slug=slug, title=title.strip(), opens_at=now, closes_at=closes_at, pool_tokens=pool_tokens,
        tiers=",".join(tier_list), max_award=max_award, rubric=audit.canonical_json(rubric.to_json()),
        rubric_version=rubric.version, rubric_sha256=rubric_sha, terms=terms, terms_sha256=audit.sha256_text(terms),
        created_by=actor,
    )
    session.add(call)
    session.flush()
    audit.append(session, actor=actor, action="call.open", subject=f"call:{slug}", details={
        "title": call.title, "closes_at": iso(closes_at), "pool_tokens": pool_tokens, "tiers": tier_list,
        "max_award": max_award, "rubric_version": rubric.version, "rubric_sha256": rubric_sha,
        "terms_sha256": call.terms_sha256})
    return call


def close_call(session: Session, actor: str, slug: str, now: dt.datetime | None = None) -> AccessCall:
    """Stop taking submissions before the window ends (a call closes by itself at `closes_at`)."""
    now = now or utcnow()
    require_role(session, actor)
    call = get_call(session, slug)
    if call.state == CallState.closed.value:
        raise Conflict(f"call {slug!r} is already closed")
    call.state, call.closed_at, call.closed_by = CallState.closed.value, now, actor
    session.add(call)
    session.flush()
    audit.append(session, actor=actor, action="call.close", subject=f"call:{slug}", details={})
    return call


def accepting(call: AccessCall, now: dt.datetime | None = None) -> bool:
    """Whether the call takes submissions now: open, and its window not yet over."""
    now = now or utcnow()
    return call.state == CallState.open.value and call.opens_at <= now < call.closes_at


def get_call(session: Session, slug: str) -> AccessCall:
    call = session.exec(select(AccessCall).where(AccessCall.slug == slug)).first()
    if call is None:
        raise NotFound(f"unknown call {slug!r}")
    return call


def list_calls(session: Session) -> list[AccessCall]:
    return list(session.exec(select(AccessCall).order_by(AccessCall.slug)).all())


def call_json(call: AccessCall, now: dt.datetime | None = None, *, full: bool = False) -> dict[str, Any]:
    record = {
        "slug": call.slug, "title": call.title, "state": call.state, "accepting": accepting(call, now),
        "opens_at": iso(call.opens_at), "closes_at": iso(call.closes_at), "pool_tokens": call.pool_tokens,
        "tiers": call.tiers.split(","), "max_award": call.max_award, "rubric_version": call.rubric_version,
        "rubric_sha256": call.rubric_sha256, "terms_sha256": call.terms_sha256,
    }
    if full:
        record["rubric"] = json.loads(call.rubric)
        record["terms"] = call.terms
    return record
