"""The one place that reads the enclave's common settings from the environment.

JupyterHub passes settings to the services it manages as environment variables; each service (and
each CLI command, which is a start-up of its own) reads them here once into its settings object
and hands values down. Nothing below the services (the registry, the scan library) reads
`os.environ`.

- ENCLAVE_HOME: where the enclave keeps its state (default ./var);
- ENCLAVE_DB_URL: the registry database (default: SQLite at $ENCLAVE_HOME/enclave.db);
- ENCLAVE_CACHE_DIR: what set-up fetched or built once (default ~/.cache/enclave).
"""

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


def enclave_home() -> Path:
    """$ENCLAVE_HOME (default ./var), absolute."""
    return Path(os.environ.get("ENCLAVE_HOME") or "./var").resolve()


def database_url() -> str:
    """$ENCLAVE_DB_URL, else the SQLite file under the enclave home."""
    return os.environ.get("ENCLAVE_DB_URL") or f"sqlite:///{enclave_home() / 'enclave.db'}"


def env_flag(name: str) -> bool:
    """A yes/no setting: 1, true or yes (any case) is yes; anything else, or unset, is no."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def env_str(name: str, default: str | None = None) -> str | None:
    """A text setting; unset or empty gives `default`."""
    return os.environ.get(name) or default


def env_paths(name: str) -> tuple[str, ...]:
    """A list of paths separated like PATH; unset gives ()."""
    return tuple(p for p in os.environ.get(name, "").split(os.pathsep) if p)
