"""Memorisation signals under the model (Carlini et al. 2021): passages of an export that the
enclave's model finds suspiciously easy (low perplexity, low perplexity for how incompressible the
text is, a strong preference for its exact casing, or one very easy 50-token window) are pointed
out for the reviewer. Scoring goes through the scanner's scorer (the gateway's /v1/score, or a
local model for the CLI) and costs model calls, so the number of passages per export is capped."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item
from enclave.review.scan.scoring import ScorerError, signals

NAME = "model_signals"


def passages(text: str, min_chars: int, max_chars: int):
    """(start, end) of prose passages: lines (a memorised record is usually one line, and averaging
    it with its neighbours would hide it), long lines cut into pieces of at most `max_chars`."""
    start = 0
    for line in text.splitlines(keepends=True):
        end = start + len(line)
        for a in range(start, end, max_chars):
            b = min(end, a + max_chars)
            chunk = text[a:b]
            letters = sum(c.isalpha() for c in chunk)
            if letters >= min_chars and letters >= 0.5 * len(chunk.strip()):
                yield a, b
        start = end


def check(item: Item, env: Env) -> Result:
    result = Result()
    scorer = env.context.scorer
    if scorer is None or not item.segments or env.scoring_failed:
        return result
    policy = env.policy.memorisation.model
    for segment in item.segments:
        for start, end in passages(segment.text, policy.min_passage_chars, policy.max_passage_chars):
            if env.passages_scored >= policy.max_passages:
                env.passages_skipped += 1
                continue
            env.passages_scored += 1
            text = segment.text[start:end].strip()
            try:
                s = signals(text, scorer, policy.window_tokens)
            except ScorerError as exc:
                env.scoring_failed = True
                env.problems.append(f"model-based memorisation signals were not computed: {exc}")
                return result
            fired = []
            if s.perplexity <= policy.max_perplexity:
                fired.append(f"perplexity {s.perplexity:.2f}")
            if s.window_perplexity <= policy.max_window_perplexity and s.tokens > policy.window_tokens:
                fired.append(f"lowest {policy.window_tokens}-token window perplexity {s.window_perplexity:.2f}")
            if s.zlib_ratio <= policy.max_zlib_ratio:
                fired.append(f"zlib ratio {s.zlib_ratio:.4f}")
            if s.lowercase_ratio is not None and s.lowercase_ratio <= policy.max_lowercase_ratio:
                fired.append(f"lowercase ratio {s.lowercase_ratio:.2f}")
            if fired:
                result.add(NAME, policy.severity, item.name, segment.where(start, end),
                           "the model finds this passage suspiciously easy, as it does text it memorised: " + ", ".join(fired),
                           **segment.evidence(start, end, perplexity=s.perplexity, window_perplexity=s.window_perplexity,
                                              zlib_ratio=s.zlib_ratio, lowercase_ratio=s.lowercase_ratio, tokens=s.tokens))
    return result
