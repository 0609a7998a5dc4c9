"""The model API's routes: which model this is, which models the caller may use, the caller's
allowance, the three model calls (generate, score, next-token), and activations for the internals
tier. Each call names its model (`model`, omitted: the default), which the registry allows or
refuses on every call (`enclave.gateway.pool`).

Each endpoint needs a tier of the grant (`tiers`): refused with 403 naming the tier it needs,
before the prompt is tokenised. Below the internals tier nothing here returns hidden states,
embeddings, full logit vectors, gradients or weights; activations (internals) are float16 values at
TransformerLens hook points, metered in bytes against the grant's per-day activation budget, and
never the logit vector (`hooks`). There is no logit bias: the only probabilities that leave are the top <= 5 next tokens and the
log-probabilities of a text's own tokens, both under a per-grant cap on such calls, and every such
number is rounded the same way (`rounded`). A caller's seed reaches the engine together with the
project, and the engine keys it with its secret, so a one-token generation cannot be read as an
answer to "is CDF(t) > u" for a u the caller computed. Limits that depend on the model (its
context) are checked before the caller is admitted, so a call that cannot run is never charged.

A prompt is tokenised only for a caller the registry has identified and authorised (the
`get_metered_call` dependency runs before the route's body), and on a worker thread (`tokenise`),
so neither an anonymous flood of long prompts nor a scholar's long prompt stalls the event loop.
What score and next-token return (the rounded numbers) is recorded as the call's outputs, as
generate's texts are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math

from fastapi import APIRouter, Depends

from enclave.errors import BadInput
from enclave.gateway import hooks, quota, tiers
from enclave.gateway.deps import GatewayState, MeteredCall, get_access, get_engine, get_metered_call, get_state
from enclave.gateway.engine import ContextTooLong, Engine, GenerationProgress, SamplingParams
from enclave.gateway.schemas import (
    LOGPROB_DECIMALS, Activation, ActivationsRequest, ActivationsResponse, Choice, GenerateRequest, GenerateResponse,
    HookPoints, ListedModel, ModelInfo, ModelList, NextTokenRequest, NextTokenResponse, ScoreRequest, ScoreResponse, TokenLogprob, TokenProbability, Usage,
)
from enclave.registry import catalog, grants
from enclave.registry.access import Access

router = APIRouter()


class InvalidRequest(BadInput):
    """Sampling parameters the engine refuses (its checks, in case they are stricter than the schema)."""

    code = "invalid_request"


def rounded(value: float) -> float:
    """The one rounding of every probability-bearing number returned: LOGPROB_DECIMALS decimals."""
    return round(float(value), LOGPROB_DECIMALS)


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


@router.get("/v1/models", response_model=ModelList, summary="The models the caller's project may use")
async def models(granted: Access = Depends(get_access), state: GatewayState = Depends(get_state)) -> ModelList:
    def listed(session) -> list[ListedModel]:
        default = state.models.default_entry(session) if state.models is not None else None
        out = []
        if default is None:
            # The default model outside the catalog: served to every project, as before the catalog.
            info = state.engine.model_info()
            out.append(ListedModel(name=info["name"], stage=None, parameters=info["parameters"], default=True,
                                   tier=grants.tier_for(session, granted.grant, info["name"]),
                                   summary="The gateway's default model (not in the model catalog)."))
        for entry in catalog.visible_models(session, granted.project):
            out.append(ListedModel(name=entry.name, stage=entry.stage, summary=entry.summary,
                                   parameters=entry.parameters, base_model=entry.base_model,
                                   own=entry.owner_project_id is not None,
                                   tier=grants.tier_for(session, granted.grant, entry.name),
                                   default=default is not None and default.id == entry.id))
        return out

    found = await state.run(listed)
    return ModelList(project=granted.project.slug, tier=granted.grant.tier, models=found)


async def _described(state: GatewayState, granted: Access, model: str | None) -> tuple[str, dict]:
    """The name and sizes of the model a read-only endpoint describes: a named one if the project
    may use it (read from its config, never loaded: these calls are not metered), else the default
    (its hook names and sizes are public for any GPT-2, whatever its stage)."""
    if model is None or state.models is None:
        if model is not None:  # a gateway without a pool serves one model: refuse any other name
            await state.run(lambda session: state.choose(session, granted, model))
        return state.engine.model_info()["name"], state.engine.dimensions()
    choice = await state.run(lambda session: state.choose(session, granted, model))
    return choice.name, state.models.dimensions(choice)


@router.get("/v1/hooks", response_model=HookPoints, summary="The hook points /v1/activations serves")
async def hook_points(model: str | None = None, granted: Access = Depends(get_access),
                      state: GatewayState = Depends(get_state)) -> HookPoints:
    name, dims = await _described(state, granted, model)
    return HookPoints(model=name, n_layer=dims["n_layer"], d_model=dims["d_model"],
                      n_head=dims["n_head"], d_mlp=dims["d_mlp"], hooks=hooks.names(dims["n_layer"]))


@router.get("/v1/usage", summary="The caller's remaining allowance, tier and extraction bound")
async def usage(model: str | None = None, granted: Access = Depends(get_access),
                state: GatewayState = Depends(get_state)) -> dict:
    name, dims = await _described(state, granted, model)

    def report(session) -> dict:
        tier = grants.tier_for(session, granted.grant, name)
        bound = tiers.extraction_bound(granted.grant, d_model=dims["d_model"], d_mlp=dims["d_mlp"],
                                       vocab=dims["vocab"], context=dims["context"], tier=tier)
        return {"user": granted.person.username, **quota.usage(session, granted), "model": name,
                "model_tier": tier, "extraction": bound}

    return await state.run(report)


def _tokenise(engine: Engine, text: str, new_tokens: int, *, score: bool = False) -> list[int]:
    """The token ids of `text` (after <|endoftext|> when scoring, so the first token is scored
    too, as GPT-2 was trained), checked against the model's context."""
    tokenizer = engine.tokenizer
    ids = [tokenizer.eos_token_id, *tokenizer.encode(text)] if score else tokenizer.encode(text)
    _check_context(len(ids), new_tokens, engine.context_length)
    return ids


async def tokenise(engine: Engine, text: str, new_tokens: int = 0, *, score: bool = False) -> list[int]:
    """`_tokenise` on a worker thread: a prompt of 200,000 characters takes a tenth of a second,
    which the event loop (every other caller's requests) must not wait for. The routes call it
    only after their `get_metered_call` dependency has identified and authorised the caller."""
    return await asyncio.to_thread(_tokenise, engine, text, new_tokens, score=score)


@router.post("/v1/generate", response_model=GenerateResponse, summary="Continue a prompt")
async def generate(body: GenerateRequest, metered: MeteredCall = Depends(get_metered_call)) -> GenerateResponse:
    _, engine = await metered.model(body.model, "generate")
    try:
        params = SamplingParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                                top_p=body.top_p, seed=body.seed, stop=list(body.stop), ignore_eos=body.ignore_eos)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    ids = await tokenise(engine, body.prompt, body.max_new_tokens)
    progress = GenerationProgress()

    async def run(granted: Access):
        # A seed is keyed with the admitted project, so it reproduces its text only there
        # (unseeded draws are random).
        project = "" if body.seed is None else granted.project.slug
        completions = await engine.generate(ids, params, n=body.n, project=project, progress=progress)
        return completions, [c.text for c in completions], sum(len(c.token_ids) for c in completions)

    call_id, completions, completion_tokens = await metered(
        "generate", body.prompt, len(ids), len(ids) + body.max_new_tokens * body.n, run,
        completion_cap=body.max_new_tokens * body.n, max_new_tokens=body.max_new_tokens,
        produced=lambda: progress.tokens)
    return GenerateResponse(
        id=call_id,
        choices=[Choice(text=c.text, finish_reason=c.finish_reason, tokens=len(c.token_ids)) for c in completions],
        usage=Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens,
                    total_tokens=len(ids) + completion_tokens))


def _scored(engine: Engine, ids: list[int], logprobs: list[float]) -> dict:
    """What score returns, rounded (`rounded`): also what is recorded as the call's outputs."""
    total = rounded(sum(logprobs))
    return {
        "tokens": [{"token": engine.tokenizer.decode([t]), "logprob": rounded(lp)} for t, lp in zip(ids[1:], logprobs)],
        "total_logprob": total,
        # From the rounded total, so the perplexity carries no digit of the log-probabilities that
        # the total does not.
        "perplexity": rounded(math.exp(-total / len(logprobs))),
    }


@router.post("/v1/score", response_model=ScoreResponse, summary="Log-probabilities of a text's own tokens")
async def score(body: ScoreRequest, metered: MeteredCall = Depends(get_metered_call)) -> ScoreResponse:
    _, engine = await metered.model(body.model, "score")
    ids = await tokenise(engine, body.text, score=True)

    async def run(_granted: Access):
        scored = await asyncio.to_thread(_scored, engine, ids, await engine.score(ids))
        return scored, scored, 0

    call_id, scored, _ = await metered("score", body.text, len(ids) - 1, len(ids) - 1, run)
    return ScoreResponse(id=call_id, tokens=[TokenLogprob(**t) for t in scored["tokens"]],
                         total_logprob=scored["total_logprob"], perplexity=scored["perplexity"],
                         usage=Usage(prompt_tokens=len(ids) - 1, completion_tokens=0, total_tokens=len(ids) - 1))


def _top(engine: Engine, top: list[tuple[int, float]]) -> dict:
    """What next-token returns, rounded (`rounded`): also what is recorded as the call's outputs."""
    return {"top": [{"token": engine.tokenizer.decode([t]), "probability": rounded(p)} for t, p in top]}


@router.post("/v1/next-token", response_model=NextTokenResponse, summary="The most likely next tokens (at most 5)")
async def next_token(body: NextTokenRequest, metered: MeteredCall = Depends(get_metered_call)) -> NextTokenResponse:
    _, engine = await metered.model(body.model, "next-token")
    ids = await tokenise(engine, body.prompt)

    async def run(_granted: Access):
        top = _top(engine, await engine.next_token(ids, body.top_k))
        return top, top, 0

    call_id, top, _ = await metered("next-token", body.prompt, len(ids), len(ids), run)
    return NextTokenResponse(id=call_id, top=[TokenProbability(**t) for t in top["top"]],
                             usage=Usage(prompt_tokens=len(ids), completion_tokens=0, total_tokens=len(ids)))


def _encoded(tensors: dict) -> tuple[dict[str, Activation], dict]:
    """The arrays as the response carries them (base64 of little-endian float16), and what is
    recorded as the call's outputs: each hook's shape and the SHA-256 of its bytes (the arrays
    themselves would fill the registry; the digests let an export be matched to the call)."""
    encoded, digests = {}, {}
    for name, tensor in tensors.items():
        raw = tensor.numpy().astype("<f2", copy=False).tobytes()
        encoded[name] = Activation(shape=list(tensor.shape), data=base64.b64encode(raw).decode("ascii"))
        digests[name] = {"shape": list(tensor.shape), "sha256": hashlib.sha256(raw).hexdigest()}
    return encoded, digests


@router.post("/v1/activations", response_model=ActivationsResponse,
             summary="Activations at TransformerLens hook points (internals tier), metered in bytes")
async def activations(body: ActivationsRequest, metered: MeteredCall = Depends(get_metered_call)) -> ActivationsResponse:
    name, engine = await metered.model(body.model, "activations")
    dims = engine.dimensions()
    names = hooks.check(body.hooks, dims["n_layer"])
    ids = await tokenise(engine, body.prompt, score=body.prepend_bos)
    picked = hooks.positions(body.positions, len(ids))
    size = hooks.nbytes(names, picked=len(picked), tokens=len(ids), d_model=dims["d_model"], n_head=dims["n_head"],
                        d_mlp=dims["d_mlp"])
    if size > hooks.MAX_CALL_BYTES:
        raise quota.RequestTooLarge(f"this call would return {size} bytes of activations; one call may return at "
                                    f"most {hooks.MAX_CALL_BYTES}: ask for fewer hooks or positions")

    async def run(_granted: Access):
        encoded, digests = await asyncio.to_thread(_encoded, await engine.activations(ids, names, picked))
        return encoded, {"positions": picked, "bytes": size, "hooks": digests}, 0

    call_id, encoded, _ = await metered("activations", body.prompt, len(ids), len(ids), run, activation_bytes=size)
    return ActivationsResponse(id=call_id, model=name, tokens=[engine.tokenizer.decode([t]) for t in ids],
                               positions=picked, activations=encoded, bytes=size,
                               usage=Usage(prompt_tokens=len(ids), completion_tokens=0, total_tokens=len(ids)))
