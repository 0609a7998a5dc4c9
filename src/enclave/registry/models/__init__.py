"""Every table of the enclave, in one package (SQLModel): one module per area.

- `core`: people, projects, memberships, datasets, grants, API keys, credentials, the audit chain;
- `metering`: token accounts, rate windows, gateway instances, reservations and recorded model calls
  (the gateway);
- `exports`: export requests, their files, findings, reviews, comments and releases (the airlock);
- `sessions`: notebook sessions with their browser egress, and scholars' work volumes (the hub);
- `privacy`: the differential-privacy ledger, each project's spends against its grant's budget;
- `finetune`: DP fine-tune jobs, their progress, the model they produced and its audit reports;
- `access`: calls for applications, applications, panel scores, awards and their reports;
- `registrations`: self-registrations of applicants waiting for an operator;
- `catalog`: the models the gateway serves, their stages, stage history, promotions and incidents.

Services import their tables from here, never define their own, so that migrations (which import
only this package) see the whole schema. Schema changes go through Alembic migrations in
`migrations/versions/`; a test checks that the migrated schema and these models agree.
"""

from enclave.registry.models.access import (
    AccessApplication, AccessApplicationVersion, AccessAward, AccessCall, ApplicationState, AwardReport, CallState,
    ConflictKind, Outcome, PanelAssignment, PanelScore, ReportKind, Tier,
)
from enclave.registry.models.catalog import (
    CATALOG_APPEND_ONLY_TABLES, ModelEntry, ModelIncident, ModelPromotion, ModelStageStep,
)
from enclave.registry.models.core import (
    ApiKey, AuditEvent, Credential, Dataset, DatasetAccess, Grant, GrantModelTier, Membership, Person, Project, ProjectStatus, Role,
    Sensitivity,
)
from enclave.registry.models.exports import (
    APPEND_ONLY_TABLES, Decision, ExportComment, ExportFile, ExportFinding, ExportRelease, ExportRequest, ExportReview,
    ExportState, Visibility,
)
from enclave.registry.models.metering import (
    GatewayInstance, ModelCall, RateWindow, Reservation, UsageDay, UsageTotal,
)
from enclave.registry.models.finetune import FinetuneJob, FinetuneStatus
from enclave.registry.models.privacy import PRIVACY_APPEND_ONLY_TABLES, PrivacyAccount, PrivacySpend
from enclave.registry.models.registrations import Registration
from enclave.registry.models.sessions import EgressDay, NotebookSession, WorkVolume, WorkVolumeState

__all__ = [
    "AccessApplication", "AccessApplicationVersion", "AccessAward", "AccessCall", "ApplicationState", "AwardReport",
    "CallState", "ConflictKind", "Outcome", "PanelAssignment", "PanelScore", "ReportKind", "Tier",
    "APPEND_ONLY_TABLES", "ApiKey", "AuditEvent", "Credential", "Dataset", "DatasetAccess", "Decision", "EgressDay",
    "ExportComment",
    "ExportFile", "ExportFinding", "ExportRelease", "ExportRequest", "ExportReview", "ExportState", "GatewayInstance",
    "Grant", "GrantModelTier",
    "Membership", "ModelCall", "NotebookSession", "Person", "PRIVACY_APPEND_ONLY_TABLES", "PrivacyAccount", "PrivacySpend",
    "Project", "ProjectStatus", "RateWindow", "Registration", "Reservation", "Role",
    "Sensitivity", "UsageDay", "UsageTotal", "Visibility", "WorkVolume", "WorkVolumeState",
    "FinetuneJob", "FinetuneStatus",
    "CATALOG_APPEND_ONLY_TABLES", "ModelEntry", "ModelIncident", "ModelPromotion", "ModelStageStep",
]
