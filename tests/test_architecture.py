"""The house's rules (docs/architecture.md), checked: the import-linter contracts in
pyproject.toml, that the scan library's fence names every airlock module, and that nothing below
the services reads the environment."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "enclave"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in done.stdout


def test_the_scan_library_fence_names_every_airlock_module():
    """A new module of the review service must join the list the scan library may not import."""
    fence = next(c for c in _contracts() if c["id"] == "scan-below-airlock")
    airlock = {f"enclave.review.{p.stem if p.is_file() else p.name}" for p in (SRC / "review").iterdir()
               if p.name not in ("__init__.py", "scan", "templates", "__pycache__")
               and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert airlock == set(fence["forbidden_modules"])


def _environment_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("layer", ["registry", "review/scan", "web", "errors.py"])
def test_nothing_below_the_services_reads_the_environment(layer):
    """Settings are read once, at a service's start-up (envsettings and the settings objects);
    what lies below is handed values, so tests and deployments see one truth."""
    base = SRC / layer
    files = [base] if base.is_file() else sorted(base.rglob("*.py"))
    assert files
    assert [hit for f in files for hit in _environment_reads(f)] == []
