"""The review service's configuration, from the environment (JupyterHub passes the JUPYTERHUB_*
variables to the services it manages; the ENCLAVE_* ones are ours)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from enclave.envsettings import env_int
from enclave.errors import SettingsError
from enclave.envsettings import database_url, enclave_home

MIB = 1024**2


def _paths(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    return tuple(p for p in raw.split(os.pathsep) if p)


@dataclasses.dataclass(frozen=True)
class ReviewSettings:
    db_url: str
    # Where the service keeps its state: quarantine, release store, signing key, cookie secret.
    home: Path
    quarantine_dir: Path
    release_dir: Path
    signing_key_file: Path
    cookie_secret_file: Path
    # JupyterHub: identity for tokens and browser logins (OAuth). None: no hub (CLI, some tests).
    hub_api_url: str | None = None
    hub_api_token: str = ""
    service_name: str = "review"
    # The path the hub's proxy serves us under; every route lives below it.
    base_url: str = "/services/review/"
    oauth_client_id: str = "service-review"
    oauth_callback_url: str = ""
    # Where browsers go to authorise (the hub's public prefix; default: same origin as us).
    oauth_authorize_url: str = ""
    # Caps on what one submission may carry (checked while the upload streams in).
    max_file_bytes: int = 16 * MIB
    max_request_bytes: int = 64 * MIB
    max_files: int = 50
    # The risk-appetite file for the checks (None: the scan pipeline's default, output_review/policy.toml).
    policy_file: str | None = None
    # Models whose weights the checks fingerprint, and extra protected text for the n-gram index.
    model_dirs: tuple[str, ...] = ()
    protect_files: tuple[str, ...] = ()
    # Perplexity scoring for the memorisation checks: through the gateway (URL + an API key of the
    # review service's own), or a local model directory (needs torch). Neither: those signals are off.
    scorer_gateway_url: str | None = None
    scorer_gateway_token: str | None = None
    scorer_model_dir: str | None = None
    # Ask for two approvals on every request, not only those with block/warn findings.
    always_two_reviewers: bool = False
    # Browser sessions end this long after login, whatever the hub token's own lifetime.
    session_max_age_s: int = 8 * 3600

    @property
    def prefix(self) -> str:
        """The base URL without its trailing slash, for mounting routes ('' at the root)."""
        return self.base_url.rstrip("/")

    @classmethod
    def from_env(cls, **overrides) -> "ReviewSettings":
        home = Path(overrides.pop("home", None) or enclave_home()).resolve()
        review_home = home / "review"
        base_url = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/review/"
        values = dict(
            db_url=database_url(),
            home=home,
            quarantine_dir=Path(os.environ.get("ENCLAVE_QUARANTINE_DIR") or review_home / "quarantine"),
            release_dir=Path(os.environ.get("ENCLAVE_RELEASE_DIR") or home / "releases"),
            signing_key_file=Path(os.environ.get("ENCLAVE_REVIEW_KEY_FILE") or review_home / "signing-key.pem"),
            cookie_secret_file=Path(os.environ.get("ENCLAVE_REVIEW_COOKIE_SECRET_FILE") or review_home / "cookie-secret"),
            hub_api_url=os.environ.get("JUPYTERHUB_API_URL") or None,
            hub_api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME") or "review",
            base_url=base_url,
            oauth_client_id=os.environ.get("JUPYTERHUB_CLIENT_ID") or "service-review",
            oauth_callback_url=os.environ.get("JUPYTERHUB_OAUTH_CALLBACK_URL") or "",
            oauth_authorize_url=os.environ.get("ENCLAVE_REVIEW_OAUTH_AUTHORIZE_URL") or "",
            max_file_bytes=env_int("ENCLAVE_REVIEW_MAX_FILE_BYTES", 16 * MIB),
            max_request_bytes=env_int("ENCLAVE_REVIEW_MAX_REQUEST_BYTES", 64 * MIB),
            max_files=env_int("ENCLAVE_REVIEW_MAX_FILES", 50),
            policy_file=os.environ.get("ENCLAVE_REVIEW_POLICY") or None,
            model_dirs=_paths("ENCLAVE_REVIEW_MODEL_DIRS") or _paths("ENCLAVE_MODEL_DIR"),
            protect_files=_paths("ENCLAVE_REVIEW_PROTECT"),
            scorer_gateway_url=os.environ.get("ENCLAVE_REVIEW_GATEWAY_URL") or None,
            scorer_gateway_token=os.environ.get("ENCLAVE_REVIEW_GATEWAY_TOKEN") or None,
            scorer_model_dir=os.environ.get("ENCLAVE_REVIEW_SCORER_MODEL") or None,
            always_two_reviewers=os.environ.get("ENCLAVE_REVIEW_ALWAYS_TWO", "").lower() in ("1", "true", "yes"),
            session_max_age_s=env_int("ENCLAVE_REVIEW_SESSION_MAX_AGE", 8 * 3600, smallest=60),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def for_home(cls, home: Path, db_url: str, **overrides) -> "ReviewSettings":
        """Everything under one directory (tests, the CLI with an explicit home)."""
        home = Path(home).resolve()
        values = dict(
            db_url=db_url, home=home, quarantine_dir=home / "review" / "quarantine", release_dir=home / "releases",
            signing_key_file=home / "review" / "signing-key.pem", cookie_secret_file=home / "review" / "cookie-secret",
        )
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.base_url.startswith("/") or not self.base_url.endswith("/"):
            raise SettingsError(f"the service prefix must start and end with '/', not {self.base_url!r}")
        if self.max_file_bytes > self.max_request_bytes:
            raise SettingsError("the per-file cap cannot exceed the per-request cap")
        if self.hub_api_url and not self.hub_api_token:
            raise SettingsError("JUPYTERHUB_API_URL is set but JUPYTERHUB_API_TOKEN is not: the service needs its hub token")
