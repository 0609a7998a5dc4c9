#!/usr/bin/env bash
# Run the whole test suite (screenshots and logs worth keeping go to test-artifacts/). Tests that
# need PostgreSQL get a throw-away server started by the test fixtures (tests/pg.py) unless ENCLAVE_TEST_PG_URL points at one; under `make test` a
# missing PostgreSQL is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export ENCLAVE_REQUIRE_PG=1
# The notebook-isolation tests need a Docker engine and the UI tests Chromium: under `make test`
# their absence is a failure, never a skip.
export ENCLAVE_REQUIRE_DOCKER=1 ENCLAVE_REQUIRE_CHROMIUM=1
scripts/start-dockerd.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest "$@"
