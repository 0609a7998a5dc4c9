"""The background worker that runs the automated checks after a submission has been answered.

submitted -> checking (one transaction), the scan pipeline on the quarantined bytes (no transaction
held: it may take a while), then findings + checking -> awaiting_review (one transaction). A
request withdrawn or resubmitted meanwhile is left alone. If the pipeline itself fails, the request
still goes to reviewers, with a blocking finding that says the checks failed: nothing passes
unchecked, and nothing is stuck.

The pipeline's context comes from `scan_context.build_scan_context`, its indexes from one
`ScanCache` per worker (in memory, and on disk under `<home>/cache/review/`), and its perplexity
scorer is loaded once per worker: in-process, from the read-only model directory named by
`ENCLAVE_REVIEW_SCORER_MODEL` (the hub sets it to the served model), or, on a review host without
torch, the gateway's score endpoint (`ENCLAVE_REVIEW_GATEWAY_URL` and a token).

The queue is bounded: a submission takes a place (`CheckWorker.place`) before its body is read,
and past `max_pending_checks` exports waiting or being checked (or `max_pending_checks_per_person`
of one person's) it is refused at once (503 or 429, with Retry-After). So a flood of submissions
neither grows the queue without end nor leaves half a submission behind: a refused one has stored
no bytes and recorded nothing, and one that got its place is recorded and queued together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import Engine

from enclave.errors import RateLimited, Unavailable
from enclave.registry.db import session_scope
from enclave.review import service
from enclave.review.quarantine import Quarantine
from enclave.review.scan import DEFAULT_POLICY, ExportFile, Policy, ScanCache, Scorer, load_policy, scan_files
from enclave.review.scan.findings import Finding, Severity, verdict
from enclave.review.scan.scoring import ScorerError, gateway_scorer, local_scorer
from enclave.review.scan_context import build_scan_context
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


def _policy_identity(policy: Policy) -> tuple[str, str | None, bool]:
    """The policy's version and file hash (for the request and its manifest), and whether it asks
    for two approvals on every request."""
    return policy.version, policy.sha256 or None, policy.workflow.always_two_reviewers


class PipelineScanner:
    """The real `Scanner`: every automated check (`enclave.review.scan`) over an export, with the
    project's context. It keeps, for the life of the process, what is costly to make: the scan
    cache and the perplexity scorer (made on first use, from the settings of that call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: ScanCache | None = None
        self._scorer: tuple[Scorer | None, str | None] | None = None

    def __call__(self, db: Engine, settings: ReviewSettings, quarantine: Quarantine, job: service.CheckJob,
                 files: list[tuple[str, bytes]]) -> ScanOutcome:
        policy = load_policy(settings.policy_file or DEFAULT_POLICY)
        cache, (scorer, scorer_problem) = self._process_state(settings)
        with session_scope(db) as session:
            context = build_scan_context(session, job.project_slug, quarantine=quarantine,
                                         protect_files=settings.protect_files, model_dirs=settings.model_dirs,
                                         scorer=scorer, cache=cache,
                                         dp_receipt_key_files=settings.dp_receipt_key_files)
        report = scan_files([ExportFile(name, data) for name, data in files], policy, context)
        findings = list(report.findings)
        if scorer_problem:
            findings.append(Finding(check="model_signals", severity=Severity.warn, file="(export)",
                                    location="scan context",
                                    message=f"model-based memorisation signals were not computed: {scorer_problem}"))
        version, digest, always = _policy_identity(policy)
        return ScanOutcome(findings=findings, verdict=verdict(findings).value, policy_version=version,
                           policy_sha256=digest, always_two=always or settings.always_two_reviewers)

    def _process_state(self, settings: ReviewSettings) -> tuple[ScanCache, tuple[Scorer | None, str | None]]:
        with self._lock:
            if self._cache is None:
                self._cache = ScanCache(disk_dir=settings.home / "cache" / "review")
            if self._scorer is None:
                self._scorer = make_scorer(settings)
            return self._cache, self._scorer


def make_scorer(settings: ReviewSettings) -> tuple[Scorer | None, str | None]:
    """The perplexity scorer the checks use, if one is configured, and why not if it failed: the
    gateway over HTTP when its URL and a token are set (a review host without torch), else the
    model directory scored in-process (needs torch)."""
    try:
        if settings.scorer_gateway_url and settings.scorer_gateway_token:
            return gateway_scorer(settings.scorer_gateway_url, settings.scorer_gateway_token), None
        if settings.scorer_model_dir:
            return local_scorer(Path(settings.scorer_model_dir)), None
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
               scanner: Scanner | None = None) -> str | None:
    """Check one request; returns its new state, or None if it needed no checks any more.
    Without a `scanner`, a `PipelineScanner` of its own (no cache kept past this call)."""
    with session_scope(db) as session:
        job = service.start_check(session, request_id)
    if job is None:
        return None
    scanner = scanner or PipelineScanner()
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


# What a refused submission is told to wait before trying again.
BUSY_RETRY_AFTER_S = 30


class ChecksBusy(Unavailable):
    """The check queue is full: try again later (HTTP 503 with Retry-After)."""

    code = "checks_busy"

    def __init__(self, message: str, retry_after: int = BUSY_RETRY_AFTER_S):
        super().__init__(message)
        self.retry_after = retry_after


class CheckWorker:
    """One background thread that checks requests in submission order, with a bounded queue."""

    def __init__(self, db: Engine, settings: ReviewSettings, quarantine: Quarantine, scanner: Scanner | None = None):
        self.db, self.settings, self.quarantine = db, settings, quarantine
        # One pipeline per worker, so one scan cache and one scorer per process.
        self.scanner = scanner or PipelineScanner()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-checks")
        self._futures: set[Future] = set()
        self._queued: set[str] = set()
        # Places taken by submissions still being read and recorded, and whose they are, and the
        # owner of each queued request (None: recovered at start-up).
        self._reserved: Counter[str] = Counter()
        self._owners: dict[Future, str | None] = {}
        self._lock = threading.Lock()

    def pending(self, owner: str | None = None) -> int:
        """Exports waiting for or in their checks, plus places taken by submissions in flight
        (`owner`'s only, if given)."""
        with self._lock:
            return self._pending(owner)

    def _pending(self, owner: str | None) -> int:
        if owner is None:
            return len(self._futures) + sum(self._reserved.values())
        return sum(1 for who in self._owners.values() if who == owner) + self._reserved[owner]

    @contextlib.contextmanager
    def place(self, owner: str) -> Iterator[None]:
        """A place in the queue for one submission by `owner`, held while its body is read and
        recorded and until `enqueue` has queued it; refused at once when the queue is full
        (ChecksBusy, 503) or `owner` already has their share in it (RateLimited, 429)."""
        cap, share = self.settings.max_pending_checks, self.settings.max_pending_checks_per_person
        with self._lock:
            if self._pending(None) >= cap:
                raise ChecksBusy(f"the automated checks have {cap} exports waiting, the most they queue: "
                                 f"nothing was stored; submit again in {BUSY_RETRY_AFTER_S} seconds")
            if self._pending(owner) >= share:
                raise RateLimited(f"you have {share} exports waiting for their checks, the most one person may: "
                                  "nothing was stored; submit again when one has been checked", BUSY_RETRY_AFTER_S)
            self._reserved[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved[owner] -= 1
                if self._reserved[owner] <= 0:
                    del self._reserved[owner]

    def enqueue(self, request_id: str, owner: str | None = None) -> None:
        with self._lock:
            if request_id in self._queued:
                return
            self._queued.add(request_id)
            future = self._pool.submit(self._run, request_id)
            self._futures.add(future)
            self._owners[future] = owner
        future.add_done_callback(self._forget)

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)
            self._owners.pop(future, None)

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
