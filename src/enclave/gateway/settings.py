"""The gateway's configuration, read from the environment once at start-up (the hub passes it to
the services it manages); everything below is handed the values.

- ENCLAVE_MODEL_DIR: the GPT-2 model directory (required; `--model` overrides);
- ENCLAVE_DB_URL / ENCLAVE_HOME: the registry (`enclave.envsettings.database_url`);
- JUPYTERHUB_API_URL, JUPYTERHUB_SERVICE_NAME: the hub that vouches for tokens, and our name there;
- ENCLAVE_DEVICE: auto, cpu or cuda;
- ENCLAVE_GATEWAY_MAX_BATCH, ENCLAVE_GATEWAY_MAX_QUEUE: the engine's slots and queue;
- ENCLAVE_GATEWAY_HEARTBEAT_S, ENCLAVE_GATEWAY_DEAD_AFTER_S: how often this gateway instance
  heartbeats and sweeps, and how long a silent instance has before its open reservations are
  settled at their worst case (seconds; defaults 5 and 30);
- ENCLAVE_CPU_KERNELS=0 turns our compiled CPU kernels off; CXX names the compiler that builds them
  (default g++, else c++); they are kept in kernels/ of the enclave cache (ENCLAVE_CACHE_DIR);
- ENCLAVE_GATEWAY_SEED_SECRET_FILE: the 32-byte secret that keys sampling seeds, so a caller's seed
  reproduces a text without letting the caller predict the draws (default
  <ENCLAVE_HOME>/gateway/sampling-secret, created 0600 on first start).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from enclave.envsettings import cache_dir, database_url, enclave_home, env_int, env_str
from enclave.errors import SettingsError

__all__ = ["CpuKernelSettings", "GatewaySettings", "SettingsError", "keep_hub_offline"]


@dataclasses.dataclass(frozen=True)
class CpuKernelSettings:
    """How to get the compiled CPU kernels (`enclave.gateway.cpu_kernels.load`)."""

    enabled: bool = True
    compiler: str | None = None  # None: g++ or c++ from PATH
    cache: str | None = None  # where built kernels are kept; None: kernels/ of the enclave cache


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    model_dir: str
    db_url: str
    hub_api_url: str | None = None
    service_name: str = "gateway"
    device: str = "auto"
    max_batch: int = 32
    max_queue: int = 256
    heartbeat_s: int = 5
    dead_after_s: int = 30
    kernels: CpuKernelSettings = CpuKernelSettings()
    # The file that keeps the sampling secret; None: a fresh random secret each start (tests), so a
    # seed reproduces its text only until the gateway restarts.
    sampling_secret_file: Path | None = None

    @classmethod
    def from_env(cls, **overrides) -> "GatewaySettings":
        """The settings from the environment; `overrides` that are not None win (command-line
        options). Also keeps the model hub offline for this process (`keep_hub_offline`)."""
        model_dir = overrides.pop("model_dir", None) or env_str("ENCLAVE_MODEL_DIR")
        if not model_dir:
            raise SettingsError("set ENCLAVE_MODEL_DIR to a GPT-2 model directory (or pass --model)")
        values = dict(
            model_dir=model_dir,
            db_url=database_url(),
            hub_api_url=env_str("JUPYTERHUB_API_URL"),
            service_name=env_str("JUPYTERHUB_SERVICE_NAME", "gateway"),
            device=env_str("ENCLAVE_DEVICE", "auto"),
            max_batch=env_int("ENCLAVE_GATEWAY_MAX_BATCH", 32),
            max_queue=env_int("ENCLAVE_GATEWAY_MAX_QUEUE", 256),
            heartbeat_s=env_int("ENCLAVE_GATEWAY_HEARTBEAT_S", 5),
            dead_after_s=env_int("ENCLAVE_GATEWAY_DEAD_AFTER_S", 30),
            kernels=CpuKernelSettings(enabled=env_str("ENCLAVE_CPU_KERNELS", "1") != "0", compiler=env_str("CXX"),
                                      cache=str(cache_dir("kernels"))),
            sampling_secret_file=Path(env_str("ENCLAVE_GATEWAY_SEED_SECRET_FILE")
                                      or enclave_home() / "gateway" / "sampling-secret"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        keep_hub_offline()
        return cls(**values)


def keep_hub_offline() -> None:
    """Part of the gateway's start-up, before a model is loaded: model hubs are unreachable from the
    enclave and the weights must never be fetched, so tell huggingface_hub not to try (it reads
    HF_HUB_OFFLINE when transformers is first imported). `load_model` also passes
    `local_files_only=True`, which holds even where this comes too late."""
    os.environ["HF_HUB_OFFLINE"] = "1"
