"""The gateway's configuration, from the environment (the hub passes it to managed services)."""

from __future__ import annotations

import dataclasses
import os

from enclave.envsettings import env_int
from enclave.errors import SettingsError
from enclave.envsettings import database_url


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    model_dir: str
    db_url: str
    hub_api_url: str | None = None
    service_name: str = "gateway"
    device: str = "auto"
    max_batch: int = 32
    max_queue: int = 256

    @classmethod
    def from_env(cls, **overrides) -> "GatewaySettings":
        model_dir = overrides.pop("model_dir", None) or os.environ.get("ENCLAVE_MODEL_DIR")
        if not model_dir:
            raise SettingsError("set ENCLAVE_MODEL_DIR to a GPT-2 model directory (or pass --model)")
        values = dict(
            model_dir=model_dir,
            db_url=database_url(),
            hub_api_url=os.environ.get("JUPYTERHUB_API_URL") or None,
            service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME") or "gateway",
            device=os.environ.get("ENCLAVE_DEVICE", "auto"),
            max_batch=env_int("ENCLAVE_GATEWAY_MAX_BATCH", 32),
            max_queue=env_int("ENCLAVE_GATEWAY_MAX_QUEUE", 256),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
