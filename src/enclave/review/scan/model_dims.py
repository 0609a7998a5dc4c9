"""The dimensions of a model the enclave serves, read from its directory's `config.json`: what an
activation of it looks like ([positions, d_model] for the residual stream, [positions, d_mlp]
inside the MLP, [positions, n_heads, d_head] for q/k/v/z, [n_heads, positions, positions] for
attention patterns), so that the review can recognise activation dumps in exports.

Read from the model directories the scan context names, as the weight fingerprints are; the names
of Hugging Face's GPT-2 config (`n_embd`, `n_inner`, ...), its newer generic names (`hidden_size`,
`intermediate_size`, ...) and TransformerLens's (`d_model`, `d_mlp`, ...) are all understood.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ModelDimsError(ValueError):
    """The directory has no config.json we can read dimensions from."""


@dataclass(frozen=True)
class ModelDims:
    model: str  # the model directory, for findings
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_ctx: int
    n_layers: int


def _first(config: dict, *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def read_model_dims(model_dir: Path) -> ModelDims:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as exc:
        raise ModelDimsError(f"{path} is unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(config, dict):
        raise ModelDimsError(f"{path} is not a JSON object")
    d_model = _first(config, "d_model", "n_embd", "hidden_size")
    n_heads = _first(config, "n_heads", "n_head", "num_attention_heads")
    if d_model is None or n_heads is None:
        raise ModelDimsError(f"{path} names no model width and head count (n_embd/hidden_size/d_model, n_head)")
    return ModelDims(
        model=str(model_dir), d_model=d_model,
        # GPT-2's `n_inner: null` means 4 x n_embd.
        d_mlp=_first(config, "d_mlp", "n_inner", "intermediate_size") or 4 * d_model,
        n_heads=n_heads, d_head=_first(config, "d_head") or d_model // n_heads,
        n_ctx=_first(config, "n_ctx", "n_positions", "max_position_embeddings") or 1024,
        n_layers=_first(config, "n_layers", "n_layer", "num_hidden_layers") or 0,
    )
