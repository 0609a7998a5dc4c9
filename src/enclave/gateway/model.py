"""Load a GPT-2-family Hugging Face directory for the gateway, strictly offline.

The weights never leave the enclave and the hub is unreachable anyway, so nothing here may try the
network: every load passes `local_files_only=True`, and the gateway's start-up sets
`HF_HUB_OFFLINE` before transformers is imported (`enclave.gateway.settings.keep_hub_offline`). Failures become one `ModelLoadError` with a one-line reason, because the
operator reads it in a service log.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module  # a GPT2LMHeadModel in eval mode
    tokenizer: object  # a transformers tokenizer
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def config(self):
        return self.model.config

    def model_info(self) -> dict:
        """What callers may know about the model: its name, size and context length, nothing more."""
        return {"name": self.name, "parameters": sum(p.numel() for p in self.model.parameters()),
                "context_length": int(self.config.n_positions)}


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def _check_dir(folder: Path) -> dict:
    """The parsed config.json, after checking the directory holds a whole GPT-2 checkpoint."""
    if not folder.is_dir():
        raise ModelLoadError(f"model directory {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not readable JSON: {exc}") from None
    if config.get("model_type") != "gpt2":
        raise ModelLoadError(f"{folder} holds a {config.get('model_type')!r} model, not a GPT-2-family one")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    return config


def load_model(model_dir: str | os.PathLike, device: str = "auto", dtype: torch.dtype | None = None) -> LoadedModel:
    """GPT2LMHeadModel and its tokenizer from `model_dir`, in eval mode: fp32 on CPU, bf16 on CUDA
    unless `dtype` says otherwise."""
    folder = Path(model_dir).expanduser().resolve()
    config = _check_dir(folder)
    target = _pick_device(device)
    dtype = dtype or (torch.bfloat16 if target.type == "cuda" else torch.float32)

    from transformers import AutoTokenizer, GPT2LMHeadModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the operator needs one line
        raise ModelLoadError(f"cannot load the tokenizer from {folder}: {_one_line(exc)}") from None
    try:
        model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load GPT-2 weights from {folder}: {_one_line(exc)}") from None
    model.to(target).eval()
    name = config.get("name_or_path") or config.get("_name_or_path") or ""
    return LoadedModel(model=model, tokenizer=tokenizer, name=folder.name or Path(name).name,
                       device=target, dtype=dtype)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
