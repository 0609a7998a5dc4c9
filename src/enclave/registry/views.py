"""Records of registry objects as plain JSON-able dicts, for the CLI's `--json` and the services.

A view may read several areas (a project's record shows its members, datasets and grant), so views
live here, above the area modules, and no area module imports another in a cycle.
"""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session

from enclave.registry.clock import iso, last_day, utcnow
from enclave.registry.datasets import datasets_for
from enclave.registry.grants import grant_json
from enclave.registry.lifecycle import status_of
from enclave.registry.models import Grant, Person, Project
from enclave.registry.projects import members


def project_json(session: Session, project: Project, now: dt.datetime | None = None) -> dict:
    now = now or utcnow()
    pi = session.get(Person, project.pi_id)
    grant = session.get(Grant, project.id)
    return {
        "slug": project.slug,
        "title": project.title,
        "purpose": project.purpose,
        "pi": pi.username if pi else None,
        "status": status_of(project, now).value,
        "status_reason": project.status_reason,
        "terms_version": project.terms_version,
        "created_at": iso(project.created_at),
        "approved_by": project.approved_by,
        "approved_at": iso(project.approved_at),
        "expires_at": iso(project.expires_at),
        "until": last_day(project.expires_at),
        "members": [p.username for p in members(session, project)],
        "datasets": [d.name for d in datasets_for(session, project)],
        "grant": grant_json(grant) if grant else None,
    }
