"""Differential-privacy receipts in an export, and the cells of its tables they cover.

The privacy service answers every DP statistic with a signed receipt (`enclave-dp-receipt/1`: the
query, dataset, epsilon, delta, the noisy value, the project, the time, the ledger entry; an
Ed25519 signature over the canonical JSON of the receipt, keys sorted, no whitespace). A scholar
exports the receipt (a `.json` file) next to the table that shows the value. This check:

- finds receipts among the export's JSON files and verifies each against the privacy service's
  public keys, which the service side hands in (`ScanContext.dp_receipt_keys`, PEM);
- reports a valid receipt of this project as information (what was released, at what cost), and a
  receipt that does not verify, or was issued to another project, as a block: it claims a
  protection the value does not have;
- finds the whole-number cells of the export's tables that a valid receipt covers (the cell's value
  is the receipt's value, or one of a DP histogram's counts) and that the small-cell rule would
  flag, and says so per cell. `relax` then lowers the small-cell findings on exactly those cells to
  the `[dp]` severities of the policy: a DP count is already noisy, so the threshold rule that
  protects exact counts does not apply to it.

A cell is covered by value, not by position: a receipt cannot say where its value was pasted. The
value is a noisy one, so laundering an exact small count through it means asking the privacy
service until the noise happens to give that count, every try paid for from the budget and
recorded on the ledger the reviewer can read.

The library verifies with `cryptography` and reads nothing else; it never sees the ledger.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

from enclave.review.scan.checks import table_cells
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.findings import Finding
from enclave.review.scan.items import Item
from enclave.review.scan.policy import severity

NAME = "dp_receipts"
FORMAT = "enclave-dp-receipt/1"
MAX_CELL_FINDINGS = 200


@dataclasses.dataclass(frozen=True)
class DpLevels:
    """Severities for DP receipts: the policy's `[dp]` section when it has one, else these."""

    valid_receipt_severity: str = "info"
    invalid_receipt_severity: str = "block"
    other_project_severity: str = "block"
    covered_small_count_severity: str = "info"
    covered_zero_severity: str = "info"


def levels(env: Env) -> DpLevels:
    configured = getattr(env.policy, "dp", None)
    if configured is None:
        return DpLevels()
    return DpLevels(**{f.name: getattr(configured, f.name, f.default) for f in dataclasses.fields(DpLevels)})


@dataclasses.dataclass(frozen=True)
class Receipt:
    file: str
    body: dict[str, Any]

    def values(self) -> list[float]:
        """The numbers this receipt released: a value, or a histogram's counts."""
        value = self.body.get("value")
        if isinstance(value, dict):
            value = value.get("counts")
        items = value if isinstance(value, list) else [value]
        return [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def describe(self) -> str:
        query = self.body.get("query") or {}
        return (f"{query.get('statistic', '?')} of {query.get('column') or 'rows'} in dataset "
                f"{self.body.get('dataset')!r}, epsilon {self.body.get('epsilon')}, delta {self.body.get('delta')} "
                f"(spend {str(self.body.get('spend', ''))[:12]}, {self.body.get('time')})")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _public_keys(pems: list[bytes]) -> dict[str, Any]:
    """key id -> Ed25519 public key, for the PEMs that load."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = {}
    for pem in pems:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            continue
        if isinstance(key, Ed25519PublicKey):
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys["ed25519:" + hashlib.sha256(raw).hexdigest()] = key
    return keys


def verify(document: Any, keys: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(receipt, "") if the document is a receipt signed by one of `keys`, else (None, why)."""
    from cryptography.exceptions import InvalidSignature

    receipt, signature = document.get("receipt"), document.get("signature")
    if not isinstance(receipt, dict) or not isinstance(signature, dict) or signature.get("algorithm") != "Ed25519":
        return None, "it is malformed"
    if not keys:
        return None, "no key of the privacy service was given to the review to verify it with"
    key = keys.get(str(signature.get("key_id")))
    candidates = [key] if key is not None else list(keys.values())
    try:
        raw = base64.b64decode(str(signature.get("value", "")), validate=True)
        payload = _canonical(receipt)
    except ValueError:
        return None, "its signature is not base64, or its receipt is not plain JSON"
    for candidate in candidates:
        try:
            candidate.verify(raw, payload)
            return receipt, ""
        except InvalidSignature:
            continue
    return None, "its signature does not verify with the privacy service's key (changed, or not ours)"


def is_receipt(item: Item) -> dict[str, Any] | None:
    if item.kind is not Kind.json or item.text is None or not item.name.endswith(".json"):
        return None
    try:
        document = json.loads(item.text)
    except ValueError:
        return None
    return document if isinstance(document, dict) and document.get("format") == FORMAT else None


def receipts_of(items: list[Item], env: Env, result: Result | None = None) -> list[Receipt]:
    """The valid receipts of this project among `items`, with findings for each receipt in `result`."""
    lv = levels(env)
    keys = _public_keys(list(env.context.dp_receipt_keys))
    project = env.context.project
    valid = []
    for item in items:
        document = is_receipt(item)
        if document is None:
            continue
        body, why = verify(document, keys)
        if body is None:
            if result is not None:
                result.add(NAME, lv.invalid_receipt_severity, item.name, "whole file",
                           f"a DP receipt that cannot be trusted: {why}; the values it claims to cover are "
                           "treated as exact", reason=why)
            continue
        receipt = Receipt(item.name, body)
        if project and body.get("project") != project:
            if result is not None:
                result.add(NAME, lv.other_project_severity, item.name, "whole file",
                           f"a DP receipt of project {body.get('project')!r}, not of this export's project "
                           f"{project!r}: {receipt.describe()}", project=body.get("project"))
            continue
        valid.append(receipt)
        if result is not None:
            result.add(NAME, lv.valid_receipt_severity, item.name, "whole file",
                       f"a valid DP receipt: {receipt.describe()}; value {json.dumps(body.get('value'))[:200]}",
                       spend=body.get("spend"), epsilon=body.get("epsilon"), delta=body.get("delta"))
    return valid


def _covering(receipts: list[Receipt]) -> dict[float, Receipt]:
    out: dict[float, Receipt] = {}
    for receipt in receipts:
        for value in receipt.values():
            if float(value).is_integer():
                out.setdefault(float(value), receipt)
    return out


def check(items: list[Item], env: Env) -> Result:
    """The export check: receipts, and the small or zero table cells they cover."""
    result = Result()
    receipts = receipts_of(items, env, result)
    covering = _covering(receipts)
    if not covering:
        return result
    lv = levels(env)
    policy = env.policy.tables
    reported = 0
    for item in items:
        for table in item.tables:
            for j in table_cells.count_columns(table, policy):
                for r, value in enumerate(table.column(j)):
                    if value is None or not float(value).is_integer() or not value < policy.min_count:
                        continue
                    receipt = covering.get(float(value))
                    if receipt is None:
                        continue
                    reported += 1
                    if reported > MAX_CELL_FINDINGS:
                        continue
                    level = lv.covered_zero_severity if value == 0 else lv.covered_small_count_severity
                    result.add(NAME, level, item.name, table.where(r, j),
                               f"count {value:g} is a DP result ({receipt.file}: {receipt.describe()}); the "
                               f"small-cell rule is relaxed for it ([dp])", table=table.label, row=r + 1,
                               col=table.header[j], value=value, receipt=receipt.file)
    return result


def relax(findings: list[Finding], items: list[Item], env: Env) -> list[Finding]:
    """`findings` with the small-cell findings (`tables` check) on cells covered by a valid receipt
    of this export lowered to the `[dp]` severities (dropped where those are "off")."""
    covering = _covering(receipts_of(items, env))
    if not covering:
        return findings
    lv = levels(env)
    out = []
    for found in findings:
        value = found.evidence.get("value") if found.check == table_cells.NAME else None
        if isinstance(value, (int, float)) and float(value) in covering:
            level = severity(lv.covered_zero_severity if value == 0 else lv.covered_small_count_severity)
            if level is None:
                continue
            note = f" (relaxed: a DP result, {covering[float(value)].file})"
            found = dataclasses.replace(found, severity=min(found.severity, level, key=_rank),
                                        message=found.message + note)
        out.append(found)
    return out


def _rank(level) -> int:
    return ["info", "warn", "block"].index(getattr(level, "value", level))
