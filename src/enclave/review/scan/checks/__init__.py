"""The automated disclosure checks, registered in one list, run in this order on every item.

Each is a small pure function (see `base.Check`): item checks see one file, archive member or
decoded blob at a time; export checks see the whole export. Order matters only for readability of
reports: file-level verdicts first, then content.
"""
from __future__ import annotations

from enclave.review.scan.checks import (
    acro_evidence,
    activations,
    archive,
    containers,
    differencing,
    dp_receipts,
    egress,
    encoded_blobs,
    file_policy,
    identifiers,
    memorisation,
    model_signals,
    provenance,
    record_linkage,
    table_cells,
    weight_files,
    weight_vectors,
)
from enclave.review.scan.checks.base import Check, Result

CHECKS: list[Check] = [
    Check(file_policy.NAME, "item", file_policy.check, "allowed types and sizes; images and PDFs for human eyes"),
    Check(archive.NAME, "item", archive.check, "archives opened safely, members scanned recursively"),
    Check(containers.NAME, "item", containers.check, "PNG chunks, PDF objects and notebook attachments opened fully"),
    Check(weight_files.NAME, "item", weight_files.check, "model weights and tensor files, by magic bytes"),
    Check(weight_vectors.NAME, "item", weight_vectors.check, "exported numbers matching rows or columns of model weights"),
    Check(activations.NAME, "item", activations.check, "activation dumps: arrays shaped like or named as the models' hook points"),
    Check(encoded_blobs.NAME, "item", encoded_blobs.check, "base64/hex blobs decoded and rescanned; high-entropy runs"),
    Check(memorisation.NAME, "item", memorisation.check, "verbatim overlap with protected text"),
    Check(model_signals.NAME, "item", model_signals.check, "perplexity, zlib, lowercase and window signals under the model"),
    Check(provenance.NAME, "item", provenance.check, "spans that came from the project's audited model calls"),
    Check(identifiers.NAME, "item", identifiers.check, "e-mail, phone, SSN, card, IBAN, IP, URL ... (Presidio)"),
    Check(record_linkage.NAME, "item", record_linkage.check, "quasi-identifiers of one protected record together"),
    Check(acro_evidence.NAME, "item", acro_evidence.check, "ACRO results.json shown per cell"),
    Check(table_cells.NAME, "item", table_cells.check, "small counts, zeros and dominance in tables"),
    Check(differencing.NAME, "item", differencing.check, "differences from released tables that reveal small counts"),
    Check(egress.NAME, "export", egress.check, "cumulative exported bytes against the project's grant"),
    Check(dp_receipts.NAME, "export", dp_receipts.check, "DP receipts verified; table cells they cover"),
]

__all__ = ["CHECKS", "Check", "Result"]
