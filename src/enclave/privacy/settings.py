"""The privacy service's configuration, read from the environment once, at start-up
(`PrivacySettings.from_env`; JupyterHub passes the JUPYTERHUB_* variables to the services it
manages, the ENCLAVE_* ones are ours)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from enclave.envsettings import database_url, enclave_home, env_int, env_str
from enclave.errors import SettingsError

MIB = 1024**2


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    db_url: str
    # Where the service keeps its state: the receipt-signing key.
    home: Path
    receipt_key_file: Path
    # JupyterHub: identity for tokens. None: no hub (tests give a stand-in).
    hub_api_url: str | None = None
    service_name: str = "privacy"
    # The path the hub's proxy serves us under; every route lives below it.
    base_url: str = "/services/privacy/"
    # Datasets larger than this are refused (they are read whole into memory per query).
    max_dataset_bytes: int = 512 * MIB
    # Bins a histogram may ask for.
    max_bins: int = 1000
    # DP fine-tuning: the base model when a job names none (the gateway's default model:
    # $ENCLAVE_MODEL_DIR, else the demo model under home), whether this process runs queued jobs
    # (one at a time, on a worker thread), and the most epochs a notebook may ask for.
    model_dir: Path | None = None
    finetune_worker: bool = True
    finetune_max_epochs: int = 20

    @property
    def default_model_dir(self) -> Path:
        return self.model_dir or self.home / "demo" / "model"

    @property
    def prefix(self) -> str:
        return self.base_url.rstrip("/")

    @classmethod
    def from_env(cls, **overrides) -> "PrivacySettings":
        """The service's one reading of the environment; `overrides` (not None) win."""
        home = Path(overrides.pop("home", None) or enclave_home()).resolve()
        values = dict(
            db_url=database_url(),
            home=home,
            receipt_key_file=Path(env_str("ENCLAVE_PRIVACY_KEY_FILE") or home / "privacy" / "receipt-key.pem"),
            hub_api_url=env_str("JUPYTERHUB_API_URL"),
            service_name=env_str("JUPYTERHUB_SERVICE_NAME", cls.service_name),
            base_url=env_str("JUPYTERHUB_SERVICE_PREFIX", cls.base_url),
            max_dataset_bytes=env_int("ENCLAVE_PRIVACY_MAX_DATASET_BYTES", cls.max_dataset_bytes),
            max_bins=env_int("ENCLAVE_PRIVACY_MAX_BINS", cls.max_bins),
            model_dir=Path(env_str("ENCLAVE_MODEL_DIR")) if env_str("ENCLAVE_MODEL_DIR") else None,
            finetune_worker=env_str("ENCLAVE_PRIVACY_FINETUNE_WORKER", "1") not in ("0", "false", "no"),
            finetune_max_epochs=env_int("ENCLAVE_PRIVACY_FINETUNE_MAX_EPOCHS", cls.finetune_max_epochs),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def for_home(cls, home: Path, db_url: str, **overrides) -> "PrivacySettings":
        """Everything under one directory (tests)."""
        home = Path(home).resolve()
        settings = cls(**{"db_url": db_url, "home": home, "receipt_key_file": home / "privacy" / "receipt-key.pem",
                          **overrides})
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.base_url.startswith("/") or not self.base_url.endswith("/"):
            raise SettingsError(f"the service prefix must start and end with '/', not {self.base_url!r}")
