"""Fine-tune jobs from submission to a registered model: the glue between the registry's job rows
(`enclave.registry.finetunes`), the training core (`finetune.run`) and the model catalog.

Each step is its own short transaction; training runs outside any transaction:

1. `submit`: decide (the dataset may be used, the base model exists), read the dataset to count
   its training examples (the n of delta < 1/n), then record the queued job with its checks
   (epsilon, delta, budget; an operator's override for a non-private job). Nothing is charged.
2. `execute`: start the job (queued -> running, and the ledger charge, in one transaction), train,
   writing progress at most about once a second, save under $ENCLAVE_HOME/models/finetunes/<name>/,
   audit (canaries, membership), then finish (job done + catalog entry) in one transaction. Any
   failure ends the job as failed, with the message; a charge made at start stays (see
   `registry.finetunes`).

The CLI calls both in its own process; the privacy service queues jobs from notebooks and runs them
one at a time on a worker thread (`Worker`). A job records its worker as "host:pid": when the
service starts it fails the running jobs of dead processes on its own host (`fail_orphans`); a
job left running elsewhere (a killed `enclave finetune` on another machine) is closed by an
operator with `enclave finetune fail ID --reason ...`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from enclave.envsettings import env_int, env_str
from enclave.errors import BadInput, Conflict, UserError
from enclave.privacy import finetune
from enclave.registry import catalog, finetunes
from enclave.registry import privacy as ledger
from enclave.registry.access import Access
from enclave.registry.db import session_scope

log = logging.getLogger("enclave.privacy.jobs")
DEFAULT_BASE = "default"


def max_dataset_bytes() -> int:
    """The largest dataset file a fine-tune reads: $ENCLAVE_PRIVACY_MAX_DATASET_BYTES, as for the
    privacy service's statistics (the service passes its settings' value)."""
    return env_int("ENCLAVE_PRIVACY_MAX_DATASET_BYTES", finetune.DEFAULT_MAX_DATASET_BYTES)


def finetunes_dir(home: Path) -> Path:
    return Path(home) / "models" / "finetunes"


def default_model_dir(home: Path) -> Path:
    """The gateway's default model: $ENCLAVE_MODEL_DIR, else the demo model under $ENCLAVE_HOME."""
    return Path(env_str("ENCLAVE_MODEL_DIR") or Path(home) / "demo" / "model")


def base_model_dir(session, project, base: str, default_dir: Path) -> Path:
    """The directory of the model `project` fine-tunes: a catalog model it may use now (its stage
    and the project's tier for it, or the project's own fine-tune: never another project's), or
    for `default` the gateway's default model (under the same rule when it is in the catalog)."""
    if base == DEFAULT_BASE:
        entry = catalog.find_by_directory(session, default_dir)
        if entry is not None:
            catalog.require_visible(session, project, entry.name)
        return Path(default_dir)
    return Path(catalog.require_visible(session, project, base).directory)


def model_name(job_id: str, slug: str) -> str:
    return f"{slug}-dp-{job_id}"[:128]


def _transaction(engine: Engine, work: Callable[[Any], Any]) -> Any:
    with session_scope(engine) as session:
        return work(session)


def submit(engine: Engine, granted_in: Callable[[Any], Access], *, via: str, dataset: str, epsilon: Any, delta: Any,
           base: str | None, params: finetune.FinetuneParams, default_dir: Path, non_private: bool = False,
           override_by: str | None = None, max_bytes: int | None = None) -> str:
    """Check and queue a fine-tune; the job's id. `granted_in(session)` is the caller's access."""
    params.validate()
    if via == "service" and params.noise_seed is not None:  # a seeded noise is for tests and benchmarks
        raise BadInput("noise_seed is not accepted from notebooks")
    base = base or DEFAULT_BASE

    def decide(s):
        granted = granted_in(s)
        finetunes.require_tier(s, granted, base)  # checked again when recorded; first, as the 403 it is
        data = ledger.usable_dataset(s, granted.project, dataset)
        return data.path, data.sha256, base_model_dir(s, granted.project, base, default_dir)

    path, sha256, base_dir = _transaction(engine, decide)
    if not (Path(base_dir) / "config.json").is_file():
        where = f" at {base_dir}" if via == "cli" else ""  # a notebook is not told the enclave's paths
        raise BadInput(f"the base model {base!r} has no model directory{where}; an operator must look at it")
    finetune.check_base(base_dir, params)
    records = finetune.dataset_records(path, max_records=params.max_records, sha256=sha256,
                                       max_bytes=max_bytes or max_dataset_bytes())
    examples = finetune.training_examples(records, params)
    if examples < 2:
        raise BadInput(f"the dataset has {len(records)} usable records; fine-tuning needs more")
    if via == "service":
        require_audits(params, held_out=len(records) - examples, records=len(records))
    if not non_private:
        # The checks `finetunes.create` makes again, here first so that Opacus's calibration can
        # refuse an epsilon no noise reaches before the job is recorded.
        eps, dlt = ledger.check_cost(epsilon, delta, examples)
        params = dataclasses.replace(params, epsilon=eps, delta=dlt)
        finetune.noise_multiplier(params, examples)

    def record(s):
        granted = granted_in(s)
        job = finetunes.create(s, granted, via=via, dataset=dataset, base_model=base, epsilon=epsilon, delta=delta,
                               examples=examples, params=params.as_json(), non_private=non_private,
                               override_by=override_by)
        return job.id

    return _transaction(engine, record)


MIN_NON_MEMBERS = 10  # membership.attack runs on at least 10 held-out records


def require_audits(params: finetune.FinetuneParams, *, held_out: int, records: int) -> None:
    """A notebook's job cannot switch its audits off: canaries are planted, and enough records are
    held out for the membership-inference attack (which skips below 10 non-members)."""
    if params.canaries_per_repeat < 1:
        raise BadInput("a notebook's fine-tune plants at least 1 canary per repetition count (canaries_per_repeat)")
    if held_out < MIN_NON_MEMBERS or records - held_out < MIN_NON_MEMBERS:
        raise BadInput(f"a notebook's fine-tune holds out at least {MIN_NON_MEMBERS} records for the membership "
                       f"audit; a holdout of {params.holdout:g} keeps {held_out} of {records} records out: "
                       f"raise holdout (or use more records)")


def worker_name() -> str:
    """"host:pid", recorded on a job when it starts: how `fail_orphans` tells a live worker's job
    from an orphan."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (signal 0 checks without sending anything). A
    pid this process has is its own: a job recorded under it is from an earlier process (a
    restarted container reuses pids), so the caller treats it as not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OverflowError:
        return False
    return True


def job_params(job) -> finetune.FinetuneParams:
    """The job's training settings, trained at the (epsilon, delta) the job was checked and charged
    for (its columns), whatever its params JSON says."""
    params = dataclasses.replace(finetune.FinetuneParams.from_json(json.loads(job.params)),
                                 epsilon=job.epsilon, delta=job.delta)
    if params.non_private != (job.epsilon is None) or job.non_private != params.non_private:
        # Raised inside `start`'s transaction: the job is failed, uncharged, rather than trained.
        raise Conflict(f"fine-tune job {job.id}: its epsilon and its non-private mark disagree")
    return params


def execute(engine: Engine, job_id: str, *, home: Path, default_dir: Path,
            on_progress: Callable[[finetune.Progress], None] | None = None,
            max_bytes: int | None = None) -> dict[str, Any]:
    """Run one queued job to its end; the job's JSON afterwards (done or failed). UserErrors that
    stop it before training (access, budget, a dataset file that changed) fail the job uncharged;
    they are not raised. The dataset is read (and checked against its registered SHA-256 and the
    job's count of examples) before the charge, and those very records are what trains."""
    worker = worker_name()

    def read(s):
        job = finetunes.get(s, job_id)
        data = ledger.usable_dataset(s, finetunes.get_project_by_id(s, job.project_id), job.dataset)
        return data.path, data.sha256, job_params(job)

    # Before the charge: any refusal here is raised again once the job is ours (in `start`).
    early: UserError | None = None
    records: list[str] = []
    try:
        path, sha256, params = _transaction(engine, read)
        records = finetune.dataset_records(path, max_records=params.max_records, sha256=sha256,
                                           max_bytes=max_bytes or max_dataset_bytes())
    except UserError as exc:
        early = exc

    def start(s):
        job = finetunes.get(s, job_id)
        slug = finetunes.get_project_by_id(s, job.project_id).slug
        started = finetunes.start(s, job_id, worker=worker, model_name=model_name(job_id, slug))
        if early is not None:  # rolls the start and its charge back: the job is failed uncharged
            raise early
        params = job_params(started)
        examples = finetune.training_examples(records, params)
        if examples != started.examples:
            raise Conflict(f"the dataset gives {examples} training examples now, not the {started.examples} the "
                           f"job was checked for (delta < 1/n); submit it again")
        project = finetunes.get_project_by_id(s, started.project_id)
        ledger.usable_dataset(s, project, started.dataset)
        return started.model_name, str(base_model_dir(s, project, started.base_model, default_dir)), params

    try:
        name, base_dir, params = _transaction(engine, start)
    except finetunes.NotQueued:  # another worker started it (or it ended): theirs, not ours to touch
        log.info("fine-tune job %s was not queued any more; left to whoever has it", job_id)
        return _transaction(engine, lambda s: finetunes.job_json(s, finetunes.get(s, job_id)))
    except UserError as exc:
        reason = f"not started: {exc.message}"
        _transaction(engine, lambda s: finetunes.fail(s, job_id, reason))
        return _transaction(engine, lambda s: finetunes.job_json(s, finetunes.get(s, job_id)))

    last_write = [0.0]

    def progress(p: finetune.Progress) -> None:
        if on_progress:
            on_progress(p)
        now = time.monotonic()
        if now - last_write[0] >= 1.0 or p.step == p.total:
            last_write[0] = now
            try:  # progress is for watching; a database hiccup must not end the training
                _transaction(engine, lambda s: finetunes.record_progress(
                    s, job_id, step=p.step, total=p.total, loss=p.loss, epsilon_spent=p.epsilon))
            except Exception:
                log.warning("fine-tune job %s: progress at step %d not recorded", job_id, p.step, exc_info=True)

    try:
        out_dir = finetunes_dir(home) / name
        result = finetune.run(base_dir, records, params, out_dir, on_progress=progress)
        _transaction(engine, lambda s: finetunes.finish(
            s, job_id, model_dir=str(result.model_dir), steps=result.steps, loss=result.final_loss,
            epsilon_spent=result.epsilon_spent, exposure=result.exposure, membership=result.membership,
            message=(f"trained {result.steps} steps on {result.training_examples} examples "
                     f"({result.records} records + canaries) on {result.device} in {result.seconds:g} s"
                     + (f"; noise multiplier {result.noise_multiplier:.3f}" if result.noise_multiplier else ""))))
    except BaseException as exc:  # any failure ends the job; a bug is logged with its trace too
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # Ctrl-C in `enclave finetune`: end it, then stop
            _transaction(engine, lambda s: finetunes.fail(s, job_id, "interrupted"))
            raise
        if not isinstance(exc, (UserError, Stopped)):
            log.exception("fine-tune job %s failed", job_id)
        message = (exc.message if isinstance(exc, UserError) else str(exc) if isinstance(exc, Stopped)
                   else f"{type(exc).__name__}: {exc}")
        _transaction(engine, lambda s: finetunes.fail(s, job_id, f"failed: {message}"))
    return _transaction(engine, lambda s: finetunes.job_json(s, finetunes.get(s, job_id)))


class Stopped(Exception):
    """The service is stopping: the running job ends (failed, its charge kept) rather than hold up shutdown."""


@dataclasses.dataclass
class Worker:
    """Runs the service's queued jobs one at a time on a daemon thread until `stop`."""

    engine: Engine
    home: Path
    default_dir: Path
    poll_seconds: float = 2.0
    max_bytes: int | None = None  # the largest dataset file read (None: `max_dataset_bytes()`)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        failed = _transaction(self.engine, lambda s: finetunes.fail_orphans(
            s, host=socket.gethostname(), alive=lambda pid: pid != os.getpid() and pid_alive(pid)))
        if failed:
            log.warning("fine-tune jobs left running by a process that stopped, now failed: %s", ", ".join(failed))
        self._thread = threading.Thread(target=self._loop, name="finetune-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _check_stop(self, _progress: finetune.Progress) -> None:
        if self._stop.is_set():
            raise Stopped("the privacy service stopped while this job ran")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = _transaction(self.engine, finetunes.next_queued)
                if job_id:
                    execute(self.engine, job_id, home=self.home, default_dir=self.default_dir,
                            on_progress=self._check_stop, max_bytes=self.max_bytes)
                    continue
            except Exception:  # the loop must outlive a database hiccup
                log.exception("fine-tune worker")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
