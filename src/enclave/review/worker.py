"""The background worker that runs the automated checks after a submission has been answered.

submitted -> checking (one transaction), the scan pipeline on the quarantined bytes (no transaction
held: it may take a while), then findings + checking -> awaiting_review (one transaction). A
request withdrawn or resubmitted meanwhile is left alone. If the pipeline itself fails, the request
still goes to reviewers, with a blocking finding that says the checks failed: nothing passes
unchecked, and nothing is stuck.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import Engine

from enclave.registry.db import session_scope
from enclave.review import service
from enclave.review.scan.findings import Finding, Severity, verdict
from enclave.review.quarantine import Quarantine
from enclave.review.settings import ReviewSettings

log = logging.getLogger("enclave.review.worker")


@dataclasses.dataclass(frozen=True)
class ScanOutcome:
    findings: list[Finding]
    verdict: str
    policy_version: str | None = None
    policy_sha256: str | None = None
    # The policy may ask for two approvals on every request.
    always_two: bool = False


# (db, settings, quarantine, job, files as (name, bytes)) -> outcome
Scanner = Callable[[Engine, ReviewSettings, Quarantine, service.CheckJob, list[tuple[str, bytes]]], ScanOutcome]


def _policy_identity(policy, settings: ReviewSettings) -> tuple[str | None, str | None, bool]:
    """Version, file hash and two-person setting of the policy, asked defensively: the policy
    object belongs to the scan pipeline and may name these differently as it grows."""
    version = next((str(getattr(policy, a)) for a in ("version", "policy_version") if getattr(policy, a, None)), None)
    digest = next((str(getattr(policy, a)) for a in ("sha256", "file_sha256", "hash") if getattr(policy, a, None)), None)
    if digest is None:
        path = next((getattr(policy, a) for a in ("path", "source", "file") if getattr(policy, a, None)), None)
        if path is not None and Path(path).is_file():
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    always = settings.always_two_reviewers
    for holder in (policy, getattr(policy, "review", None), getattr(policy, "workflow", None)):
        for attr in ("always_two_reviewers", "two_person_always", "two_person"):
            value = getattr(holder, attr, None) if holder is not None else None
            if value is True or (isinstance(value, str) and value.lower() == "always"):
                always = True
    return version, digest, always


def pipeline_scanner(db: Engine, settings: ReviewSettings, quarantine: Quarantine, job: service.CheckJob,
                     files: list[tuple[str, bytes]]) -> ScanOutcome:
    """Run every automated check (`enclave.review.scan`) with the project's context: its registered
    datasets, model calls and export allowance (from `build_context`), plus what only this service
    knows: the files it has released before (for differencing) and how many bytes those were."""
    from enclave.review.scan.policy import load_policy
    from enclave.review.scan import ExportFile as ScanFile, build_context, scan_files

    policy = load_policy(settings.policy_file)
    scorer, scorer_problem = _scorer(settings.scorer_gateway_url, settings.scorer_gateway_token,
                                     settings.scorer_model_dir)
    with session_scope(db) as session:
        context = build_context(session, job.project_slug, protect_files=list(settings.protect_files),
                                model_dirs=list(settings.model_dirs), scorer=scorer)
        prior = service.released_files(session, job.project_id)
    context = dataclasses.replace(
        context, prior_releases=[ScanFile(name, quarantine.read(sha)) for name, sha, _ in prior],
        egress_used_bytes=sum(size for _, _, size in prior))
    report = scan_files([ScanFile(name, data) for name, data in files], policy, context)
    findings = list(report.findings)
    if scorer_problem:
        findings.append(Finding(check="model_signals", severity=Severity.warn, file="(export)", location="scan context",
                                message=f"model-based memorisation signals were not computed: {scorer_problem}"))
    version, digest, always = _policy_identity(policy, settings)
    return ScanOutcome(findings=findings, verdict=verdict(findings).value, policy_version=version,
                       policy_sha256=digest, always_two=always)


@functools.lru_cache(maxsize=2)
def _scorer(gateway_url: str | None, gateway_token: str | None, model_dir: str | None):
    """The perplexity scorer the checks use, if one is configured: the gateway over HTTP (the
    design's way: review never loads the model itself) or a local model directory (needs torch).
    Made once per process; returns (scorer or None, why not)."""
    from enclave.review.scan.scoring import ScorerError, gateway_scorer, local_scorer

    try:
        if gateway_url and gateway_token:
            return gateway_scorer(gateway_url, gateway_token), None
        if model_dir:
            return local_scorer(Path(model_dir)), None
    except ScorerError as exc:
        log.error("no scorer: %s", exc)
        return None, str(exc)
    return None, None


def failed_checks(exc: BaseException) -> ScanOutcome:
    finding = Finding(check="scan", severity=Severity.block, file="*", location="whole export",
                      message=f"the automated checks failed ({exc.__class__.__name__}); a reviewer must check every "
                              "file by hand")
    return ScanOutcome(findings=[finding], verdict=verdict([finding]).value)


def run_checks(db: Engine, settings: ReviewSettings, quarantine: Quarantine, request_id: str,
               scanner: Scanner = pipeline_scanner) -> str | None:
    """Check one request; returns its new state, or None if it needed no checks any more."""
    with session_scope(db) as session:
        job = service.start_check(session, request_id)
    if job is None:
        return None
    try:
        files = [(name, quarantine.read(sha)) for name, sha in job.files]
        outcome = scanner(db, settings, quarantine, job, files)
    except Exception as exc:  # the pipeline's bug or a damaged quarantine: reviewers must know
        log.exception("checks of %s failed", request_id)
        outcome = failed_checks(exc)
    with session_scope(db) as session:
        request = service.record_checks(session, job, outcome.findings, outcome.verdict, outcome.policy_version,
                                        outcome.policy_sha256, outcome.always_two or settings.always_two_reviewers)
        return request.state if request is not None else None


class CheckWorker:
    """One background thread that checks requests in submission order."""

    def __init__(self, db: Engine, settings: ReviewSettings, quarantine: Quarantine, scanner: Scanner | None = None):
        self.db, self.settings, self.quarantine = db, settings, quarantine
        self.scanner = scanner or pipeline_scanner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-checks")
        self._futures: set[Future] = set()
        self._queued: set[str] = set()
        self._lock = threading.Lock()

    def enqueue(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._queued:
                return
            self._queued.add(request_id)
            future = self._pool.submit(self._run, request_id)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, request_id: str) -> None:
        with self._lock:
            self._queued.discard(request_id)
        try:
            run_checks(self.db, self.settings, self.quarantine, request_id, self.scanner)
        except Exception:  # the database went away, say; the request stays queued for a restart
            log.exception("could not check %s", request_id)

    def recover(self) -> list[str]:
        """Queue requests whose checks a stopped service never finished."""
        with session_scope(self.db) as session:
            pending = service.pending_checks(session)
        for request_id in pending:
            self.enqueue(request_id)
        return pending

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until everything queued so far is checked (tests, shutdown)."""
        with self._lock:
            futures = set(self._futures)
        wait(futures, timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
