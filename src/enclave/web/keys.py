"""A service's own Ed25519 signing key, kept in one PEM file under its home.

The review service signs release manifests with one, the privacy service signs DP receipts with
another; both keep it the same way, so the way lives here once.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.errors import SettingsError, UserError


def load_or_create_key(path: Path, *, name: str = "signing key",
                       error: type[UserError] = SettingsError) -> Ed25519PrivateKey:
    """The key at `path`, generated on first start (mode 0600, created exclusively so two processes
    starting together cannot each write their own). A key file readable by others, or one that is
    not an Ed25519 private key, is refused with `error`; `name` says which key in its message."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race: use its key
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise error(f"the {name} {path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise error(f"the {name} {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise error(f"the {name} {path} is not an Ed25519 key")
    return key
