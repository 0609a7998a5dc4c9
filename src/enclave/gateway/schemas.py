"""Request and response bodies of the model API. Validation here is the first line against bad
input; limits that depend on the model or the grant are checked in the app."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 200_000
MAX_N = 8
MAX_HOOKS = 64  # hooks per activations call (enclave.gateway.hooks.MAX_HOOKS)
MAX_NEXT_TOKEN_K = 5  # never more: more returned probabilities make logit reconstruction cheaper
# Every probability-bearing number returned (log-probabilities, their total, perplexity, next-token
# probabilities) is rounded to this many decimals, the same way (`enclave.gateway.routes.rounded`).
LOGPROB_DECIMALS = 3
_ROUNDED = f"rounded to {LOGPROB_DECIMALS} decimals"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(Strict):
    model: str | None = Field(default=None, max_length=200, description=(
        "Which model (GET /v1/models lists those the project may use); omitted: the gateway's default model."))
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text to continue.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Most tokens to generate per sample.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_k: int = Field(default=0, ge=0, le=1000, description="Sample from the k most likely tokens; 0 = off.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1 = off.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description=(
        "Same seed and prompt, same output, within a project. The seed is keyed with a server secret, "
        "the project and the prompt, so it does not determine the random draws by itself."))
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=4, description="Stop before any of these strings (at most 4).")
    n: int = Field(default=1, ge=1, le=MAX_N, description="Number of samples.")
    ignore_eos: bool = Field(default=False, description="Keep going past the end-of-text token (benchmarks).")


class Choice(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    id: str
    choices: list[Choice]
    usage: Usage


class ScoreRequest(Strict):
    model: str | None = Field(default=None, max_length=200, description=(
        "Which model (GET /v1/models lists those the project may use); omitted: the gateway's default model."))
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text whose own tokens to score.")


class TokenLogprob(BaseModel):
    token: str
    logprob: float = Field(description=f"ln P(token | the text before it), {_ROUNDED}.")


class ScoreResponse(BaseModel):
    id: str
    tokens: list[TokenLogprob]
    total_logprob: float = Field(description=f"The sum of the tokens' log-probabilities, {_ROUNDED}.")
    perplexity: float = Field(description=f"exp(-total_logprob / tokens) of the rounded total, {_ROUNDED}.")
    usage: Usage


class NextTokenRequest(Strict):
    model: str | None = Field(default=None, max_length=200, description=(
        "Which model (GET /v1/models lists those the project may use); omitted: the gateway's default model."))
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    top_k: int = Field(default=5, ge=1, le=MAX_NEXT_TOKEN_K, description=f"At most {MAX_NEXT_TOKEN_K}.")


class TokenProbability(BaseModel):
    token: str
    probability: float = Field(description=f"P(token | prompt), {_ROUNDED} (so a small one can be 0).")


class NextTokenResponse(BaseModel):
    id: str
    top: list[TokenProbability]
    usage: Usage


class ActivationsRequest(Strict):
    model: str | None = Field(default=None, max_length=200, description=(
        "Which model (GET /v1/models lists those the project may use); omitted: the gateway's default model."))
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    hooks: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=MAX_HOOKS, description=(
            "TransformerLens hook names, e.g. blocks.0.hook_resid_pre, blocks.3.attn.hook_pattern, "
            "blocks.5.mlp.hook_post (GET /v1/hooks lists them)."))
    positions: list[int] | None = Field(default=None, min_length=1, max_length=4096, description=(
        "Token positions to return (negative counts from the end); default all. Attention scores and "
        "patterns are cut along the query axis."))
    prepend_bos: bool = Field(default=True, description="Put <|endoftext|> first, as TransformerLens does.")


class Activation(BaseModel):
    shape: list[int]
    dtype: Literal["float16"] = "float16"
    data: str = Field(description="base64 of the array's bytes: little-endian float16, C order.")


class ActivationsResponse(BaseModel):
    id: str
    model: str
    tokens: list[str] = Field(description="The tokens of the sequence run (with <|endoftext|> first if prepended).")
    positions: list[int]
    activations: dict[str, Activation]
    bytes: int = Field(description="Bytes of activations returned: what the call was charged.")
    usage: Usage


class ModelInfo(BaseModel):
    name: str
    parameters: int
    context_length: int


class ListedModel(BaseModel):
    name: str
    stage: str | None = Field(description="Release stage (internal, partner, gated, general); null for the "
                                          "gateway's default model outside the catalog.")
    summary: str = Field(description="The first paragraph of the model card.")
    parameters: int
    base_model: str | None = None
    own: bool = Field(default=False, description="The project's own model (a fine-tune), served to it alone.")
    default: bool = Field(default=False, description="What a call without `model` gets.")
    tier: str | None = Field(default=None, description="The project's tier for this model (its grant's, unless the "
                                                      "grant names another for this model).")


class ModelList(BaseModel):
    project: str
    tier: str
    models: list[ListedModel]


class HookPoints(BaseModel):
    model: str
    n_layer: int
    d_model: int
    n_head: int
    d_mlp: int
    hooks: list[str] = Field(description="Hook names the activations endpoint serves (the internals tier), in forward order.")


class ErrorBody(BaseModel):
    error: str
    message: str
