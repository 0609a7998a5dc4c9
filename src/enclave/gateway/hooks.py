"""Hook points of the activations endpoint, named as TransformerLens names them for GPT-2, and
the shapes they return: known before the forward runs, so a call's bytes are metered exactly at
admission.

Shapes are TransformerLens's without the batch axis (one prompt per call), with the position axis
cut to the positions asked for (P of the prompt's T tokens): [P, d_model] for the residual stream
and the outputs of attention and MLP; [P, n_heads, d_head] for q, k, v and z; [n_heads, P, T] for
attention scores (pre-softmax, causal mask as -inf) and patterns (query positions P, every key
position); [P, d_mlp] inside the MLP; [P, 1] for a LayerNorm's scale. `hook_normalized` is
before the LayerNorm's weight and bias, as in TransformerLens.

`unembed.*` is not served: its output is the full logit vector, which the model API never returns
(see `enclave.gateway.routes`).
"""

from __future__ import annotations

import math
import re

from enclave.errors import BadInput

MAX_HOOKS = 64
# The most one call may return, whatever the grant: the arrays are held in memory, encoded and
# sent in one response (every attention pattern of GPT-2 124M over 1,024 tokens is 300 MB).
MAX_CALL_BYTES = 256 * 1024**2
GLOBAL_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized")
BLOCK_HOOKS = (
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class UnknownHook(BadInput):
    code = "unknown_hook"


def names(n_layer: int) -> list[str]:
    """Every hook point, in the order of the forward (TransformerLens's `run_with_cache` order)."""
    per_block = [f"blocks.{i}.{hook}" for i in range(n_layer) for hook in BLOCK_HOOKS]
    return [*GLOBAL_HOOKS[:2], *per_block, *GLOBAL_HOOKS[2:]]


def parse(name: str, n_layer: int) -> tuple[int | None, str]:
    """(layer, hook within the block), or (None, name) for a hook outside the blocks."""
    if name in GLOBAL_HOOKS:
        return None, name
    match = _BLOCK.match(name)
    if match and match.group(2) in BLOCK_HOOKS and int(match.group(1)) < n_layer and str(int(match.group(1))) == match.group(1):
        return int(match.group(1)), match.group(2)
    if name.startswith("unembed."):
        raise UnknownHook(f"{name!r} is not served: the model API returns no logit vectors")
    raise UnknownHook(f"unknown hook {name!r}: hooks are TransformerLens names such as blocks.0.hook_resid_pre, "
                      f"blocks.0.attn.hook_pattern or blocks.0.mlp.hook_post, for blocks 0..{n_layer - 1} "
                      "(GET /v1/hooks lists them)")


def check(hooks: list[str], n_layer: int) -> list[str]:
    """The hooks asked for, each known, without repeats, in the order given."""
    if not hooks:
        raise BadInput("name at least one hook")
    if len(hooks) > MAX_HOOKS:
        raise BadInput(f"at most {MAX_HOOKS} hooks per call")
    if len(set(hooks)) != len(hooks):
        raise BadInput("a hook is named twice")
    for name in hooks:
        parse(name, n_layer)
    return list(hooks)


def positions(asked: list[int] | None, tokens: int) -> list[int]:
    """The positions asked for (negative ones count from the end, as in Python), or all of them."""
    if asked is None:
        return list(range(tokens))
    if not asked:
        raise BadInput("positions, when given, must name at least one position")
    if any(not -tokens <= p < tokens for p in asked):
        raise BadInput(f"positions must lie in {-tokens}..{tokens - 1} for this prompt of {tokens} tokens")
    return [p % tokens for p in asked]


def shape(name: str, *, picked: int, tokens: int, d_model: int, n_head: int, d_mlp: int) -> tuple[int, ...]:
    """The shape a hook returns for `picked` positions of a `tokens`-token prompt."""
    if name.endswith("hook_scale"):
        return (picked, 1)
    if name.endswith((".attn.hook_q", ".attn.hook_k", ".attn.hook_v", ".attn.hook_z")):
        return (picked, n_head, d_model // n_head)
    if name.endswith((".attn.hook_attn_scores", ".attn.hook_pattern")):
        return (n_head, picked, tokens)
    if name.endswith((".mlp.hook_pre", ".mlp.hook_post")):
        return (picked, d_mlp)
    return (picked, d_model)


def nbytes(hooks: list[str], *, picked: int, tokens: int, d_model: int, n_head: int, d_mlp: int,
           itemsize: int = 2) -> int:
    """What the call returns, in bytes of float16."""
    return sum(math.prod(shape(h, picked=picked, tokens=tokens, d_model=d_model, n_head=n_head, d_mlp=d_mlp))
               for h in hooks) * itemsize
