"""Schemathesis generates requests from the gateway's published OpenAPI document, valid and
invalid, authenticated and not; none may produce a server error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.registry import people
from enclave.registry.db import make_engine, session_scope, upgrade

from tests.gateway_fixtures import OPERATOR, serve, tiny_model_dir  # noqa: F401  (fixture)

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


# 60 generated cases take about a minute alone; on a loaded 2-core machine several times that.
@pytest.mark.timeout(900)
def test_no_input_makes_the_gateway_fail(tiny_model_dir, tmp_path):
    db = make_engine(f"sqlite:///{tmp_path / 'enclave.db'}")
    upgrade(db)
    with session_scope(db) as s:
        people.add_person(s, OPERATOR, OPERATOR, "Op", "op@example.org", roles=["operator"], bootstrap=True)
    # The internals tier, so that activations are fuzzed past the tier check too.
    with serve(db, tiny_model_dir, grant={"tokens_total": 10**9, "tokens_per_day": 10**9, "tier": "internals",
                                          "activation_bytes_per_day": 10**9}) as gw:
        proc = subprocess.run(
            [SCHEMATHESIS, "run", f"{gw.url}/openapi.json", "--checks", "not_a_server_error",
             "--header", f"Authorization: token {gw.key}", "--max-examples", "60",
             "--request-timeout", "60", "--generation-deterministic"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # Every generated case passed. (Schemathesis may warn that /v1/activations rejects most generated
    # bodies: hook names are checked against the served model, which a static schema cannot list.)
    assert re.search(r"\b(\d+) generated, \1 passed\b", proc.stdout) or "No issues found" in proc.stdout, \
        proc.stdout[-4000:]
    assert re.search(r"Tested:\s+8\b", proc.stdout), proc.stdout[-2000:]  # every operation was exercised
