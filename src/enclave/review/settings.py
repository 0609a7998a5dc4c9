"""The review service's configuration, read from the environment once, at start-up
(`ReviewSettings.from_env`; JupyterHub passes the JUPYTERHUB_* variables to the services it
manages, the ENCLAVE_* ones are ours). Everything below the service is handed these values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from enclave.envsettings import database_url, enclave_home, env_flag, env_int, env_paths, env_str
from enclave.errors import SettingsError

MIB = 1024**2
# The hard ceiling on one comment (enclave.review.service.MAX_COMMENT_CHARS; the API's body model
# refuses anything longer before the service sees it).
COMMENT_CEILING = 10_000


def _layout(home: Path) -> dict[str, Path]:
    """Where the service keeps its state under the enclave home, unless told otherwise."""
    return dict(quarantine_dir=home / "review" / "quarantine", release_dir=home / "releases",
                signing_key_file=home / "review" / "signing-key.pem",
                cookie_secret_file=home / "review" / "cookie-secret")


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
    # Caps on comments (per person and request; characters each). The author reads comments back
    # from outside the enclave, so they are a channel out around review and must stay small.
    max_comments: int = 20
    max_comment_chars: int = 2000
    # The risk-appetite file for the checks (None: the scan pipeline's default, output_review/policy.toml).
    policy_file: str | None = None
    # Models whose weights the checks fingerprint, and extra protected text for the n-gram index.
    model_dirs: tuple[str, ...] = ()
    # The privacy service's public keys (PEM) that DP receipts in exports must verify with.
    dp_receipt_key_files: tuple[str, ...] = ()
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
    # Exports waiting for (or in) their automated checks: past this many, a submission is refused
    # with 503 and Retry-After before a byte of it is read; one person may hold at most
    # `max_pending_checks_per_person` of them (429), so one scholar cannot fill the queue alone.
    max_pending_checks: int = 64
    max_pending_checks_per_person: int = 8
    # Quarantined blobs no export references are collected once nobody has stored them for this
    # long (an upload in flight has stored its blobs and not yet recorded its export).
    orphan_grace_s: int = 3600

    @property
    def prefix(self) -> str:
        """The base URL without its trailing slash, for mounting routes ('' at the root)."""
        return self.base_url.rstrip("/")

    @classmethod
    def from_env(cls, **overrides) -> "ReviewSettings":
        """The service's one reading of the environment, at start-up; `overrides` (not None) win."""
        home = Path(overrides.pop("home", None) or enclave_home()).resolve()
        layout = _layout(home)
        values = dict(
            db_url=database_url(),
            home=home,
            quarantine_dir=Path(env_str("ENCLAVE_QUARANTINE_DIR") or layout["quarantine_dir"]),
            release_dir=Path(env_str("ENCLAVE_RELEASE_DIR") or layout["release_dir"]),
            signing_key_file=Path(env_str("ENCLAVE_REVIEW_KEY_FILE") or layout["signing_key_file"]),
            cookie_secret_file=Path(env_str("ENCLAVE_REVIEW_COOKIE_SECRET_FILE") or layout["cookie_secret_file"]),
            hub_api_url=env_str("JUPYTERHUB_API_URL"),
            hub_api_token=env_str("JUPYTERHUB_API_TOKEN", cls.hub_api_token),
            service_name=env_str("JUPYTERHUB_SERVICE_NAME", cls.service_name),
            base_url=env_str("JUPYTERHUB_SERVICE_PREFIX", cls.base_url),
            oauth_client_id=env_str("JUPYTERHUB_CLIENT_ID", cls.oauth_client_id),
            oauth_callback_url=env_str("JUPYTERHUB_OAUTH_CALLBACK_URL", cls.oauth_callback_url),
            oauth_authorize_url=env_str("ENCLAVE_REVIEW_OAUTH_AUTHORIZE_URL", cls.oauth_authorize_url),
            max_file_bytes=env_int("ENCLAVE_REVIEW_MAX_FILE_BYTES", cls.max_file_bytes),
            max_request_bytes=env_int("ENCLAVE_REVIEW_MAX_REQUEST_BYTES", cls.max_request_bytes),
            max_files=env_int("ENCLAVE_REVIEW_MAX_FILES", cls.max_files),
            max_comments=env_int("ENCLAVE_REVIEW_MAX_COMMENTS", cls.max_comments),
            max_comment_chars=env_int("ENCLAVE_REVIEW_MAX_COMMENT_CHARS", cls.max_comment_chars),
            # The scan library's `load_policy` is given this path; it reads no environment itself.
            policy_file=env_str("ENCLAVE_REVIEW_POLICY"),
            model_dirs=env_paths("ENCLAVE_REVIEW_MODEL_DIRS") or env_paths("ENCLAVE_MODEL_DIR"),
            protect_files=env_paths("ENCLAVE_REVIEW_PROTECT"),
            # Default: the key the privacy service publishes under the same enclave home.
            dp_receipt_key_files=env_paths("ENCLAVE_REVIEW_DP_RECEIPT_KEYS")
            or (str(home / "privacy" / "receipt-key.pub"),),
            scorer_gateway_url=env_str("ENCLAVE_REVIEW_GATEWAY_URL"),
            scorer_gateway_token=env_str("ENCLAVE_REVIEW_GATEWAY_TOKEN"),
            scorer_model_dir=env_str("ENCLAVE_REVIEW_SCORER_MODEL"),
            always_two_reviewers=env_flag("ENCLAVE_REVIEW_ALWAYS_TWO"),
            session_max_age_s=env_int("ENCLAVE_REVIEW_SESSION_MAX_AGE", cls.session_max_age_s, smallest=60),
            max_pending_checks=env_int("ENCLAVE_REVIEW_MAX_PENDING_CHECKS", cls.max_pending_checks, smallest=1),
            max_pending_checks_per_person=env_int("ENCLAVE_REVIEW_MAX_PENDING_PER_PERSON",
                                                  cls.max_pending_checks_per_person, smallest=1),
            orphan_grace_s=env_int("ENCLAVE_REVIEW_ORPHAN_GRACE", cls.orphan_grace_s, smallest=60),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def for_home(cls, home: Path, db_url: str, **overrides) -> "ReviewSettings":
        """Everything under one directory (tests, the CLI with an explicit home)."""
        home = Path(home).resolve()
        values = dict(db_url=db_url, home=home, **_layout(home))
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.base_url.startswith("/") or not self.base_url.endswith("/"):
            raise SettingsError(f"the service prefix must start and end with '/', not {self.base_url!r}")
        if self.max_file_bytes > self.max_request_bytes:
            raise SettingsError("the per-file cap cannot exceed the per-request cap")
        if self.max_comment_chars > COMMENT_CEILING:
            raise SettingsError(f"ENCLAVE_REVIEW_MAX_COMMENT_CHARS may be at most {COMMENT_CEILING}, "
                                f"not {self.max_comment_chars}")
        if self.max_pending_checks < 1 or self.max_pending_checks_per_person < 1:
            raise SettingsError("the caps on pending checks must be at least 1")
        if self.orphan_grace_s < 0:
            raise SettingsError("the quarantine's grace period cannot be negative")
        if self.hub_api_url and not self.hub_api_token:
            raise SettingsError("JUPYTERHUB_API_URL is set but JUPYTERHUB_API_TOKEN is not: the service needs its hub token")
