"""Access tiers of the model API, and what each one's caps let a project take away per day.

A grant names a tier (`enclave.registry.grants.TIERS`, least first): `sample` may generate;
`score` may also score texts and ask for the top next tokens (under the per-day cap on
probability-bearing calls); `internals` may also read activations (under a per-day byte budget);
`finetune` may also DP-fine-tune the model (the privacy service; the result is served to the
project alone and never leaves). An endpoint above the project's tier is refused with
403 and a message naming the tier it needs: no opaque walls.

`extraction_bound` turns a grant's caps into the published bound on model-dependent numbers a
project can obtain per day, and what that means for recovering weights: reading activations
before and after a linear map gives input/output pairs, and least squares recovers the map once
there are as many independent pairs as inputs (plus one, for its bias). For GPT-2's MLP output
matrix W_out (4d x d) that is 4d + 1 pairs of `blocks.{i}.mlp.hook_post` (4d numbers) and
`blocks.{i}.hook_mlp_out` (d numbers): 5d numbers, 10d bytes in float16, per pair.
"""

from __future__ import annotations

from enclave.errors import Refused
from enclave.registry.grants import TIERS

# What each metered endpoint needs at least.
ENDPOINT_TIERS = {"generate": "sample", "score": "score", "next-token": "score", "activations": "internals"}
FLOAT16_BYTES = 2
TOP_TOKENS = 5  # next-token's most (schemas.MAX_NEXT_TOKEN_K)


class TierRequired(Refused):
    """The project's tier does not include this endpoint (HTTP 403); `needed` names the tier that does."""

    code = "tier_required"

    def __init__(self, message: str, needed: str):
        super().__init__(message)
        self.needed = needed


def rank(tier: str) -> int:
    return TIERS.index(tier)


def allows(tier: str, endpoint: str) -> bool:
    return rank(tier) >= rank(ENDPOINT_TIERS[endpoint])


def require(tier: str, endpoint: str, project: str, model: str | None = None) -> None:
    """Refuse `endpoint` unless `tier` (the project's, for `model`) includes it, saying which tier would."""
    if not allows(tier, endpoint):
        needed = ENDPOINT_TIERS[endpoint]
        per_model = f" for model {model!r}" if model else ""
        raise TierRequired(f"/v1/{endpoint} needs the {needed!r} tier; project {project!r} has the {tier!r} tier"
                           f"{per_model} (tiers, least first: {', '.join(TIERS)}). An operator can raise it: "
                           f"enclave grant set {project} --tier {needed}"
                           + (f" (or for this model alone: --model {model} --tier {needed})" if model else ""),
                           needed=needed)


def extraction_bound(grant, d_model: int, d_mlp: int, vocab: int, context: int, tier: str | None = None) -> dict:
    """The most model-dependent numbers the grant's caps let a project obtain per UTC day, at its
    tier (`tier`: its tier for the model in question, default the grant's) and at each tier, and
    what that means for weight recovery. Upper bounds from the caps alone, whatever the prompts."""
    tier = tier or grant.tier
    sampled = grant.tokens_per_day  # each generated token is one draw from the model's distribution
    # Score returns one rounded log-probability per token of the text (within the daily tokens);
    # next-token at most 5 probabilities per call, and both count against the probability-call cap.
    probabilities = (min(grant.tokens_per_day, grant.logprob_calls_per_day * context)
                     + TOP_TOKENS * grant.logprob_calls_per_day)
    activation_numbers = grant.activation_bytes_per_day // FLOAT16_BYTES
    pair_numbers = d_mlp + d_model  # one (hook_post, hook_mlp_out) pair
    pairs_needed = d_mlp + 1  # least squares with a bias: as many independent pairs as inputs, plus one
    pairs_per_day = activation_numbers // pair_numbers
    per_tier = {
        "sample": {"numbers_per_day": sampled, "kind": "sampled token ids (no probabilities)"},
        "score": {"numbers_per_day": sampled + probabilities,
                  "kind": "sampled tokens, plus log-probabilities and top-5 probabilities rounded to 3 decimals",
                  "full_logit_vectors_per_day": round(probabilities / vocab, 3)},
        "internals": {"numbers_per_day": sampled + probabilities + activation_numbers,
                      "kind": "as score, plus float16 activations",
                      "activation_numbers_per_day": activation_numbers},
    }
    per_tier["finetune"] = {**per_tier["internals"], "kind": "as internals; DP fine-tunes (the privacy service) return no numbers, only a model served to the project"}
    mlp = {
        "matrix": f"blocks.{{i}}.mlp W_out ({d_mlp} x {d_model})",
        "pairs_needed": pairs_needed,
        "bytes_needed": pairs_needed * pair_numbers * FLOAT16_BYTES,
        "pairs_per_day": pairs_per_day,
        "matrices_per_day": round(pairs_per_day / pairs_needed, 3),
        "days_per_matrix": None if pairs_per_day == 0 else round(pairs_needed / pairs_per_day, 4),
    }
    reads_internals = allows(tier, "activations")
    return {
        "tier": tier,
        "numbers_per_day": per_tier[tier]["numbers_per_day"],
        "per_tier": per_tier,
        "mlp_regression": mlp if reads_internals else {**mlp, "pairs_per_day": 0, "matrices_per_day": 0,
                                                        "days_per_matrix": None},
        "meaning": (f"Recovering one {d_mlp} x {d_model} MLP matrix by regression needs {pairs_needed} activation "
                    f"pairs ({mlp['bytes_needed']} bytes); "
                    + (f"this grant allows {pairs_per_day} pairs per day."
                       if reads_internals else f"the {tier!r} tier returns no activations.")),
    }
