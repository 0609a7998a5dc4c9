"""The model API (the enclave's gateway): GPT-2's forward pass, metered against the project's grant.

Each call returns a small typed result with a readable repr (`enclave.client.results`); results
that were JSON objects are still dicts, so `reply["choices"]` keeps working."""

from __future__ import annotations

import base64
from typing import Any, Sequence

from enclave.client._http import Config, call
from enclave.client.results import Activations, Generation, NextTokens, Result, Scores, UsageReport


def _with_model(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    # Without `model` the gateway uses its default model; `models()` lists the others one may use.
    return body if model is None else {**body, "model": model}


def _model_query(model: str | None) -> dict[str, Any]:
    return {} if model is None else {"params": {"model": model}}


def generate(prompt: str, *, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, stop: list[str] | None = None, n: int = 1, model: str | None = None,
             config: Config | None = None) -> Generation:
    """Continue `prompt`: `.text` (the first sample), `.choices` ({text, finish_reason, tokens}), `.usage`, `.id`.
    `model` names one of `models()` (default: the gateway's default model)."""
    body: dict[str, Any] = {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature,
                            "top_k": top_k, "top_p": top_p, "n": n, "stop": list(stop or [])}
    if seed is not None:
        body["seed"] = seed
    return Generation(call(config, "gateway", "POST", "/v1/generate", json=_with_model(body, model)))


def complete(prompt: str, **params: Any) -> str:
    """The text of one continuation (`generate` with n=1)."""
    return generate(prompt, **{**params, "n": 1}).text


def score(text: str, *, model: str | None = None, config: Config | None = None) -> Scores:
    """Log-probabilities of the text's own tokens: `.tokens` ({token, logprob}), `.logprobs`,
    `.total_logprob`, `.perplexity`, `.usage` (needs the grant's `score` tier)."""
    return Scores(call(config, "gateway", "POST", "/v1/score", json=_with_model({"text": text}, model)))


def next_token(prompt: str, *, top_k: int = 5, model: str | None = None, config: Config | None = None) -> NextTokens:
    """The most likely next tokens (at most 5) as (token, probability), most likely first (`score` tier)."""
    return NextTokens(call(config, "gateway", "POST", "/v1/next-token",
                           json=_with_model({"prompt": prompt, "top_k": top_k}, model)))


def activations(prompt: str, hooks: Sequence[str] | str, *, positions: Sequence[int] | None = None,
                model: str | None = None, prepend_bos: bool = True, config: Config | None = None) -> Activations:
    """Activations at TransformerLens hook points, e.g. `activations("Hello", ["blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_pattern"])`: hook name -> numpy float16 array, shaped as TransformerLens's
    cache without the batch axis, cut to `positions` (default all; negative count from the end).
    Needs the grant's `internals` tier; charged in bytes against the day's activation budget."""
    import numpy as np  # only here: importing the client stays light

    body: dict[str, Any] = {"prompt": prompt, "hooks": [hooks] if isinstance(hooks, str) else list(hooks),
                            "prepend_bos": prepend_bos}
    if positions is not None:
        body["positions"] = list(positions)
    reply = call(config, "gateway", "POST", "/v1/activations", json=_with_model(body, model))
    arrays = {name: np.frombuffer(base64.b64decode(item["data"]), dtype="<f2").reshape(item["shape"])
              for name, item in reply["activations"].items()}
    return Activations(arrays, reply)


def usage(*, model: str | None = None, config: Config | None = None) -> UsageReport:
    """What the project has used and has left (tokens, calls, activation bytes), its tier, and what
    its caps let it obtain per day (`.extraction`, for `model`'s dimensions)."""
    return UsageReport(call(config, "gateway", "GET", "/v1/usage", **_model_query(model)))


def model(*, config: Config | None = None) -> Result:
    """The gateway's default model: name, parameters, context length."""
    return Result(call(config, "gateway", "GET", "/v1/model"))


def models(*, config: Config | None = None) -> Result:
    """The models this project may use now (`.models`: name, stage, summary of its card, parameters,
    whether it is the project's own fine-tune or the default), and the project's `.tier`."""
    return Result(call(config, "gateway", "GET", "/v1/models"))


def hooks(*, model: str | None = None, config: Config | None = None) -> Result:
    """A model's dimensions and the hook names `activations` takes (`.hooks`, in forward order)."""
    return Result(call(config, "gateway", "GET", "/v1/hooks", **_model_query(model)))
