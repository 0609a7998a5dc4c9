"""The privacy service's HTTP app: DP statistics for notebooks, the project's budget, the receipt key.

    POST /api/dp/{count|sum|mean|var|histogram|quantile}   {"dataset", "column", "epsilon", "delta",
                                                           "bounds", "where", "bins", "quantile"}
    GET  /api/budget                                        the caller's project: budget, spent, left
    GET  /api/receipt-key                                   the public key that signs receipts (PEM)
    POST /api/finetune                                      queue a DP fine-tune {"dataset", "epsilon",
                                                           "delta", "base", "epochs", ...} -> 202 {"job"}
    GET  /api/finetune                                      the caller's project's fine-tune jobs
    GET  /api/finetune/{job}                                one job: status, progress (step, total,
                                                           epsilon spent), model, canary exposure table

A query runs in three steps, each its own short transaction or none: (1) decide — who is calling
(a hub token with `access:services!service=privacy`), which project (a notebook session acts for
its own project only, `enclave.web.session_binding`), the registry's access decision, the dataset
(registered and given to the project) and whether the budget can pay; (2) compute, off the event
loop and outside any transaction; (3) charge — decide again and record the spend with its audit
event under the project's ledger lock (`enclave.registry.privacy.charge`). Only then is the value
signed and answered: a query refused or failed at any step charges nothing and releases nothing.

A fine-tune is checked when it is submitted (dataset, epsilon, delta < 1/n, budget) and queued;
the service's worker thread (`privacy.jobs.Worker`) runs queued jobs one at a time, charging each
when it starts (`enclave.registry.finetunes`). A notebook polls the job's progress, and sees of a
job only what `_for_notebook` lets through (no training loss, no membership report, no paths, no
failure details: operators read those with `enclave finetune show ID`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclave.errors import BadInput, Conflict, NotFound, Unauthenticated, UserError
from enclave.privacy import finetune, jobs, receipts, statistics
from enclave.privacy.settings import PrivacySettings
from enclave.registry import access, finetunes
from enclave.registry import privacy as ledger
from enclave.registry.clock import iso
from enclave.registry.db import check_schema, make_engine
from enclave.web.errors import refusal
from enclave.web.hub_auth import HubIdentity, bearer_token
from enclave.web.session_binding import session_project
from enclave.web.transactions import in_transaction_thread

log = logging.getLogger("enclave.privacy")
MAX_BODY_BYTES = 64 * 1024


class Identity(Protocol):
    """Hub tokens -> user names (`HubIdentity`; a stand-in in tests)."""

    def username(self, token: str) -> str: ...


@dataclasses.dataclass
class PrivacyState:
    """Everything a request handler needs, made once at start-up (`app.state.privacy`)."""

    settings: PrivacySettings
    engine: Engine
    identity: Identity | None
    key: Any  # Ed25519PrivateKey
    worker: jobs.Worker | None = None

    async def run(self, work: Callable[[Any], Any]) -> Any:
        return await in_transaction_thread(self.engine, work)


@dataclasses.dataclass(frozen=True)
class Caller:
    username: str
    token: str
    requested: str | None
    address: str | None

    def access(self, session) -> access.Access:
        """The registry's decision for this caller, bound to the notebook session's project."""
        project = session_project(session, self.username, self.requested, token=self.token, address=self.address)
        return access.resolve(session, self.username, project)


def _caller(request: Request, state: PrivacyState) -> Caller:
    if state.identity is None:
        raise Unauthenticated("this privacy service has no JupyterHub to check tokens with")
    token = bearer_token(request.headers.get("authorization"))
    return Caller(state.identity.username(token), token,
                  (request.headers.get("x-enclave-project") or "").strip() or None,
                  request.client.host if request.client else None)


router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/api/receipt-key", summary="The public key that signs DP receipts (PEM)")
async def receipt_key(request: Request) -> Response:
    public = request.app.state.privacy.key.public_key()
    return PlainTextResponse(receipts.public_pem(public).decode("ascii"), media_type="application/x-pem-file",
                             headers={"X-Key-Id": receipts.key_id(public)})


@router.get("/api/budget", summary="Your project's privacy budget: budget, spent, left, and its spends")
async def budget(request: Request) -> dict:
    state: PrivacyState = request.app.state.privacy
    caller = _caller(request, state)

    def work(s):
        granted = caller.access(s)
        return ledger.ledger_json(s, granted.project.slug)

    return await state.run(work)


@router.post("/api/dp/{statistic}", summary="A differentially private statistic of a registered dataset")
async def dp_statistic(statistic: str, request: Request) -> dict:
    state: PrivacyState = request.app.state.privacy
    caller = _caller(request, state)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise BadInput(f"the query is larger than {MAX_BODY_BYTES} bytes")
    try:
        parsed = json.loads(body or b"null")
    except ValueError:
        raise BadInput("the request body must be JSON") from None
    query = statistics.parse_query(statistic, parsed, max_bins=state.settings.max_bins)

    def decide(s):
        granted = caller.access(s)
        dataset = ledger.usable_dataset(s, granted.project, query.dataset)
        return granted.project, dataset

    project, dataset = await state.run(decide)
    def load():
        table = statistics.read_table(dataset.path, state.settings.max_dataset_bytes, dataset.sha256)
        return statistics.select(table, query)

    rows, values = await run_in_threadpool(load)
    epsilon, delta = ledger.check_cost(query.epsilon, query.delta, rows)
    await state.run(lambda s: ledger.check_affordable(s, project, epsilon, delta))
    mechanism, value = await run_in_threadpool(statistics.compute, query, values)

    def charge(s):
        granted = caller.access(s)
        if granted.project.id != project.id:  # e.g. a second project of the caller's went live meanwhile
            raise Conflict("the project of this request changed while it ran; name it and ask again")
        spend = ledger.charge(s, granted, dataset, mechanism=mechanism, query=query.as_json(), epsilon=epsilon,
                              delta=delta, result=value)
        return spend, ledger.budget(s, granted.project)

    spend, after = await state.run(charge)
    receipt = {"spend": spend.id, "project": project.slug, "dataset": dataset.name, "dataset_sha256": dataset.sha256,
               "query": query.as_json(), "mechanism": mechanism, "epsilon": epsilon, "delta": delta, "value": value,
               "time": iso(spend.created_at), "audit_seq": spend.audit_seq}
    return {"value": value, "receipt": receipts.sign(state.key, receipt),
            "budget": ledger.budget_json(after)}


# What a notebook may set of a fine-tune (the device and the rest are the service's).
FINETUNE_FIELDS = ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length", "accountant",
                   "grad_sample_mode", "train_embeddings", "holdout", "max_records", "canaries_per_repeat",
                   "canary_candidates", "seed")


def parse_finetune(body: Any, max_epochs: int) -> tuple[str, Any, Any, str | None, finetune.FinetuneParams]:
    """(dataset, epsilon, delta, base, params) of a fine-tune request, or BadInput."""
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    unknown = sorted(set(body) - {"dataset", "epsilon", "delta", "base", *FINETUNE_FIELDS})
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(unknown)}")
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise BadInput("name the dataset to fine-tune on")
    if body.get("epsilon") is None or body.get("delta") is None:
        raise BadInput("a fine-tune needs epsilon and delta (non-private fine-tunes are for operators only)")
    for key in ("epsilon", "delta"):
        if isinstance(body[key], bool) or not isinstance(body[key], (int, float)):
            raise BadInput(f"{key} must be a number")
    base = body.get("base")
    if base is not None and not isinstance(base, str):
        raise BadInput("base must be a model name")
    try:
        params = finetune.FinetuneParams(epsilon=float(body["epsilon"]), delta=float(body["delta"]),
                                         **{k: body[k] for k in FINETUNE_FIELDS if k in body})
        params.validate()
    except (TypeError, ValueError) as exc:
        raise BadInput(f"bad fine-tune settings: {exc}") from None
    if params.epochs > max_epochs:
        raise BadInput(f"at most {max_epochs} epochs")
    return dataset, body["epsilon"], body["delta"], base, params


@router.post("/api/finetune", status_code=202, summary="Queue a DP fine-tune of the project's GPT-2 on a dataset")
async def finetune_submit(request: Request) -> dict:
    state: PrivacyState = request.app.state.privacy
    caller = _caller(request, state)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise BadInput(f"the request is larger than {MAX_BODY_BYTES} bytes")
    try:
        parsed = json.loads(body or b"null")
    except ValueError:
        raise BadInput("the request body must be JSON") from None
    dataset, epsilon, delta, base, params = parse_finetune(parsed, state.settings.finetune_max_epochs)
    job_id = await run_in_threadpool(
        jobs.submit, state.engine, caller.access, via="service", dataset=dataset, epsilon=epsilon, delta=delta,
        base=base, params=params, default_dir=state.settings.default_model_dir,
        max_bytes=state.settings.max_dataset_bytes)
    if state.worker is not None:
        state.worker.wake()
    return await state.run(lambda s: _for_notebook(finetunes.job_json(s, finetunes.get(s, job_id), reports=False)))


# What a notebook sees of a job (`_for_notebook`): a whitelist, so a field added for operators
# stays theirs until someone decides a notebook may see it.
_NOTEBOOK_FIELDS = ("id", "project", "dataset", "base_model", "epsilon", "delta", "non_private", "status", "spend",
                    "model", "requested_by", "via", "created_at", "started_at", "finished_at")
_NOTEBOOK_EXPOSURE = ("format", "candidates", "max_rank_exposure_bits", "max_exposure_bits", "table")


def _for_notebook(record: dict) -> dict:
    """A job as a notebook sees it. Left out: the training loss (unnoised, computed on the private
    records at every step), the membership report (its losses and AUCs are queries on training and
    held-out records), paths on the enclave's disks, and why a job failed (an exception's text may
    quote data or paths: the operator reads it with `enclave finetune show ID`). The canary
    exposure summary stays: it is computed on synthetic secrets only."""
    out = {k: record.get(k) for k in _NOTEBOOK_FIELDS}
    out["params"] = {k: v for k, v in (record.get("params") or {}).items()
                     if k in FINETUNE_FIELDS}
    progress = record.get("progress") or {}
    out["progress"] = {k: progress.get(k) for k in ("step", "total", "epsilon_spent")}
    status = record.get("status")
    if status == "failed":
        out["message"] = f"failed; an operator can see why: enclave finetune show {record['id']}" + (
            " (its privacy charge stays on the ledger)" if record.get("spend") else "")
    elif status == "done":
        out["message"] = f"done: model {record.get('model')} is served to this project"
    else:
        out["message"] = status
    exposure = record.get("exposure")
    if exposure:
        out["exposure"] = {k: exposure.get(k) for k in _NOTEBOOK_EXPOSURE}
    return out


def _own_job(s, caller: Caller, job_id: str):
    granted = caller.access(s)
    job = finetunes.get(s, job_id)
    if job.project_id != granted.project.id:  # another project's job: as if it did not exist
        raise NotFound(f"unknown fine-tune job {job_id!r}")
    return job


@router.get("/api/finetune", summary="Your project's fine-tune jobs, oldest first")
async def finetune_list(request: Request) -> list:
    state: PrivacyState = request.app.state.privacy
    caller = _caller(request, state)

    def work(s):
        granted = caller.access(s)
        return [_for_notebook(finetunes.job_json(s, j, reports=False)) for j in finetunes.jobs(s, granted.project.slug)]

    return await state.run(work)


@router.get("/api/finetune/{job_id}", summary="One fine-tune job: status, progress, model, canary exposure table")
async def finetune_show(job_id: str, request: Request) -> dict:
    state: PrivacyState = request.app.state.privacy
    caller = _caller(request, state)
    return await state.run(lambda s: _for_notebook(finetunes.job_json(s, _own_job(s, caller, job_id))))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError):
        answer = refusal(exc)
        return JSONResponse(answer.body(), status_code=answer.status, headers=answer.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "bad_request", "message": "malformed request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": "not_found" if exc.status_code == 404 else "bad_request",
                             "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception):
        log.exception("privacy service error")
        return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)


def create_app(settings: PrivacySettings, *, identity: Identity | None = None) -> FastAPI:
    """The privacy app; `identity` replaces the hub's token check (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url)
        check_schema(engine)
        who = identity
        if who is None and settings.hub_api_url:
            who = HubIdentity(settings.hub_api_url, settings.service_name, cache_seconds=60)
        worker = None
        if settings.finetune_worker:
            worker = jobs.Worker(engine, settings.home, settings.default_model_dir,
                                 max_bytes=settings.max_dataset_bytes)
            worker.start()
        app.state.privacy = PrivacyState(settings=settings, engine=engine, identity=who,
                                         key=receipts.load_or_create_key(settings.receipt_key_file), worker=worker)
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            engine.dispose()

    prefix = settings.prefix
    app = FastAPI(title="Model Enclave privacy service", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=f"{prefix}/api/openapi.json")
    _install_error_handlers(app)
    app.include_router(router, prefix=prefix)
    if prefix:
        inner = app.build_middleware_stack

        # A notebook may call the service directly (http://host:8004/api/...) rather than through
        # the hub's proxy, which keeps the /services/privacy prefix: route those as if it were there.
        class PrefixApiCalls:
            def __init__(self, asgi):
                self.asgi = asgi

            async def __call__(self, scope, receive, send):
                if scope["type"] == "http" and (scope["path"].startswith("/api/") or scope["path"] == "/healthz"):
                    scope = dict(scope, path=prefix + scope["path"], raw_path=(prefix + scope["path"]).encode())
                await self.asgi(scope, receive, send)

        app.build_middleware_stack = lambda: PrefixApiCalls(inner())  # type: ignore[method-assign]
    return app


def serve_privacy(host: str = "127.0.0.1", port: int = 8004, settings: PrivacySettings | None = None) -> None:
    """Run the privacy service until interrupted (`enclave serve privacy`)."""
    import uvicorn

    settings = settings or PrivacySettings.from_env()
    db = make_engine(settings.db_url)
    try:
        check_schema(db)  # refuse to start on a registry that is missing or behind
    finally:
        db.dispose()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
