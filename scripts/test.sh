#!/usr/bin/env bash
# Run the whole test suite. Tests that need PostgreSQL get a throw-away server started by the
# test fixtures (tests/pg.py) unless ENCLAVE_TEST_PG_URL points at one; under `make test` a
# missing PostgreSQL is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export ENCLAVE_REQUIRE_PG=1
exec .venv/bin/python -m pytest "$@"
