"""Reading a service's settings from the environment: shared by the gateway and the review
service (JupyterHub passes settings to the services it manages as environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

from enclave.errors import SettingsError


def env_int(name: str, default: int, smallest: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < smallest:
        raise SettingsError(f"{name} must be at least {smallest}, not {value}")
    return value


def cache_dir(name: str) -> Path:
    """`name` under the enclave's cache, which holds what set-up fetched or built once (GPT-2's BPE
    files, the notebook image's base and wheels, the compiled CPU kernels, test models):
    $ENCLAVE_CACHE_DIR, else $XDG_CACHE_HOME/enclave, else ~/.cache/enclave, as in
    scripts/fetch-gpt2-bpe.sh."""
    base = os.environ.get("ENCLAVE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "enclave"
    return Path(base) / name
