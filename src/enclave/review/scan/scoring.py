"""Scoring text under the enclave's model, for the memorisation signals of Carlini et al. (2021).

A scorer is any callable from text to the log-probability of each of its tokens. Two are provided.
`local_scorer` runs a Hugging Face model directory on the CPU with `local_files_only`: the review
service scores this way, in-process, from a read-only copy of the served model, because scoring
through the gateway would charge reviewers' checks to a scholar's grant or need a registry
identity with a grant of its own; `enclave review scan --model DIR` does the same. `gateway_scorer`
asks the gateway's `POST /v1/score` over HTTP (as a client like any other: no gateway internals),
for a review host without torch. Neither touches the environment: a process that must never reach
a model hub sets `HF_HUB_OFFLINE=1` itself before transformers is imported.

`signals()` turns scores into the paper's membership signals, where lower means more likely
memorised: perplexity; zlib ratio (ln perplexity over the zlib-compressed size, so text that is
merely repetitive is not mistaken for memorised); lowercase ratio (ln perplexity of the text over
that of its lower-cased form: a model that knows the exact casing has seen the text); and the
lowest perplexity of any window of `window_tokens` tokens (a memorised record inside ordinary prose).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ScorerError(RuntimeError):
    """Scoring failed (gateway unreachable, refused, or a model that cannot be loaded)."""


@dataclass(frozen=True)
class TokenScores:
    tokens: list[str]
    logprobs: list[float]  # natural log of each token's probability given the ones before it

    @property
    def perplexity(self) -> float:
        if not self.logprobs:
            return float("inf")
        return math.exp(-sum(self.logprobs) / len(self.logprobs))


Scorer = Callable[[str], TokenScores]


@dataclass(frozen=True)
class Signals:
    perplexity: float
    window_perplexity: float
    zlib_ratio: float
    lowercase_ratio: float | None  # None when the text has no upper case (lowering changes nothing)
    tokens: int


def signals(text: str, scorer: Scorer, window_tokens: int) -> Signals:
    scores = scorer(text)
    ppl = scores.perplexity
    lps = scores.logprobs
    if len(lps) > window_tokens:
        # Lowest mean negative log-likelihood over any window, by running sums.
        running = [0.0]
        for lp in lps:
            running.append(running[-1] + lp)
        best = max(running[i + window_tokens] - running[i] for i in range(len(lps) - window_tokens + 1))
        window_ppl = math.exp(-best / window_tokens)
    else:
        window_ppl = ppl
    compressed = len(zlib.compress(text.encode("utf-8")))
    zlib_ratio = math.log(ppl) / compressed if compressed else float("inf")
    lower = text.lower()
    lowercase_ratio = None
    if lower != text:
        lower_ppl = scorer(lower).perplexity
        if lower_ppl > 1.0 and ppl > 0:
            lowercase_ratio = math.log(ppl) / math.log(lower_ppl)
    return Signals(ppl, window_ppl, zlib_ratio, lowercase_ratio, len(lps))


def gateway_scorer(base_url: str, token: str, project: str | None = None, *, timeout: float = 60.0) -> Scorer:
    """Score through the gateway's `POST {base_url}/v1/score` (the caller's token is metered)."""
    import httpx

    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[:-3]
    headers = {"Authorization": f"token {token}"}
    if project:
        headers["X-Enclave-Project"] = project
    client = httpx.Client(base_url=root, headers=headers, timeout=timeout)

    def score(text: str) -> TokenScores:
        try:
            reply = client.post("/v1/score", json={"text": text})
        except httpx.HTTPError as exc:
            raise ScorerError(f"gateway unreachable for scoring ({exc.__class__.__name__})") from None
        if reply.status_code != 200:
            try:
                reason = reply.json().get("message") or reply.text
            except ValueError:
                reason = reply.text
            raise ScorerError(f"gateway refused to score ({reply.status_code}): {reason[:200]}")
        body = reply.json()
        return TokenScores([t["token"] for t in body["tokens"]], [float(t["logprob"]) for t in body["tokens"]])

    return score


def has_tokenizer(model_dir: Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in ("tokenizer.json", "vocab.json"))


def local_scorer(model_dir: Path) -> Scorer:
    """Score with a local Hugging Face causal LM (needs its tokenizer files); CPU, no network:
    everything is loaded with `local_files_only`."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ScorerError(f"local scoring needs torch and transformers ({exc})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ScorerError(f"cannot load a scoring model from {model_dir}: {str(exc).splitlines()[0]}") from None
    context = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def score(text: str) -> TokenScores:
        ids = tokenizer.encode(text)
        if not ids:
            return TokenScores([], [])
        tokens, logprobs = [], []
        # Like the gateway: <|endoftext|> first, so the first token is scored too; long texts in
        # consecutive context-sized pieces.
        with torch.no_grad():
            for start in range(0, len(ids), context - 1):
                piece = ids[start:start + context - 1]
                inputs = torch.tensor([[bos, *piece]])
                logits = model(inputs).logits[0, :-1].float()
                lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(piece)[:, None])[:, 0]
                logprobs.extend(lp.tolist())
                tokens.extend(tokenizer.convert_ids_to_tokens(piece))
        return TokenScores(tokens, logprobs)

    return score
