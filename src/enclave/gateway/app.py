"""The model API: GPT-2's forward pass behind authentication, metering and the audit log.

Every model call goes: identify the caller -> the registry decides (same transaction) -> reserve
the worst-case cost -> run on the engine -> settle the actual cost and record the call (one
transaction with its audit event). Nothing here returns hidden states, embeddings, full logit
vectors, gradients or weights, and there is no logit bias: the only probabilities that leave are
the top <= 5 next tokens, rounded, and the log-probabilities of a text's own tokens, both under a
per-grant cap on such calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine as DbEngine
from starlette.concurrency import run_in_threadpool

from enclave.gateway import quota
from enclave.gateway.auth import Caller, HubIdentity, Unauthenticated, authorize, identify
from enclave.gateway.engine import ContextTooLong, Engine, QueueFull, SamplingParams
from enclave.gateway.schemas import (
    Choice, ErrorBody, GenerateRequest, GenerateResponse, ModelInfo, NextTokenRequest, NextTokenResponse,
    ScoreRequest, ScoreResponse, TokenLogprob, TokenProbability, Usage,
)
from enclave.gateway.settings import GatewaySettings
from enclave.registry.access import Access
from enclave.registry.db import check_schema, make_engine, session_scope
from enclave.errors import UserError, AccessDenied, DatabaseUnavailable

log = logging.getLogger("enclave.gateway")
PROBABILITY_DIGITS = 3  # significant digits of returned probabilities
LOGPROB_DECIMALS = 3
DISCONNECT_POLL_S = 0.2


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ClientGone(Exception):
    """The HTTP client disconnected while its call was running."""


class Registry:
    """Per-request access to the registry: each `run` is one transaction in a worker thread, so
    the event loop never blocks on the database."""

    def __init__(self, db: DbEngine):
        self.db = db

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        with session_scope(self.db) as session:
            return work(session)

    async def run(self, work: Callable[[Any], Any]) -> Any:
        return await run_in_threadpool(self._transaction, work)


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def _round_sig(value: float, digits: int = PROBABILITY_DIGITS) -> float:
    return float(f"{value:.{digits}g}")


def create_app(settings: GatewaySettings, engine: Engine | None = None) -> FastAPI:
    """The gateway app. Pass a started `engine` to share one (tests, benchmarks); otherwise the
    app loads `settings.model_dir` at start-up and owns the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        db = make_engine(settings.db_url)
        check_schema(db)
        with session_scope(db) as session:
            quota.sweep_stale(session)
        owned = None
        if engine is None:
            from enclave.gateway.model import load_model

            owned = Engine(load_model(settings.model_dir, device=settings.device),
                           max_batch=settings.max_batch, max_queue=settings.max_queue)
            owned.start()
        app.state.engine = engine or owned
        app.state.registry = Registry(db)
        app.state.hub = HubIdentity(settings.hub_api_url, settings.service_name)
        try:
            yield
        finally:
            if owned is not None:
                owned.close()
            db.dispose()

    app = FastAPI(
        title="Model Enclave gateway",
        version="1",
        description="GPT-2's forward pass for approved projects: metered, audited, and never the weights.",
        lifespan=lifespan,
        responses={401: {"model": ErrorBody}, 402: {"model": ErrorBody}, 403: {"model": ErrorBody},
                   429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    _install_error_handlers(app)

    async def admit(request: Request, registry: Registry, endpoint: str, worst_case: int,
                    completion_cap: int = 0) -> tuple[Caller, Access, quota.Ticket]:
        hub: HubIdentity = request.app.state.hub
        header, project = request.headers.get("authorization"), request.headers.get("x-enclave-project")

        def work(session):
            caller = identify(session, header, hub)
            granted = authorize(session, caller, project)
            ticket = quota.reserve(session, granted, endpoint, worst_case, completion_tokens=completion_cap)
            return caller, granted, ticket

        return await registry.run(work)

    async def metered(request: Request, registry: Registry, endpoint: str, prompt: str, prompt_tokens: int,
                      worst_case: int, run: Callable[[], Awaitable[tuple[Any, list[str], int]]],
                      completion_cap: int = 0) -> tuple[str, Any, int]:
        """Admit, run and settle one call; returns (call id, result, completion tokens)."""
        caller, granted, ticket = await admit(request, registry, endpoint, worst_case, completion_cap)
        started = time.perf_counter()
        status, outputs, completion, result = "error", [], 0, None
        try:
            result, outputs, completion = await _until_disconnect(request, run())
            status = "ok"
            return ticket.id, result, completion
        except ClientGone:
            status = "cancelled"
            raise
        except QueueFull:
            status = "busy"
            raise
        finally:
            charged = 0 if status == "busy" else prompt_tokens + completion
            record = quota.CallRecord(status=status, prompt=prompt, outputs=outputs, prompt_tokens=prompt_tokens,
                                      completion_tokens=completion,
                                      latency_ms=int((time.perf_counter() - started) * 1000))
            # Settle even when the client left or the engine failed: the reservation must not linger.
            await asyncio.shield(registry.run(lambda s: quota.settle(
                s, ticket, charged, record, actor=caller.username, project_slug=granted.project.slug)))

    @app.get("/healthz", include_in_schema=False)
    async def healthz(engine: Engine = Depends(get_engine)) -> dict:
        return {"status": "ok", **engine.stats()}

    @app.get("/v1/model", response_model=ModelInfo, summary="Which model this is")
    async def model_info(engine: Engine = Depends(get_engine)) -> ModelInfo:
        info = engine.model_info()
        return ModelInfo(name=info["name"], parameters=info["parameters"], context_length=info["context_length"])

    @app.get("/v1/usage", summary="The caller's remaining allowance")
    async def usage(request: Request, registry: Registry = Depends(get_registry)) -> dict:
        hub: HubIdentity = request.app.state.hub
        header, project = request.headers.get("authorization"), request.headers.get("x-enclave-project")

        def work(session):
            granted = authorize(session, identify(session, header, hub), project)
            return {"user": granted.person.username, **quota.usage(session, granted)}

        return await registry.run(work)

    @app.post("/v1/generate", response_model=GenerateResponse, summary="Continue a prompt")
    async def generate(body: GenerateRequest, request: Request, registry: Registry = Depends(get_registry),
                       engine: Engine = Depends(get_engine)) -> GenerateResponse:
        ids = engine.tokenizer.encode(body.prompt)
        _check_context(len(ids), body.max_new_tokens, engine.context_length)
        try:
            params = SamplingParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                                    top_p=body.top_p, seed=body.seed, stop=list(body.stop), ignore_eos=body.ignore_eos)
        except ValueError as exc:  # the engine's own checks, in case they are stricter than the schema
            raise ApiError(400, "invalid_request", str(exc)) from None

        async def run():
            completions = await engine.generate(ids, params, n=body.n)
            return completions, [c.text for c in completions], sum(len(c.token_ids) for c in completions)

        call_id, completions, completion_tokens = await metered(
            request, registry, "generate", body.prompt, len(ids), len(ids) + body.max_new_tokens * body.n, run,
            completion_cap=body.max_new_tokens * body.n)
        return GenerateResponse(
            id=call_id,
            choices=[Choice(text=c.text, finish_reason=c.finish_reason, tokens=len(c.token_ids)) for c in completions],
            usage=Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens,
                        total_tokens=len(ids) + completion_tokens))

    @app.post("/v1/score", response_model=ScoreResponse, summary="Log-probabilities of a text's own tokens")
    async def score(body: ScoreRequest, request: Request, registry: Registry = Depends(get_registry),
                    engine: Engine = Depends(get_engine)) -> ScoreResponse:
        tokenizer = engine.tokenizer
        # Prepend <|endoftext|> so the first token is scored too, as GPT-2 was trained.
        ids = [tokenizer.eos_token_id, *tokenizer.encode(body.text)]
        _check_context(len(ids), 0, engine.context_length)

        async def run():
            return await engine.score(ids), [], 0

        call_id, logprobs, _ = await metered(request, registry, "score", body.text, len(ids) - 1, len(ids) - 1, run)
        total = float(sum(logprobs))
        return ScoreResponse(
            id=call_id,
            tokens=[TokenLogprob(token=tokenizer.decode([t]), logprob=round(lp, LOGPROB_DECIMALS))
                    for t, lp in zip(ids[1:], logprobs)],
            total_logprob=round(total, LOGPROB_DECIMALS),
            perplexity=_round_sig(math.exp(-total / len(logprobs)), 6),
            usage=Usage(prompt_tokens=len(ids) - 1, completion_tokens=0, total_tokens=len(ids) - 1))

    @app.post("/v1/next-token", response_model=NextTokenResponse, summary="The most likely next tokens (at most 5)")
    async def next_token(body: NextTokenRequest, request: Request, registry: Registry = Depends(get_registry),
                         engine: Engine = Depends(get_engine)) -> NextTokenResponse:
        ids = engine.tokenizer.encode(body.prompt)
        _check_context(len(ids), 0, engine.context_length)

        async def run():
            return await engine.next_token(ids, body.top_k), [], 0

        call_id, top, _ = await metered(request, registry, "next-token", body.prompt, len(ids), len(ids), run)
        return NextTokenResponse(
            id=call_id,
            top=[TokenProbability(token=engine.tokenizer.decode([t]), probability=_round_sig(p)) for t, p in top],
            usage=Usage(prompt_tokens=len(ids), completion_tokens=0, total_tokens=len(ids)))

    return app


def _check_context(prompt_tokens: int, new_tokens: int, context: int) -> None:
    if prompt_tokens + new_tokens > context:
        raise ApiError(400, "context_exceeded",
                       f"the prompt is {prompt_tokens} tokens; with max_new_tokens {new_tokens} that exceeds "
                       f"the model's context of {context} tokens")


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it if the client goes away (the engine then frees its slots)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise ClientGone()
    except asyncio.CancelledError:
        task.cancel()
        raise


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(_request, exc: Unauthenticated):
        return _error(401, "unauthenticated", exc.message, {"WWW-Authenticate": "token"})

    @app.exception_handler(AccessDenied)
    async def denied(_request, exc: AccessDenied):
        return _error(403, exc.reason, exc.message)

    @app.exception_handler(quota.MeteringRefusal)
    async def refused(_request, exc: quota.MeteringRefusal):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return _error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(QueueFull)
    async def busy(_request, exc: QueueFull):
        return _error(503, "busy", "the model is at capacity; retry shortly",
                      {"Retry-After": str(max(1, int(math.ceil(getattr(exc, "retry_after", 1)))))})

    @app.exception_handler(ContextTooLong)
    async def too_long(_request, exc: ContextTooLong):
        return _error(400, "context_exceeded", str(exc))

    @app.exception_handler(ClientGone)
    async def gone(_request, _exc: ClientGone):
        return _error(499, "client_closed_request", "the client went away")

    @app.exception_handler(DatabaseUnavailable)
    async def db_down(_request, exc: DatabaseUnavailable):
        return _error(503, "registry_unavailable", exc.message, {"Retry-After": "5"})

    @app.exception_handler(UserError)
    async def registry_error(_request, exc: UserError):
        return _error(400, "bad_request", exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid_request", problems)

    @app.exception_handler(Exception)
    async def internal(_request, exc: Exception):
        # Never a traceback to a scholar; the server log keeps it.
        log.exception("internal error")
        return _error(500, "internal_error", "internal error")
