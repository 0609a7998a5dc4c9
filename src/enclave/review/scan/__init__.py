"""The disclosure-check library: pure functions over an export's bytes, a policy and a
`ScanContext` the caller gives it. It never looks anything up (no registry, no service, no
gateway, no environment): whoever calls it gathers the context. See `pipeline` for how a scan runs
and `checks/` for the checks, one module each, registered in one list.

    from enclave.review.scan import DEFAULT_POLICY, ExportFile, ScanCache, ScanContext, load_policy, scan_files
    from enclave.review.scan import inspect   # one file opened as a scan opens it, for the reviewer UI
"""

from enclave.review.scan.pipeline import (  # noqa: F401  (the library's public face)
    DEFAULT_POLICY, ExportFile, FileCoverage, FileSummary, Inspection, ModelCallText, Policy, ProtectedSource,
    ScanCache, ScanContext, ScanReport, Scorer, TokenScores, gateway_scorer, inspect, load_policy, local_scorer,
    scan_files,
)
from enclave.review.scan.pipeline import __all__  # noqa: F401
