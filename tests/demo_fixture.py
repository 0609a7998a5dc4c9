"""The real demo model, built once per machine into the enclave cache and reused by later sessions.

Import `demo_dir` into a test module to use it. The first build trains for minutes, so a test that
uses it needs a generous `@pytest.mark.timeout` (setup counts towards the test's time).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.demo.model import DemoPaths, build_demo
from enclave.envsettings import cache_dir


def demo_cache_dir() -> Path:
    return cache_dir("demo-model")


@pytest.fixture(scope="session")
def demo_dir() -> DemoPaths:
    return build_demo(demo_cache_dir(), progress=False)
