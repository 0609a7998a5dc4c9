"""Seed the embedded enclave with a demo operator, reviewer and scholar in an approved project.

Idempotent: what already exists is left alone, so `make up` can run any number of times. Every
change goes through the registry's own functions, so the demo's history is in the audit log like
anyone else's.
"""

from __future__ import annotations

import datetime as dt
import string
from pathlib import Path

from sqlalchemy.engine import Engine

from enclave.registry import grants, lifecycle, people, projects
from enclave.registry.clock import end_of_day, last_day, utcnow
from enclave.registry.db import session_scope
from enclave.errors import NotFound
from enclave.registry.models import ProjectStatus

OPERATOR, REVIEWER, REVIEWER2, SCHOLAR = "operator", "reviewer", "reviewer2", "scholar"
PROJECT = "demo"
DEMO_PEOPLE = (
    (OPERATOR, "Olive Operator", ["operator"]),
    (REVIEWER, "Rafael Reviewer", ["reviewer"]),
    # A second, independent reviewer: exports with a block or warn finding need two approvals.
    (REVIEWER2, "Rosa Reviewer", ["reviewer"]),
    (SCHOLAR, "Sofia Scholar", ["scholar"]),
)
DEMO_GRANT = dict(tokens_total=500_000, tokens_per_day=100_000, requests_per_minute=120, max_tokens_per_request=512,
                  epsilon=3.0, delta=1e-6, cpu=1.0, mem_bytes=2 * grants.GIB, session_hours=8.0,
                  export_bytes=20 * grants.MIB)


def seed_demo(engine: Engine, now: dt.datetime | None = None) -> list[str]:
    """Create what is missing; return lines saying what was done."""
    now = now or utcnow()
    report: list[str] = []
    with session_scope(engine) as s:
        if not people.operators_exist(s):
            people.add_person(s, OPERATOR, OPERATOR, "Olive Operator", "operator@enclave.example", roles=["operator"], bootstrap=True)
            report.append(f"created operator {OPERATOR}")
        actor = OPERATOR if people.find_person(s, OPERATOR) else next(
            p.username for p in people.list_people(s) if p.has_role(people.Role.operator))
        for username, name, roles in DEMO_PEOPLE:
            if people.find_person(s, username) is None:
                people.add_person(s, actor, username, name, f"{username}@enclave.example", "Demo University", roles)
                report.append(f"created {roles[0]} {username}")
        try:
            project = projects.get_project(s, PROJECT)
        except NotFound:
            project = projects.create_project(s, actor, PROJECT, "Demo: what does the model remember?", SCHOLAR,
                                              "Measure memorisation of synthetic records in the demo GPT-2.")
            report.append(f"proposed project {PROJECT}")
        if lifecycle.status_of(project, now) is ProjectStatus.proposed:
            projects.transition(s, actor, PROJECT, "approve", until=end_of_day((now + dt.timedelta(days=365)).date()))
            report.append(f"approved project {PROJECT}")
        try:
            grants.get_grant(s, PROJECT)
        except NotFound:
            grants.set_grant(s, actor, PROJECT, **DEMO_GRANT)
            report.append(f"set the grant of {PROJECT}")
        status = lifecycle.status_of(project, now).value
        expires = last_day(project.expires_at) or "-"
    report.append(f"project {PROJECT}: {status} until {expires}; members: {SCHOLAR} (PI); reviewers: {REVIEWER}, {REVIEWER2}; operator: {OPERATOR}")
    return report


DEMO_DATASET = "demo-people"


def seed_demo_dataset(engine: Engine, people_csv) -> list[str]:
    """Register the demo's synthetic confidential dataset and let the demo project use it."""
    from enclave.demo.data import QUASI_IDENTIFIERS
    from enclave.registry import datasets

    report: list[str] = []
    with session_scope(engine) as s:
        actor = next(p.username for p in people.list_people(s) if p.has_role(people.Role.operator))
        try:
            datasets.get_dataset(s, DEMO_DATASET)
        except NotFound:
            datasets.register(s, actor, DEMO_DATASET, str(people_csv), QUASI_IDENTIFIERS, "restricted")
            report.append(f"registered dataset {DEMO_DATASET} ({people_csv}); quasi-identifiers: {', '.join(QUASI_IDENTIFIERS)}")
        project = projects.get_project(s, PROJECT)
        if DEMO_DATASET not in {d.name for d in datasets.datasets_for(s, project)}:
            datasets.allow(s, actor, DEMO_DATASET, PROJECT)
            report.append(f"project {PROJECT} may use {DEMO_DATASET}")
    return report


# Access by application: a demo call with a pool, an applicant and two panel members at other
# institutions than the applicant's (one at the same one would be flagged as conflicted).
APPLICANT, PANEL1, PANEL2 = "applicant", "panel1", "panel2"
ACCESS_PEOPLE = (  # username, name, affiliation, roles
    (APPLICANT, "Ada Applicant", "Demo University", ["applicant"]),
    (PANEL1, "Pia Panel", "Institute of Panels", ["panel"]),
    (PANEL2, "Paul Panel", "College of Reviewers", ["panel"]),
)
DEMO_CALL = "demo-call"
DEMO_CALL_POOL = 1_000_000
DEMO_CALL_DAYS = 90


def seed_demo_call(engine: Engine, now: dt.datetime | None = None) -> list[str]:
    """The demo call (open for DEMO_CALL_DAYS, a pool of DEMO_CALL_POOL tokens, tiers sample and
    score) and its cast; what exists is left alone."""
    from enclave.registry import calls

    now = now or utcnow()
    report: list[str] = []
    with session_scope(engine) as s:
        actor = next(p.username for p in people.list_people(s) if p.has_role(people.Role.operator))
        for username, name, affiliation, roles in ACCESS_PEOPLE:
            if people.find_person(s, username) is None:
                people.add_person(s, actor, username, name, f"{username}@enclave.example", affiliation, roles)
                report.append(f"created {roles[0]} {username} ({affiliation})")
        try:
            call = calls.get_call(s, DEMO_CALL)
        except NotFound:
            call = calls.open_call(s, actor, DEMO_CALL, "Demo call: memorisation in the demo GPT-2",
                                   end_of_day((now + dt.timedelta(days=DEMO_CALL_DAYS)).date()), DEMO_CALL_POOL,
                                   ["sample", "score"], now=now)
            report.append(f"opened call {DEMO_CALL} ({DEMO_CALL_POOL:,} tokens)")
        state = "taking applications" if calls.accepting(call, now) else "not taking applications"
        report.append(f"call {DEMO_CALL}: {state} until {last_day(call.closes_at)}; applicant: {APPLICANT}; "
                      f"panel: {PANEL1}, {PANEL2}")
    return report


# The demo's two models in the catalog, at different stages so that staged release is real: the
# demo GPT-2 (the gateway's default) at general, any tier sees it; GPT-2 124M's architecture with
# random weights at partner, which needs the internals tier (the demo project's grant has score).
DEMO_MODEL, LARGE_MODEL = "demo-gpt2", "gpt2-124m-random"
MODEL_CARDS = Path(__file__).parent / "model_cards"


def demo_model_cards(demo_manifest: dict, large_manifest: dict) -> dict[str, str]:
    """The two cards, with the numbers of these builds filled in."""
    small = string.Template((MODEL_CARDS / f"{DEMO_MODEL}.md").read_text(encoding="utf-8")).substitute(
        final_loss=demo_manifest.get("final_loss"), n_parameters=f"{demo_manifest.get('n_parameters', 0):,}",
        steps=demo_manifest.get("steps"))
    large = string.Template((MODEL_CARDS / f"{LARGE_MODEL}.md").read_text(encoding="utf-8")).substitute(
        eval_loss=large_manifest["eval_loss"], eval_perplexity=large_manifest["eval_perplexity"],
        n_parameters=f"{large_manifest['n_parameters']:,}")
    return {DEMO_MODEL: small, LARGE_MODEL: large}


def seed_demo_models(engine: Engine, demo_model_dir, large_model_dir, demo_manifest: dict,
                     large_manifest: dict) -> list[str]:
    """Onboard the two demo models (cards, checklist signed off by the demo operator); what is in
    the catalog already is left alone."""
    from enclave.registry import catalog

    cards = demo_model_cards(demo_manifest, large_manifest)
    checklist = (MODEL_CARDS / "checklist.toml").read_text(encoding="utf-8")
    report: list[str] = []
    with session_scope(engine) as s:
        actor = next(p.username for p in people.list_people(s) if p.has_role(people.Role.operator))
        for name, directory, stage in ((DEMO_MODEL, demo_model_dir, "general"),
                                       (LARGE_MODEL, large_model_dir, "partner")):
            entry = catalog.find_model(s, name)
            if entry is None:
                entry = catalog.onboard(s, actor=actor, name=name, directory=directory, card=cards[name],
                                        checklist=checklist, stage=stage, cosigned_by=people.SYSTEM_ACTOR,
                                        cosign_via="the demo's own seeding (enclave up)")
                report.append(f"onboarded model {name} at stage {stage} ({entry.parameters:,} parameters)")
            elif entry.directory != str(Path(directory).resolve()):
                report.append(f"model {name} in the catalog is served from {entry.directory}, not {directory}")
            report.append(f"model {name}: {entry.stage}, for projects at tier {catalog.STAGE_TIERS[entry.stage]} "
                          f"or above")
    return report
