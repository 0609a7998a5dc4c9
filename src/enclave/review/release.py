"""The release store and its signed manifests.

A release is a directory `<release store>/<project>/<request id>/` holding

    files/<name>           the approved bytes, copied from the quarantine (hash checked)
    manifest.json          {"manifest": {...}, "signature": {"algorithm": "Ed25519", "key_id", "value"}}
    review-service.pub     the review service's public key (PEM), for convenience

The signature covers the canonical JSON of "manifest" (keys sorted, no whitespace, UTF-8), so any
change to a field, a hash, a reviewer or a time breaks it. The directory is built under a temporary
name and renamed into place, so a release is either complete or absent.

A public key that travels next to the manifest proves integrity only against accidents: someone
who rewrites the manifest can replace the key too. Whoever relies on a release should verify it
against the key published by the service (`GET .../api/release-key`), passed as `--key`; the
verifier always prints the key id it checked against.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import UserError, BadInput
from enclave.review.quarantine import Quarantine, _fsync_dir
from enclave.web import keys as web_keys

FORMAT = "enclave-release/1"
MANIFEST_NAME = "manifest.json"
PUBLIC_KEY_NAME = "review-service.pub"
FILES_DIR = "files"
CHUNK = 1024 * 1024


class ReleaseError(UserError):
    """The manifest cannot be checked at all (missing, unreadable, malformed): exit 2."""


def canonical_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The service's signing key; generated on first start (see `enclave.web.keys`)."""
    return web_keys.load_or_create_key(path, name="signing key", error=ReleaseError)


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return {
        "manifest": manifest,
        "signature": {
            "algorithm": "Ed25519",
            "key_id": key_id(key.public_key()),
            "value": base64.b64encode(key.sign(canonical_bytes(manifest))).decode("ascii"),
        },
    }


@dataclasses.dataclass(frozen=True)
class ReleasedFile:
    name: str
    sha256: str
    size: int


def write_release(root: Path, project: str, request_id: str, files: list[ReleasedFile], quarantine: Quarantine,
                  envelope: dict[str, Any], key: Ed25519PrivateKey) -> Path:
    """Build the release directory under a temporary name, then rename it into place."""
    root = Path(root)
    project_dir = root / project
    project_dir.mkdir(parents=True, exist_ok=True)
    final = project_dir / request_id
    if final.exists():
        raise BadInput(f"the release store already holds {final}")
    staging = project_dir / f".staging-{request_id}-{secrets.token_hex(4)}"
    (staging / FILES_DIR).mkdir(parents=True)
    try:
        for f in files:
            quarantine.copy_to(f.sha256, staging / FILES_DIR / f.name)
            os.chmod(staging / FILES_DIR / f.name, 0o444)
        manifest_bytes = json.dumps(envelope, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
        _write(staging / MANIFEST_NAME, manifest_bytes)
        _write(staging / PUBLIC_KEY_NAME, public_pem(key.public_key()))
        _fsync_dir(staging / FILES_DIR)
        _fsync_dir(staging)
        os.rename(staging, final)
        _fsync_dir(project_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def remove_release(path: Path) -> None:
    """Undo a release directory whose database record could not be written."""
    shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ----- verification ------------------------------------------------------------------------------

@dataclasses.dataclass
class Verification:
    ok: bool
    key_id: str
    key_source: str
    files: int
    problems: list[str]
    manifest: dict[str, Any]

    def summary(self) -> str:
        if self.ok:
            m = self.manifest
            return (f"release verified: {self.files} file(s) of export {m.get('request')} (project {m.get('project')}), "
                    f"signature by {self.key_id} ({self.key_source})")
        return "release NOT verified: " + "; ".join(self.problems)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise ReleaseError(f"no public key at {path}") from None
    except (ValueError, TypeError, OSError) as exc:
        raise ReleaseError(f"cannot read the public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{path} is not an Ed25519 public key")
    return key


def verify(manifest_path: Path, public_key_path: Path | None = None) -> Verification:
    """Check the signature and every file's hash. Raises ReleaseError when the manifest cannot be
    checked at all; otherwise returns ok or the list of what is wrong."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST_NAME
    try:
        envelope = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise ReleaseError(f"no manifest at {manifest_path}") from None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"cannot read {manifest_path} as JSON: {exc}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("manifest"), dict) \
            or not isinstance(envelope.get("signature"), dict):
        raise ReleaseError(f"{manifest_path} is not a signed release manifest (needs 'manifest' and 'signature')")
    manifest, signature = envelope["manifest"], envelope["signature"]
    if manifest.get("format") != FORMAT:
        raise ReleaseError(f"unknown manifest format {manifest.get('format')!r} (expected {FORMAT})")
    if signature.get("algorithm") != "Ed25519":
        raise ReleaseError(f"unsupported signature algorithm {signature.get('algorithm')!r}")
    key_source = "given key" if public_key_path else f"key next to the manifest, {PUBLIC_KEY_NAME}"
    public_key = load_public_key(public_key_path or manifest_path.parent / PUBLIC_KEY_NAME)
    kid = key_id(public_key)
    problems: list[str] = []
    if signature.get("key_id") != kid:
        problems.append(f"signed by key {signature.get('key_id')!r}, not by {kid}")
    try:
        raw_signature = base64.b64decode(str(signature.get("value", "")), validate=True)
        public_key.verify(raw_signature, canonical_bytes(manifest))
    except (InvalidSignature, ValueError):
        problems.append("the signature does not match the manifest (it was changed after signing, or signed by another key)")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ReleaseError("the manifest lists no files")
    files_dir = manifest_path.parent / FILES_DIR
    listed = set()
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("sha256"), str):
            problems.append(f"malformed file entry {entry!r}")
            continue
        name = entry["name"]
        listed.add(name)
        if "/" in name or "\\" in name or name in (".", ".."):
            problems.append(f"file entry {name!r} is not a bare file name")
            continue
        path = files_dir / name
        if not path.is_file() or path.is_symlink():
            problems.append(f"{name}: missing")
            continue
        actual = _sha256(path)
        if actual != entry["sha256"]:
            problems.append(f"{name}: SHA-256 is {actual}, the manifest says {entry['sha256']} (file changed)")
    if files_dir.is_dir():
        for extra in sorted(p.name for p in files_dir.iterdir() if p.name not in listed):
            problems.append(f"{extra}: in the release but not in the manifest")
    return Verification(ok=not problems, key_id=kid, key_source=key_source, files=len(files), problems=problems,
                        manifest=manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
