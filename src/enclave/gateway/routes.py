"""The model API's routes: which model this is, the caller's allowance, and the three model calls
(generate, score, next-token).

Nothing here returns hidden states, embeddings, full logit vectors, gradients or weights, and there
is no logit bias: the only probabilities that leave are the top <= 5 next tokens, rounded, and the
log-probabilities of a text's own tokens, both under a per-grant cap on such calls. Limits that
depend on the model (its context) are checked before the caller is admitted, so a call that cannot
run is never charged.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends

from enclave.errors import BadInput
from enclave.gateway import quota
from enclave.gateway.deps import GatewayState, MeteredCall, get_access, get_engine, get_metered_call, get_state
from enclave.gateway.engine import ContextTooLong, Engine, SamplingParams
from enclave.gateway.schemas import (
    Choice, GenerateRequest, GenerateResponse, ModelInfo, NextTokenRequest, NextTokenResponse, ScoreRequest,
    ScoreResponse, TokenLogprob, TokenProbability, Usage,
)
from enclave.registry.access import Access

PROBABILITY_DIGITS = 3  # significant digits of returned probabilities
LOGPROB_DECIMALS = 3

router = APIRouter()


class InvalidRequest(BadInput):
    """Sampling parameters the engine refuses (its checks, in case they are stricter than the schema)."""

    code = "invalid_request"


def _round_sig(value: float, digits: int = PROBABILITY_DIGITS) -> float:
    return float(f"{value:.{digits}g}")


def _check_context(prompt_tokens: int, new_tokens: int, context: int) -> None:
    if prompt_tokens + new_tokens > context:
        raise ContextTooLong(f"the prompt is {prompt_tokens} tokens; with max_new_tokens {new_tokens} that exceeds "
                             f"the model's context of {context} tokens")


@router.get("/healthz", include_in_schema=False)
async def healthz(engine: Engine = Depends(get_engine)) -> dict:
    return {"status": "ok", **engine.stats()}


@router.get("/v1/model", response_model=ModelInfo, summary="Which model this is")
async def model_info(engine: Engine = Depends(get_engine)) -> ModelInfo:
    info = engine.model_info()
    return ModelInfo(name=info["name"], parameters=info["parameters"], context_length=info["context_length"])


@router.get("/v1/usage", summary="The caller's remaining allowance")
async def usage(granted: Access = Depends(get_access), state: GatewayState = Depends(get_state)) -> dict:
    return await state.run(lambda session: {"user": granted.person.username, **quota.usage(session, granted)})


@router.post("/v1/generate", response_model=GenerateResponse, summary="Continue a prompt")
async def generate(body: GenerateRequest, engine: Engine = Depends(get_engine),
                   metered: MeteredCall = Depends(get_metered_call)) -> GenerateResponse:
    ids = engine.tokenizer.encode(body.prompt)
    _check_context(len(ids), body.max_new_tokens, engine.context_length)
    try:
        params = SamplingParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                                top_p=body.top_p, seed=body.seed, stop=list(body.stop), ignore_eos=body.ignore_eos)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None

    async def run():
        completions = await engine.generate(ids, params, n=body.n)
        return completions, [c.text for c in completions], sum(len(c.token_ids) for c in completions)

    call_id, completions, completion_tokens = await metered(
        "generate", body.prompt, len(ids), len(ids) + body.max_new_tokens * body.n, run,
        completion_cap=body.max_new_tokens * body.n)
    return GenerateResponse(
        id=call_id,
        choices=[Choice(text=c.text, finish_reason=c.finish_reason, tokens=len(c.token_ids)) for c in completions],
        usage=Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens,
                    total_tokens=len(ids) + completion_tokens))


@router.post("/v1/score", response_model=ScoreResponse, summary="Log-probabilities of a text's own tokens")
async def score(body: ScoreRequest, engine: Engine = Depends(get_engine),
                metered: MeteredCall = Depends(get_metered_call)) -> ScoreResponse:
    tokenizer = engine.tokenizer
    # Prepend <|endoftext|> so the first token is scored too, as GPT-2 was trained.
    ids = [tokenizer.eos_token_id, *tokenizer.encode(body.text)]
    _check_context(len(ids), 0, engine.context_length)

    async def run():
        return await engine.score(ids), [], 0

    call_id, logprobs, _ = await metered("score", body.text, len(ids) - 1, len(ids) - 1, run)
    total = float(sum(logprobs))
    return ScoreResponse(
        id=call_id,
        tokens=[TokenLogprob(token=tokenizer.decode([t]), logprob=round(lp, LOGPROB_DECIMALS))
                for t, lp in zip(ids[1:], logprobs)],
        total_logprob=round(total, LOGPROB_DECIMALS),
        perplexity=_round_sig(math.exp(-total / len(logprobs)), 6),
        usage=Usage(prompt_tokens=len(ids) - 1, completion_tokens=0, total_tokens=len(ids) - 1))


@router.post("/v1/next-token", response_model=NextTokenResponse, summary="The most likely next tokens (at most 5)")
async def next_token(body: NextTokenRequest, engine: Engine = Depends(get_engine),
                     metered: MeteredCall = Depends(get_metered_call)) -> NextTokenResponse:
    ids = engine.tokenizer.encode(body.prompt)
    _check_context(len(ids), 0, engine.context_length)

    async def run():
        return await engine.next_token(ids, body.top_k), [], 0

    call_id, top, _ = await metered("next-token", body.prompt, len(ids), len(ids), run)
    return NextTokenResponse(
        id=call_id,
        top=[TokenProbability(token=engine.tokenizer.decode([t]), probability=_round_sig(p)) for t, p in top],
        usage=Usage(prompt_tokens=len(ids), completion_tokens=0, total_tokens=len(ids)))
