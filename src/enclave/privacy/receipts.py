"""Signed receipts for DP results, and the service's Ed25519 key.

A receipt says what was released under differential privacy: the query (statistic, dataset,
column, bounds, filter), its cost (epsilon, delta), the noisy value, the project, the time and the
ledger entry (`spend`) that paid for it. Its JSON is

    {"format": "enclave-dp-receipt/1",
     "receipt": {...},
     "signature": {"algorithm": "Ed25519", "key_id": "ed25519:<sha256 of the raw public key>",
                   "value": "<base64 of the signature over the canonical JSON of receipt>"}}

where canonical JSON is keys sorted, no whitespace, UTF-8 (the release manifests' convention).
The output review (`enclave.review.scan.checks.dp_receipts`) verifies receipts found in an export
against the key this service publishes at `GET .../api/receipt-key`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import BadInput, SettingsError
from enclave.web import keys as web_keys

FORMAT = "enclave-dp-receipt/1"


def canonical_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The service's receipt key, generated on first start (see `enclave.web.keys`), with its public
    half published beside it for the output review."""
    key = web_keys.load_or_create_key(path, name="receipt key", error=SettingsError)
    _publish(key.public_key(), public_key_file(path))
    return key


def public_key_file(private_key_file: Path) -> Path:
    """Where the public half is written for the output review to read (`receipt-key.pub`)."""
    return Path(private_key_file).with_suffix(".pub")


def _publish(public: Ed25519PublicKey, target: Path) -> None:
    pem = public_pem(public)
    try:
        if target.read_bytes() == pem:
            return
    except OSError:
        pass
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def sign(key: Ed25519PrivateKey, receipt: dict[str, Any]) -> dict[str, Any]:
    """The receipt with its format and signature, ready to be saved as JSON."""
    return {"format": FORMAT, "receipt": receipt,
            "signature": {"algorithm": "Ed25519", "key_id": key_id(key.public_key()),
                          "value": base64.b64encode(key.sign(canonical_bytes(receipt))).decode("ascii")}}


def verify(document: Any, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The receipt inside `document` if its signature is this key's; BadInput otherwise."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadInput(f"not a DP receipt (format {FORMAT!r})")
    receipt, signature = document.get("receipt"), document.get("signature")
    if not isinstance(receipt, dict) or not isinstance(signature, dict) or signature.get("algorithm") != "Ed25519":
        raise BadInput("malformed DP receipt")
    try:
        public_key.verify(base64.b64decode(str(signature.get("value", "")), validate=True), canonical_bytes(receipt))
    except (InvalidSignature, ValueError):
        raise BadInput("the DP receipt's signature does not verify with this key") from None
    return receipt
