"""The model API (the enclave's gateway): GPT-2's forward pass, metered against the project's grant."""

from __future__ import annotations

from typing import Any

from enclave.client._http import Config, call


def generate(prompt: str, *, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, stop: list[str] | None = None, n: int = 1, config: Config | None = None) -> dict:
    """Continue `prompt`; returns the gateway's reply: {"id", "choices": [{"text", "finish_reason", "tokens"}], "usage"}."""
    body: dict[str, Any] = {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature,
                            "top_k": top_k, "top_p": top_p, "n": n, "stop": list(stop or [])}
    if seed is not None:
        body["seed"] = seed
    return call(config, "gateway", "POST", "/v1/generate", json=body)


def complete(prompt: str, **params: Any) -> str:
    """The text of one continuation (`generate` with n=1)."""
    return generate(prompt, **{**params, "n": 1})["choices"][0]["text"]


def score(text: str, *, config: Config | None = None) -> dict:
    """Log-probabilities of the text's own tokens: {"tokens": [{"token", "logprob"}], "total_logprob", "perplexity", ...}."""
    return call(config, "gateway", "POST", "/v1/score", json={"text": text})


def next_token(prompt: str, *, top_k: int = 5, config: Config | None = None) -> list[tuple[str, float]]:
    """The most likely next tokens (at most 5) with their probabilities, most likely first."""
    reply = call(config, "gateway", "POST", "/v1/next-token", json={"prompt": prompt, "top_k": top_k})
    return [(t["token"], t["probability"]) for t in reply["top"]]


def usage(*, config: Config | None = None) -> dict:
    """What the project has used and has left (tokens, calls)."""
    return call(config, "gateway", "GET", "/v1/usage")
