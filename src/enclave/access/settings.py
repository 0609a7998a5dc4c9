"""The access service's configuration, read from the environment once, at start-up
(`AccessSettings.from_env`; JupyterHub passes the JUPYTERHUB_* variables to the services it
manages). Everything below the service is handed these values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from enclave.envsettings import database_url, enclave_home, env_int, env_str
from enclave.errors import SettingsError


@dataclasses.dataclass(frozen=True)
class AccessSettings:
    db_url: str
    home: Path
    # Signs the browser-session cookies (made on first start, kept under the enclave home).
    cookie_secret_file: Path
    # JupyterHub: identity for browser logins (OAuth). None: no hub, no logins.
    hub_api_url: str | None = None
    hub_api_token: str = ""
    service_name: str = "access"
    base_url: str = "/services/access/"
    oauth_client_id: str = "service-access"
    oauth_callback_url: str = ""
    oauth_authorize_url: str = ""
    # Browser sessions end this long after login, whatever the hub token's own lifetime.
    session_max_age_s: int = 8 * 3600

    @property
    def prefix(self) -> str:
        return self.base_url.rstrip("/")

    @classmethod
    def from_env(cls, **overrides) -> "AccessSettings":
        home = Path(overrides.pop("home", None) or enclave_home()).resolve()
        values = dict(
            db_url=database_url(), home=home,
            cookie_secret_file=Path(env_str("ENCLAVE_ACCESS_COOKIE_SECRET_FILE") or home / "access" / "cookie-secret"),
            hub_api_url=env_str("JUPYTERHUB_API_URL"),
            hub_api_token=env_str("JUPYTERHUB_API_TOKEN", cls.hub_api_token),
            service_name=env_str("JUPYTERHUB_SERVICE_NAME", cls.service_name),
            base_url=env_str("JUPYTERHUB_SERVICE_PREFIX", cls.base_url),
            oauth_client_id=env_str("JUPYTERHUB_CLIENT_ID", cls.oauth_client_id),
            oauth_callback_url=env_str("JUPYTERHUB_OAUTH_CALLBACK_URL", cls.oauth_callback_url),
            oauth_authorize_url=env_str("ENCLAVE_ACCESS_OAUTH_AUTHORIZE_URL", cls.oauth_authorize_url),
            session_max_age_s=env_int("ENCLAVE_ACCESS_SESSION_MAX_AGE", cls.session_max_age_s, smallest=60),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def for_home(cls, home: Path, db_url: str, **overrides) -> "AccessSettings":
        """Everything under one directory (tests)."""
        home = Path(home).resolve()
        settings = cls(db_url=db_url, home=home, cookie_secret_file=home / "access" / "cookie-secret", **overrides)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.base_url.startswith("/") or not self.base_url.endswith("/"):
            raise SettingsError(f"the service prefix must start and end with '/', not {self.base_url!r}")
        if self.hub_api_url and not self.hub_api_token:
            raise SettingsError("JUPYTERHUB_API_URL is set but JUPYTERHUB_API_TOKEN is not: the service needs its hub token")
