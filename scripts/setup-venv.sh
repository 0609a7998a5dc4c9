#!/usr/bin/env bash
# Make .venv with the enclave and everything its services and tests need.
# torch==2.13.0 (the CPU wheel on this machine's disk) goes in first: a bare `torch` requirement
# resolved later would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
    echo "setup: installing torch==2.13.0 (CPU)" >&2
    "${pip[@]}" install torch==2.13.0
fi
echo "setup: installing enclave and its extras" >&2
"${pip[@]}" install -e '.[dev]'
# A last check that the venv is whole (a half-finished earlier run leaves a venv behind).
.venv/bin/python -c 'import torch, transformers, fastapi, jupyterhub, enclave.cli, sqlmodel, alembic, psycopg, pytest' \
    || { echo "setup: the venv is incomplete; see pip's messages above" >&2; exit 1; }
