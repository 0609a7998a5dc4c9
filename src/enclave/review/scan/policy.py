"""The risk-appetite file, `output_review/policy.toml`, loaded and validated.

Every threshold a check uses comes from here, and every key is required: a policy that forgets a
key, misspells one or gives a string where a number belongs is refused with one line saying where,
because a silent default would change what leaves the enclave without anyone deciding it.

`load_policy(path)` reads the file it is given; the policy's `version` and the file's SHA-256 go
into release manifests. Which file is the caller's choice (the review service's settings and
`enclave review scan --policy` read `$ENCLAVE_REVIEW_POLICY`); `DEFAULT_POLICY` is the one shipped
with the source tree, `output_review/policy.toml`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.review.scan.findings import Severity

SEVERITIES = ("block", "warn", "info", "off")
# The container formats (as `detect` names them) that files.human_review_types may list.
CONTAINER_TYPES = ("zip", "xlsx", "tar", "gzip", "bzip2", "xz", "png", "jpeg", "gif", "pdf", "ipynb")


class PolicyError(ValueError):
    """The policy file is missing, unreadable or invalid; the message names the key."""


@dataclass(frozen=True)
class FilesPolicy:
    max_file_bytes: int
    max_table_rows: int
    max_table_rows_severity: str
    allowed_extensions: list[str]
    human_review_extensions: list[str]
    human_review_severity: str
    # Container formats whose bytes no check reads may go to a reviewer (as a dump) instead of
    # blocking: "unexamined bytes in ..." then becomes a human_review_severity finding.
    human_review_types: list[str]
    unexamined_severity: str
    mismatch_severity: str
    disallowed_type_severity: str
    empty_file_severity: str
    invalid_utf8_severity: str
    unknown_binary_severity: str
    oversize_severity: str


@dataclass(frozen=True)
class ArchivesPolicy:
    max_depth: int
    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_compression_ratio: float
    min_bomb_bytes: int
    unsafe_member_severity: str
    corrupt_archive_severity: str


@dataclass(frozen=True)
class WeightsPolicy:
    tensor_file_severity: str
    weight_vector_severity: str
    min_cosine: float
    min_vector_length: int
    window: int
    index_stride: int
    max_candidates_per_vector: int
    max_numbers_per_file: int


@dataclass(frozen=True)
class ActivationsPolicy:
    # Arrays shaped like a served model's hook points, or stored under TransformerLens hook names
    # (`checks.activations`): more than `max_numbers` of them in an export is a dump, at
    # `dump_severity`; fewer (summary statistics of activations) are shown at `summary_severity`.
    dump_severity: str
    summary_severity: str
    max_numbers: int


@dataclass(frozen=True)
class BlobsPolicy:
    min_base64_chars: int
    min_hex_chars: int
    max_decode_depth: int
    max_blobs_per_file: int
    entropy_min_chars: int
    max_entropy_bits: float
    high_entropy_severity: str
    min_opaque_bytes: int
    opaque_blob_severity: str


@dataclass(frozen=True)
class ModelSignalsPolicy:
    severity: str
    max_perplexity: float
    window_tokens: int
    max_window_perplexity: float
    max_zlib_ratio: float
    max_lowercase_ratio: float
    min_passage_chars: int
    max_passage_chars: int
    max_passages: int


@dataclass(frozen=True)
class MemorisationPolicy:
    ngram_chars: int
    index_stride: int
    min_overlap_chars: int
    overlap_severity: str
    model: ModelSignalsPolicy


@dataclass(frozen=True)
class ProvenancePolicy:
    ngram_chars: int
    min_span_chars: int


@dataclass(frozen=True)
class IdentifiersPolicy:
    min_score: float
    phone_regions: list[str]
    max_findings_per_file: int
    entities: dict[str, str]  # Presidio entity -> severity


@dataclass(frozen=True)
class LinkagePolicy:
    min_values: int
    combinations: list[list[str]]
    window_chars: int
    k_anonymity: int
    direct_identifier_columns: list[str]  # column names (fnmatch patterns, any case) of direct identifiers
    max_postings: int
    severity: str


@dataclass(frozen=True)
class TablesPolicy:
    min_count: int
    small_count_severity: str
    zero_severity: str
    count_columns: str
    not_count_columns: str
    unlabelled_integers_are_counts: bool
    nk_n: int
    nk_k: float
    p_ratio: float
    dominance_severity: str
    total_columns: list[str]
    largest_columns: list[str]
    second_columns: list[str]
    differencing_severity: str


@dataclass(frozen=True)
class AcroPolicy:
    fail_severity: str
    review_severity: str
    pass_severity: str


@dataclass(frozen=True)
class EgressPolicy:
    exceeded_severity: str
    warn_fraction: float
    near_limit_severity: str


@dataclass(frozen=True)
class DpPolicy:
    # DP receipts in an export (`checks.dp_receipts`): a valid one of this project, one that does
    # not verify, one of another project; and the small-cell rule's severities for table cells a
    # valid receipt covers (a DP count is already noisy).
    valid_receipt_severity: str
    invalid_receipt_severity: str
    other_project_severity: str
    covered_small_count_severity: str
    covered_zero_severity: str


@dataclass(frozen=True)
class WorkflowPolicy:
    # Two independent approvals for every request, not only those with block or warn findings.
    always_two_reviewers: bool


@dataclass(frozen=True)
class ReleasePolicy:
    # Staged release of models (`enclave model promote`, read by the CLI through the registry's
    # catalog): the least time a model spends at a stage before it may be promoted. Not a check of
    # the airlock's, but the same risk appetite, so it is kept in the same versioned file.
    min_days_at_stage: float


@dataclass(frozen=True)
class Policy:
    version: str
    files: FilesPolicy
    archives: ArchivesPolicy
    weights: WeightsPolicy
    activations: ActivationsPolicy
    blobs: BlobsPolicy
    memorisation: MemorisationPolicy
    provenance: ProvenancePolicy
    identifiers: IdentifiersPolicy
    linkage: LinkagePolicy
    tables: TablesPolicy
    acro: AcroPolicy
    egress: EgressPolicy
    workflow: WorkflowPolicy
    dp: DpPolicy
    release: ReleasePolicy
    # Where it came from, for manifests; not keys of the file.
    sha256: str = dataclasses.field(default="", compare=False)
    path: str = dataclasses.field(default="", compare=False)


def _shipped_policy() -> Path:
    # src/enclave/review/scan/policy.py -> the repository root; an installed package has no
    # output_review/ beside it (the review image copies the file to /etc/enclave/ and names it in
    # $ENCLAVE_REVIEW_POLICY), so then the working directory's output_review/ is meant.
    repo = Path(__file__).resolve().parents[4] / "output_review" / "policy.toml"
    return repo if repo.is_file() else Path("output_review") / "policy.toml"


# The policy to use when none is named: the source tree's `output_review/policy.toml`.
DEFAULT_POLICY: Path = _shipped_policy()


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at `path` (callers with no choice pass `DEFAULT_POLICY`)."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {str(source)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"policy file {str(source)!r} is not valid TOML: {exc}") from None
    policy = parse_policy(data, where=source.name)
    return dataclasses.replace(policy, sha256=hashlib.sha256(raw).hexdigest(), path=str(source))


def parse_policy(data: dict[str, Any], where: str = "policy") -> Policy:
    """Build a Policy from parsed TOML, checking every key, type and range."""
    policy = _build(Policy, data, where, skip={"sha256", "path"})
    _check_ranges(policy, where)
    return policy


def severity(value: str) -> Severity | None:
    """A policy severity as a finding severity; None for "off"."""
    return None if value == "off" else Severity(value)


def _build(cls: type, data: Any, where: str, skip: set[str] = frozenset()) -> Any:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r}")
    values = {}
    for name in names:
        if name not in data:
            raise PolicyError(f"{where}: missing key {name!r}")
        values[name] = _convert(hints[name], data[name], f"{where}: {name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where.replace(": ", "."))
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise PolicyError(f"{where} must be a list")
        return [_convert(item, v, where) for v in value]
    if origin is dict:
        key_type, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise PolicyError(f"{where} must be a table")
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise PolicyError(f"{where} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{where} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PolicyError(f"{where} must be a string")
        return value
    raise PolicyError(f"{where}: unsupported type {hint!r}")  # a bug in this module, not the file


def _check_ranges(p: Policy, where: str) -> None:
    def fail(key: str, why: str) -> None:
        raise PolicyError(f"{where}: {key} {why}")

    if not p.version.strip():
        fail("version", "must not be empty")
    # Every *_severity field, wherever it is, must name a severity.
    for section in (p.files, p.archives, p.weights, p.activations, p.blobs, p.memorisation, p.memorisation.model, p.linkage,
                    p.tables, p.acro, p.egress):
        for f in dataclasses.fields(section):
            if f.name == "severity" or f.name.endswith("_severity"):
                if getattr(section, f.name) not in SEVERITIES:
                    fail(f.name, f"must be one of {', '.join(SEVERITIES)}")
    if p.release.min_days_at_stage < 0:
        fail("release.min_days_at_stage", "must be a number of days >= 0")
    for entity, value in p.identifiers.entities.items():
        if value not in SEVERITIES:
            fail(f"identifiers.entities.{entity}", f"must be one of {', '.join(SEVERITIES)}")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", entity):
            fail(f"identifiers.entities.{entity}", "must be a Presidio entity name such as US_SSN")
    positive = {
        "files.max_file_bytes": p.files.max_file_bytes, "files.max_table_rows": p.files.max_table_rows,
        "archives.max_depth": p.archives.max_depth, "archives.max_members": p.archives.max_members,
        "archives.max_member_bytes": p.archives.max_member_bytes, "archives.max_total_bytes": p.archives.max_total_bytes,
        "archives.max_compression_ratio": p.archives.max_compression_ratio,
        "archives.min_bomb_bytes": p.archives.min_bomb_bytes,
        "weights.min_vector_length": p.weights.min_vector_length, "weights.index_stride": p.weights.index_stride,
        "weights.max_candidates_per_vector": p.weights.max_candidates_per_vector,
        "weights.max_numbers_per_file": p.weights.max_numbers_per_file,
        "activations.max_numbers": p.activations.max_numbers,
        "blobs.min_base64_chars": p.blobs.min_base64_chars, "blobs.min_hex_chars": p.blobs.min_hex_chars,
        "blobs.entropy_min_chars": p.blobs.entropy_min_chars, "blobs.max_blobs_per_file": p.blobs.max_blobs_per_file,
        "memorisation.ngram_chars": p.memorisation.ngram_chars, "memorisation.index_stride": p.memorisation.index_stride,
        "memorisation.model.window_tokens": p.memorisation.model.window_tokens,
        "memorisation.model.max_passage_chars": p.memorisation.model.max_passage_chars,
        "provenance.ngram_chars": p.provenance.ngram_chars, "linkage.min_values": p.linkage.min_values,
        "linkage.window_chars": p.linkage.window_chars,
        "linkage.k_anonymity": p.linkage.k_anonymity, "linkage.max_postings": p.linkage.max_postings,
        "tables.min_count": p.tables.min_count, "tables.nk_n": p.tables.nk_n,
        "identifiers.max_findings_per_file": p.identifiers.max_findings_per_file,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, "must be positive")
    if not 3 <= p.weights.window <= 16:
        fail("weights.window", "must be between 3 and 16")
    if p.weights.min_vector_length < p.weights.window + p.weights.index_stride - 1:
        fail("weights.min_vector_length", "must be at least window + index_stride - 1, or matches can be missed")
    if p.memorisation.min_overlap_chars < p.memorisation.ngram_chars + p.memorisation.index_stride - 1:
        fail("memorisation.min_overlap_chars", "must be at least ngram_chars + index_stride - 1, or overlaps can be missed")
    if p.provenance.min_span_chars < p.provenance.ngram_chars:
        fail("provenance.min_span_chars", "must be at least provenance.ngram_chars")
    for key, value in {"weights.min_cosine": p.weights.min_cosine, "tables.nk_k": p.tables.nk_k,
                       "tables.p_ratio": p.tables.p_ratio, "egress.warn_fraction": p.egress.warn_fraction,
                       "identifiers.min_score": p.identifiers.min_score}.items():
        if not 0 < value <= 1:
            fail(key, "must be in (0, 1]")
    if not 0 < p.blobs.max_entropy_bits <= 8:
        fail("blobs.max_entropy_bits", "must be in (0, 8]")
    for key in ("count_columns", "not_count_columns"):
        try:
            re.compile(getattr(p.tables, key))
        except re.error as exc:
            fail(f"tables.{key}", f"is not a valid regular expression ({exc})")
    for combo in p.linkage.combinations:
        if not combo:
            fail("linkage.combinations", "must not contain an empty combination")
    for pattern in p.linkage.direct_identifier_columns:
        if not pattern.strip():
            fail("linkage.direct_identifier_columns", "must not contain an empty column name")
    for kind in p.files.human_review_types:
        if kind not in CONTAINER_TYPES:
            fail("files.human_review_types", f"entry {kind!r} must be one of {', '.join(CONTAINER_TYPES)}")
    for ext in p.files.allowed_extensions + p.files.human_review_extensions:
        if ext != ext.lower() or ext.startswith("."):
            fail("files.allowed_extensions", f"entry {ext!r} must be lower case without a dot")
