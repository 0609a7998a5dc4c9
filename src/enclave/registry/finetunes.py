"""Fine-tune jobs on the record: creating them, starting them (which charges the ledger), their
progress, and how they end.

**When the charge happens.** A DP fine-tune is charged its (epsilon, delta) once, in the same
transaction that moves the job from queued to running (`start`), before any training step: the
ledger's lock (`privacy.charge`) makes the budget check and the spend one step, so two jobs (or a
job and DP queries) can never together overspend, and the job row records the spend's id. A job
is started only from `queued`, by a conditional update, so no job is charged twice. If training
then fails, the charge stays, and the failed job says so: the data was already read by a process
that may have written partial weights, and a refund would let a crashing job be retried for free.
Charging at the end instead would let a budget be overdrawn by jobs running side by side, and a
crash after training but before the charge would lose it silently.

A non-private job (an operator's override) charges nothing: no finite epsilon describes it. It is
marked `non_private` with the operator's name, on the job, its audit events and the model.

Who may ask: an operator through `enclave finetune` (via "cli"), or a scholar of the project from a
notebook through the privacy service (via "service", with the registry's access decision made by
the service). A scholar's job is charged to that scholar; the decision is made again at start, so
a revocation while the job waits in the queue stops it.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from enclave.errors import BadInput, Conflict, NotFound, Refused
from enclave.registry import audit, catalog
from enclave.registry import privacy as ledger
from enclave.registry.access import Access, resolve
from enclave.registry.clock import iso, utcnow
from enclave.registry.grants import TIERS, tier_for
from enclave.registry.lifecycle import status_of
from enclave.registry.models import (
    Dataset, FinetuneJob, FinetuneStatus, Grant, Project, ProjectStatus, Role,
)
from enclave.registry.people import require_role
from enclave.registry.projects import get_project

MECHANISM = "dp-sgd"
VIA = ("cli", "service")
TIER = "finetune"  # the grant tier that includes DP fine-tuning (DESIGN §2a)


class NotQueued(Conflict):
    """`start` found the job no longer queued: another worker (or an operator) got to it first."""


class TierRequired(Refused):
    """The project's grant tier does not include fine-tuning (HTTP 403)."""

    code = "tier_required"


def require_tier(session: Session, granted: Access, base_model: str) -> None:
    """Refuse a project whose tier for `base_model` (its grant's, unless the grant names another for
    that model) is below `finetune`, naming the tier needed."""
    tier = tier_for(session, granted.grant, base_model)
    if TIERS.index(tier) < TIERS.index(TIER):
        slug = granted.project.slug
        raise TierRequired(f"fine-tuning {base_model!r} needs the {TIER!r} tier; project {slug!r} has the {tier!r} "
                           f"tier for it (tiers, least first: {', '.join(TIERS)}). An operator can raise it: "
                           f"enclave grant set {slug} --tier {TIER} (or --model {base_model} --tier {TIER})")


def _subject(job: FinetuneJob) -> str:
    return f"finetune:{job.id}"


def operator_access(session: Session, operator: str | None, slug: str) -> Access:
    """An operator acting for a project (`enclave finetune`): the project must be approved and
    have a grant, as for a scholar, but the operator need not be a member."""
    person = require_role(session, operator)
    project = get_project(session, slug)
    status = status_of(project)
    if status is not ProjectStatus.approved:
        raise Conflict(f"project {slug!r} is {status.value}: it cannot fine-tune now")
    grant = session.get(Grant, project.id)
    if grant is None:
        raise Conflict(f"project {slug!r} has no grant")
    return Access(person=person, project=project, grant=grant)


def create(session: Session, granted: Access, *, via: str, dataset: str, base_model: str, epsilon: Any,
           delta: Any, examples: int, params: dict[str, Any], non_private: bool = False,
           override_by: str | None = None, now: dt.datetime | None = None) -> FinetuneJob:
    """Record a queued job after the checks that need no training: the dataset (registered and
    given to the project), epsilon > 0 and delta < 1/n for its `examples`, a budget that can pay,
    or, for a non-private job, an operator's override. Raises before anything is recorded."""
    if via not in VIA:
        raise BadInput(f"unknown origin {via!r}")
    now = now or utcnow()
    project = granted.project
    require_tier(session, granted, base_model)
    data: Dataset = ledger.usable_dataset(session, project, dataset)
    if non_private:
        if via != "cli":
            raise BadInput("a non-private fine-tune needs an operator's override (enclave finetune --non-private)")
        if not override_by:
            raise BadInput("a non-private fine-tune needs --override-by OPERATOR")
        require_role(session, override_by, Role.operator)
        eps, dlt = None, 0.0
    else:
        if override_by:
            raise BadInput("--override-by only goes with --non-private")
        eps, dlt = ledger.check_cost(epsilon, delta, examples)
        ledger.check_affordable(session, project, eps, dlt)
    job = FinetuneJob(id=secrets.token_hex(8), project_id=project.id, dataset_id=data.id, dataset=data.name,
                      base_model=base_model, epsilon=eps, delta=dlt, non_private=non_private,
                      override_by=override_by if non_private else None,
                      params=audit.canonical_json(params), examples=examples, requested_by=granted.person.username,
                      via=via, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    details = {"project": project.slug, "dataset": data.name, "base_model": base_model, "epsilon": eps,
               "delta": dlt, "examples": examples, "via": via, "non_private": non_private}
    audit.append(session, actor=granted.person.username, action="finetune.create", subject=_subject(job),
                 details=details)
    if non_private:
        audit.append(session, actor=override_by, action="finetune.non_private_override", subject=_subject(job),
                     details={"project": project.slug, "dataset": data.name, "requested_by": granted.person.username})
    return job


def get(session: Session, job_id: str) -> FinetuneJob:
    job = session.get(FinetuneJob, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"unknown fine-tune job {job_id!r}")
    return job


def _access_at_start(session: Session, job: FinetuneJob) -> Access:
    project = get_project_by_id(session, job.project_id)
    if job.via == "cli":
        return operator_access(session, job.requested_by, project.slug)
    return resolve(session, job.requested_by, project.slug)


def get_project_by_id(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"unknown project id {project_id}")
    return project


def start(session: Session, job_id: str, *, worker: str, model_name: str,
          now: dt.datetime | None = None) -> FinetuneJob:
    """Move a queued job to running and charge its privacy cost, in this one transaction (see the
    module's note). Raises (and, rolled back, leaves the job queued and nothing charged) when the
    access, the dataset or the budget no longer allows it: the caller then fails the job."""
    now = now or utcnow()
    claimed = session.execute(update(FinetuneJob).where(FinetuneJob.id == job_id,
                                                        FinetuneJob.status == FinetuneStatus.queued.value)
                              .values(status=FinetuneStatus.running.value, worker=worker, started_at=now,
                                      updated_at=now, model_name=model_name))
    if claimed.rowcount != 1:
        raise NotQueued(f"fine-tune job {job_id!r} is not queued")
    job = get(session, job_id)
    granted = _access_at_start(session, job)
    require_tier(session, granted, job.base_model)  # lowered while the job waited: it does not start
    dataset = ledger.usable_dataset(session, granted.project, job.dataset)
    if not job.non_private:
        spend = ledger.charge(session, granted, dataset, mechanism=MECHANISM,
                              query={"finetune": job.id, "base_model": job.base_model, "examples": job.examples,
                                     "params": json.loads(job.params)},
                              epsilon=job.epsilon, delta=job.delta, result={"finetune": job.id, "model": model_name},
                              now=now)
        job.spend_id = spend.id
    session.add(job)
    session.flush()
    audit.append(session, actor=job.requested_by, action="finetune.start", subject=_subject(job),
                 details={"worker": worker, "spend": job.spend_id, "model": model_name,
                          "non_private": job.non_private})
    return job


def next_queued(session: Session) -> str | None:
    """The oldest queued job submitted through the service, if any (its id; start it with `start`)."""
    job = session.exec(select(FinetuneJob).where(FinetuneJob.status == FinetuneStatus.queued.value,
                                                 FinetuneJob.via == "service")
                       .order_by(FinetuneJob.created_at, FinetuneJob.id)).first()
    return job.id if job else None


def record_progress(session: Session, job_id: str, *, step: int, total: int, loss: float | None,
                    epsilon_spent: float | None, now: dt.datetime | None = None) -> None:
    session.execute(update(FinetuneJob).where(FinetuneJob.id == job_id,
                                              FinetuneJob.status == FinetuneStatus.running.value)
                    .values(step=step, total_steps=total, loss=loss, epsilon_spent=epsilon_spent,
                            updated_at=now or utcnow()))


# The accountant's epsilon may exceed the target it was calibrated to by its numerical error
# (Opacus's PRV accountant: eps_error 0.01 by default, far below this); beyond it, refuse.
EPSILON_SLACK = 1.001


def finish(session: Session, job_id: str, *, model_dir: str, steps: int, loss: float | None,
           epsilon_spent: float | None, exposure: dict[str, Any], membership: dict[str, Any],
           message: str = "", now: dt.datetime | None = None) -> FinetuneJob:
    """Record a trained job as done and register its model. A private job whose accountant
    counted more than the epsilon charged (beyond `EPSILON_SLACK`) is refused: its model is not
    registered, and the caller fails the job."""
    now = now or utcnow()
    job = get(session, job_id)
    if job.status != FinetuneStatus.running.value:
        raise Conflict(f"fine-tune job {job_id!r} is {job.status}, not running")
    if not job.non_private and (epsilon_spent is None or epsilon_spent > job.epsilon * EPSILON_SLACK):
        raise Refused(f"the accountant counted epsilon {epsilon_spent} for job {job_id!r}, more than the "
                      f"{job.epsilon:g} charged: its model is not registered")
    job.status = FinetuneStatus.done.value
    job.step, job.total_steps = steps, max(job.total_steps, steps)
    job.loss, job.epsilon_spent = loss, epsilon_spent
    job.model_dir = model_dir
    job.exposure_report = json.dumps(exposure, sort_keys=True)
    job.membership_report = json.dumps(membership, sort_keys=True)
    job.message = message
    job.updated_at = job.finished_at = now
    session.add(job)
    session.flush()
    project = get_project_by_id(session, job.project_id)
    # The catalog serves it to this project only; its weights join the review's fingerprints there.
    catalog.register_finetune(session, name=job.model_name, directory=model_dir, base_model=job.base_model,
                              project_slug=project.slug, epsilon=job.epsilon,
                              delta=None if job.non_private else job.delta, non_private=job.non_private,
                              actor=job.override_by or job.requested_by, report=report_summary(job, exposure, membership))
    table = [{k: row[k] for k in ("repeats", "exposure_rank_max", "exposure_skewnorm_max")}
             for row in exposure.get("table", [])]
    audit.append(session, actor=job.requested_by, action="finetune.done", subject=_subject(job),
                 details={"model": job.model_name, "epsilon_spent": epsilon_spent, "non_private": job.non_private,
                          "exposure": table, "report_sha256": audit.sha256_text(job.exposure_report)})
    return job


def report_summary(job: FinetuneJob, exposure: dict[str, Any], membership: dict[str, Any]) -> dict[str, Any]:
    """What the catalog keeps with the model: the job, its guarantee and the audits' headline numbers."""
    worst = membership.get("worst_case") or {}
    threshold = (membership.get("loss_threshold") or {}).get("metrics") or {}
    return {"finetune_job": job.id, "dataset": job.dataset, "examples": job.examples, "steps": job.step,
            "epsilon_target": job.epsilon, "epsilon_spent": job.epsilon_spent, "delta": job.delta,
            "non_private": job.non_private, "override_by": job.override_by,
            "exposure": exposure.get("table", []), "exposure_candidates": exposure.get("candidates"),
            "membership": {"tool": membership.get("tool"), "worst_case_auc": worst.get("auc_mean"),
                           "loss_threshold_auc": threshold.get("AUC"), "skipped": membership.get("skipped")}}


def fail(session: Session, job_id: str, message: str, now: dt.datetime | None = None, *,
         actor: str | None = None) -> FinetuneJob:
    """End a queued or running job as failed; a charge already made stays, and the message says so.
    The audit event names `actor` (an operator closing it), else the job's requester."""
    now = now or utcnow()
    job = get(session, job_id)
    if job.status in (FinetuneStatus.done.value, FinetuneStatus.failed.value):
        return job
    if job.spend_id:
        message = f"{message} (its privacy charge, spend {job.spend_id}, stays on the ledger)"
    job.status = FinetuneStatus.failed.value
    job.message = message[:4000]
    job.updated_at = job.finished_at = now
    session.add(job)
    session.flush()
    audit.append(session, actor=actor or job.requested_by, action="finetune.fail", subject=_subject(job),
                 details={"message": job.message, "spend": job.spend_id, "by_operator": actor is not None})
    return job


def operator_fail(session: Session, operator: str | None, job_id: str, reason: str,
                  now: dt.datetime | None = None) -> FinetuneJob:
    """An operator closes a job that no process will finish (e.g. left running by a killed
    `enclave finetune`, on another host than the service's). Audited; a charge made stays."""
    require_role(session, operator)
    if not reason.strip():
        raise BadInput("say why the job is failed (--reason)")
    job = get(session, job_id)
    if job.status not in (FinetuneStatus.queued.value, FinetuneStatus.running.value):
        raise Conflict(f"fine-tune job {job_id!r} is {job.status} already")
    return fail(session, job_id, f"failed by operator {operator}: {reason.strip()}", now=now, actor=operator)


def parse_worker(worker: str | None) -> tuple[str, int] | None:
    """("host", pid) of a job's `worker` column ("host:pid"), None if it is not of that form."""
    host, _, pid = (worker or "").rpartition(":")
    return (host, int(pid)) if host and pid.isdigit() else None


def fail_orphans(session: Session, *, host: str, alive: Callable[[int], bool],
                 now: dt.datetime | None = None) -> list[str]:
    """Fail the running jobs whose worker was a process on `host` that is no longer `alive` (called
    when the service starts). A job run by a live process, or on another host (another service
    replica, an operator's `enclave finetune` elsewhere), is left alone: what cannot be checked
    here is closed by an operator (`operator_fail`)."""
    running = session.exec(select(FinetuneJob).where(FinetuneJob.status == FinetuneStatus.running.value)).all()
    failed = []
    for job in running:
        where = parse_worker(job.worker)
        if where is None or where[0] != host or alive(where[1]):
            continue
        fail(session, job.id, f"the process that ran it ({job.worker}) stopped while it ran", now=now)
        failed.append(job.id)
    return failed


def jobs(session: Session, slug: str | None = None) -> list[FinetuneJob]:
    query = select(FinetuneJob).order_by(FinetuneJob.created_at, FinetuneJob.id)
    if slug is not None:
        query = query.where(FinetuneJob.project_id == get_project(session, slug).id)
    return list(session.exec(query).all())


def job_json(session: Session, job: FinetuneJob, *, reports: bool = True) -> dict[str, Any]:
    project = get_project_by_id(session, job.project_id)
    out = {"id": job.id, "project": project.slug, "dataset": job.dataset, "base_model": job.base_model,
           "epsilon": job.epsilon, "delta": job.delta, "non_private": job.non_private, "override_by": job.override_by,
           "params": json.loads(job.params), "examples": job.examples, "status": job.status,
           "progress": {"step": job.step, "total": job.total_steps, "loss": job.loss,
                        "epsilon_spent": job.epsilon_spent},
           "message": job.message, "spend": job.spend_id, "model": job.model_name, "model_dir": job.model_dir,
           "requested_by": job.requested_by, "via": job.via, "created_at": iso(job.created_at),
           "started_at": iso(job.started_at), "finished_at": iso(job.finished_at)}
    if reports:
        out["exposure"] = json.loads(job.exposure_report) if job.exposure_report else None
        out["membership"] = json.loads(job.membership_report) if job.membership_report else None
    return out
