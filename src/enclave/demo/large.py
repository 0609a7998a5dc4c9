"""The demo's second, larger model: GPT-2 124M's architecture (12 layers, 768 wide, 1,024 tokens of
context, GPT-2's tokenizer) with seeded random weights, so that staged release has two sizes to
stage.

Training 124M parameters on a laptop is out of reach, and GPT-2's own weights cannot be downloaded
inside the enclave; a random checkpoint of the right size exercises everything a release decides
on (loading, memory, serving, weight fingerprints, the extraction bound of a 768-wide model),
while its model card says plainly that its outputs mean nothing. Built in seconds: the tensors are
drawn directly with GPT-2's initialisation (normal, std 0.02; residual projections scaled by
1/sqrt(2 x layers); layer norms 1 and biases 0) and written as safetensors, without instantiating
the model. Cached like the demo GPT-2: a second call with the same parameters returns at once.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from enclave.demo.model import sha256_file

BUILDER_VERSION = 1
_WEIGHTS = "model.safetensors"
# Texts the random model's loss is measured on, for its card's evaluation results.
EVAL_TEXTS = (
    "The census of 1990 counted every household in the county.",
    "Researchers study what language models remember from their training data.",
    "A small town library opened a new reading room last spring.",
)


@dataclass(frozen=True)
class LargeParams:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    seed: int = 124


def _shapes(p: LargeParams) -> dict[str, tuple[int, ...]]:
    """Every tensor Hugging Face's GPT2LMHeadModel saves (lm_head is tied to wte, so not saved)."""
    d, shapes = p.n_embd, {"transformer.wte.weight": (p.vocab_size, p.n_embd),
                           "transformer.wpe.weight": (p.n_positions, p.n_embd)}
    for i in range(p.n_layer):
        h = f"transformer.h.{i}"
        shapes.update({
            f"{h}.ln_1.weight": (d,), f"{h}.ln_1.bias": (d,),
            f"{h}.attn.c_attn.weight": (d, 3 * d), f"{h}.attn.c_attn.bias": (3 * d,),
            f"{h}.attn.c_proj.weight": (d, d), f"{h}.attn.c_proj.bias": (d,),
            f"{h}.ln_2.weight": (d,), f"{h}.ln_2.bias": (d,),
            f"{h}.mlp.c_fc.weight": (d, 4 * d), f"{h}.mlp.c_fc.bias": (4 * d,),
            f"{h}.mlp.c_proj.weight": (4 * d, d), f"{h}.mlp.c_proj.bias": (d,),
        })
    shapes.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
    return shapes


def _is_built(folder: Path, params: LargeParams) -> bool:
    try:
        manifest = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("builder_version") == BUILDER_VERSION and manifest.get("params") == asdict(params)
            and (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
            and (folder / _WEIGHTS).is_file() and manifest.get("weights_sha256") == sha256_file(folder / _WEIGHTS))


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "build.json").read_text(encoding="utf-8"))


def build_large_demo(out: Path, *, force: bool = False) -> Path:
    """The model directory under `out` (built, or reused from the cache)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config

    from enclave.demo.tokenizer import gpt2_tokenizer

    params = LargeParams()
    folder = Path(out)
    if not force and _is_built(folder, params):
        return folder
    started = time.monotonic()
    staged = folder.parent / f".{folder.name}.building"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    generator = torch.Generator().manual_seed(params.seed)
    residual_std = 0.02 / math.sqrt(2 * params.n_layer)
    tensors = {}
    for name, shape in _shapes(params).items():
        if ".ln_" in name and name.endswith(".weight"):
            tensors[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            tensors[name] = torch.zeros(shape)
        else:
            std = residual_std if name.endswith("c_proj.weight") else 0.02
            tensors[name] = torch.empty(shape).normal_(0.0, std, generator=generator)
    save_file(tensors, str(staged / _WEIGHTS), metadata={"format": "pt"})
    config = GPT2Config(n_layer=params.n_layer, n_head=params.n_head, n_embd=params.n_embd,
                        n_positions=params.n_positions, vocab_size=params.vocab_size)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(staged)
    tokenizer = gpt2_tokenizer()
    tokenizer.save_pretrained(staged)
    loss = _eval_loss(staged, tokenizer)
    manifest = {"builder_version": BUILDER_VERSION, "params": asdict(params),
                "weights_sha256": sha256_file(staged / _WEIGHTS),
                "n_parameters": sum(t.numel() for t in tensors.values()),
                "eval_loss": round(loss, 4), "eval_perplexity": round(math.exp(loss), 1),
                "build_seconds": round(time.monotonic() - started, 1)}
    (staged / "build.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    staged.rename(folder)
    return folder


def _eval_loss(folder: Path, tokenizer) -> float:
    """Mean next-token cross-entropy on EVAL_TEXTS (about ln 50,257 = 10.8 for random weights)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()
    losses = []
    with torch.no_grad():
        for text in EVAL_TEXTS:
            ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer.encode(text)]])
            losses.append(float(model(ids, labels=ids).loss))
    return sum(losses) / len(losses)
