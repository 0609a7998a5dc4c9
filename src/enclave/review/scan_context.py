"""The one place that gathers what the checks need to know about a project: its `ScanContext`.

The scan library (`enclave.review.scan`) is given a context and looks nothing up. This module,
on the airlock service's side, reads it from the registry and the quarantine: the datasets
registered for the project (with their quasi-identifiers, for record linkage), its audited model
calls (prompt and outputs, for provenance), its grant's export allowance, the privacy service's
public keys that DP receipts must verify with (files the service's settings name), every model of
the registry's catalog (whose weights the weight checks fingerprint) and, when the
quarantine is given, the files it has released before (for differencing) and how many bytes those
were. The review worker and `enclave review scan` both build their contexts here.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sqlmodel import Session, select

from enclave.registry import catalog
from enclave.registry import datasets as registry_datasets
from enclave.registry.models import Grant, ModelCall, Project
from enclave.registry.projects import get_project
from enclave.review import service
from enclave.review.quarantine import Quarantine
from enclave.review.scan import ExportFile, ModelCallText, ProtectedSource, ScanCache, ScanContext, Scorer


def build_scan_context(session: Session | None, project: str | Project | None, *,
                       quarantine: Quarantine | None = None, protect_files: Iterable[str | Path] = (),
                       model_dirs: Iterable[str | Path] = (), scorer: Scorer | None = None,
                       cache: ScanCache | None = None, dp_receipt_key_files: Iterable[str | Path] = ()) -> ScanContext:
    """The context for scanning an export of `project` (a slug or a Project).

    `protect_files` and `model_dirs` are protected data and models beyond the registry's (the
    service's settings, `--protect`/`--model`); with a session, every catalog model's directory is
    added to `model_dirs` (projects' own fine-tunes too: their weights must not leave either);
    `scorer` scores passages under the model; `cache`
    keeps indexes between scans (default: a fresh one for this scan, in memory only);
    `dp_receipt_key_files` are the privacy service's public keys (PEM) that DP receipts in an
    export must verify with (an unreadable one is left out: its receipts then do not verify). Without a
    session or a project (an offline scan of files) only those extras are used. An unknown slug
    raises `enclave.errors.NotFound`.
    """
    protected = [ProtectedSource.from_path(p) for p in protect_files]
    calls: list[ModelCallText] = []
    allowed: int | None = None
    prior: list[ExportFile] = []
    used = 0
    slug: str | None = None
    model_dirs = _unique([*model_dirs, *(catalog.directories(session) if session is not None else [])])
    if session is not None and project is not None:
        if not isinstance(project, Project):
            project = get_project(session, project)
        slug = project.slug
        for dataset in registry_datasets.datasets_for(session, project):
            qis = dataset.quasi_identifier_list
            protected.append(ProtectedSource(dataset.name, Path(dataset.path), None, tuple(qis) if qis else None))
        calls = _model_calls(session, project)
        grant = session.get(Grant, project.id)
        allowed = grant.export_bytes if grant is not None else None
        if quarantine is not None:
            released = service.released_files(session, project.id)
            prior = [ExportFile(name, quarantine.read(sha)) for name, sha, _ in released]
            used = sum(size for _, _, size in released)
    return ScanContext(protected=protected, model_dirs=model_dirs, scorer=scorer,
                       model_calls=calls, prior_releases=prior, egress_used_bytes=used,
                       egress_allowed_bytes=allowed, cache=cache if cache is not None else ScanCache(),
                       project=slug, dp_receipt_keys=_read_keys(dp_receipt_key_files))


def _unique(paths: Iterable[str | Path]) -> list[Path]:
    """The paths in order, each directory once (however it was spelled)."""
    seen, out = set(), []
    for path in paths:
        key = str(Path(path).expanduser().resolve())
        if key not in seen:
            seen.add(key)
            out.append(Path(path))
    return out


def _read_keys(paths: Iterable[str | Path]) -> list[bytes]:
    keys = []
    for path in paths:
        try:
            keys.append(Path(path).read_bytes())
        except OSError:
            continue  # no key, no trust: receipts that would need it are reported as unverifiable
    return keys


def _model_calls(session: Session, project: Project) -> list[ModelCallText]:
    """Every output of the project's audited model calls, oldest first, with its prompt."""
    calls = []
    rows = session.exec(select(ModelCall).where(ModelCall.project_id == project.id)
                        .order_by(ModelCall.created_at)).all()
    for call in rows:
        try:
            outputs = json.loads(call.outputs or "[]")
        except ValueError:
            outputs = []
        for output in outputs if isinstance(outputs, list) else []:
            if isinstance(output, str) and output:
                calls.append(ModelCallText(call.id, call.prompt, output))
    return calls
