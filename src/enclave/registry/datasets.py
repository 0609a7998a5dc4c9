"""Confidential datasets registered in the enclave, and which projects may use them."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from sqlmodel import Session, select

from enclave.registry import audit
from enclave.errors import BadInput, NotFound, Conflict
from enclave.registry.models import Dataset, DatasetAccess, Project, Sensitivity
from enclave.registry.lifecycle import require_live
from enclave.registry.people import require_role
from enclave.registry.projects import get_project
from enclave.registry.volumes import hold_project_volumes


def _fingerprint(path: Path) -> tuple[str | None, int | None]:
    if path.is_dir():
        return None, None
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _csv_columns(path: Path) -> list[str] | None:
    if path.suffix.lower() not in {".csv", ".tsv"}:
        return None
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), None)
    return [c.strip() for c in header or []]


def check_readable(path: str) -> Path:
    """The absolute path, if it exists and this process can read it (and list it, for a folder)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise BadInput(f"dataset path {path!r} does not exist")
    if not os.access(resolved, os.R_OK) or (resolved.is_dir() and not os.access(resolved, os.X_OK)):
        raise BadInput(f"dataset path {path!r} is not readable")
    return resolved


def register(
    session: Session, actor: str, name: str, path: str, quasi_identifiers: list[str],
    sensitivity: str = Sensitivity.confidential.value,
) -> Dataset:
    require_role(session, actor)
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise BadInput(f"bad dataset name {name!r}: use letters, digits, '-', '_' and '.'")
    if sensitivity not in {s.value for s in Sensitivity}:
        raise BadInput(f"unknown sensitivity {sensitivity!r}: choose from {', '.join(s.value for s in Sensitivity)}")
    resolved = check_readable(path)
    if session.exec(select(Dataset).where(Dataset.name == name)).first():
        raise Conflict(f"dataset {name!r} already exists")
    qids = [q.strip() for q in quasi_identifiers if q.strip()]
    try:
        columns = _csv_columns(resolved) if resolved.is_file() else None
        sha256, size = _fingerprint(resolved)
    except OSError as exc:
        raise BadInput(f"dataset path {path!r} is not readable: {exc.strerror}") from None
    if columns is not None:
        unknown = [q for q in qids if q not in columns]
        if unknown:
            raise BadInput(f"quasi-identifier {unknown[0]!r} is not a column of {resolved.name} (columns: {', '.join(columns)})")
    dataset = Dataset(name=name, path=str(resolved), sensitivity=sensitivity, quasi_identifiers=",".join(qids),
                      sha256=sha256, size_bytes=size, registered_by=actor)
    session.add(dataset)
    session.flush()
    audit.append(session, actor=actor, action="dataset.register", subject=f"dataset:{name}",
                 details={"path": str(resolved), "sensitivity": sensitivity, "quasi_identifiers": qids, "sha256": sha256})
    return dataset


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise NotFound(f"unknown dataset {name!r}")
    return dataset


def allow(session: Session, actor: str, name: str, slug: str) -> DatasetAccess:
    require_role(session, actor)
    dataset = get_dataset(session, name)
    project = get_project(session, slug)
    require_live(project, f"give it dataset {name!r}")
    if session.get(DatasetAccess, (dataset.id, project.id)):
        raise Conflict(f"project {slug!r} may already use dataset {name!r}")
    access = DatasetAccess(dataset_id=dataset.id, project_id=project.id, granted_by=actor)
    session.add(access)
    session.flush()
    audit.append(session, actor=actor, action="dataset.allow", subject=f"dataset:{name}", details={"project": slug})
    return access


def disallow(session: Session, actor: str, name: str, slug: str) -> None:
    require_role(session, actor)
    dataset = get_dataset(session, name)
    project = get_project(session, slug)
    access = session.get(DatasetAccess, (dataset.id, project.id))
    if access is None:
        raise NotFound(f"project {slug!r} has no access to dataset {name!r}")
    session.delete(access)
    session.flush()
    audit.append(session, actor=actor, action="dataset.disallow", subject=f"dataset:{name}", details={"project": slug})
    # The members' work volumes may hold copies of the withdrawn dataset.
    hold_project_volumes(session, actor, project, f"dataset {name!r} withdrawn from the project")


def datasets_for(session: Session, project: Project) -> list[Dataset]:
    return list(session.exec(
        select(Dataset).join(DatasetAccess, DatasetAccess.dataset_id == Dataset.id)
        .where(DatasetAccess.project_id == project.id).order_by(Dataset.name)
    ).all())


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.exec(select(Dataset).order_by(Dataset.name)).all())


def dataset_json(session: Session, dataset: Dataset) -> dict:
    projects = session.exec(
        select(Project.slug).join(DatasetAccess, DatasetAccess.project_id == Project.id)
        .where(DatasetAccess.dataset_id == dataset.id).order_by(Project.slug)
    ).all()
    return {"name": dataset.name, "path": dataset.path, "sensitivity": dataset.sensitivity,
            "quasi_identifiers": dataset.quasi_identifier_list, "sha256": dataset.sha256,
            "size_bytes": dataset.size_bytes, "projects": list(projects)}
