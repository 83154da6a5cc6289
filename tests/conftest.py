"""Shared pytest configuration.

Tests marked ``netns`` need root (network namespaces, raw sockets). Outside CI
they are skipped with a reason when not root; in CI (``CI=true``) a missing
privilege is a failure, so nothing skips itself silently there.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kmockserver import FakeCluster

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The console scripts installed beside the interpreter (a .venv's bin/: hadolint,
# kubernetes-validate, k8spacket, ...) are found without the venv on PATH.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def require(condition: bool, why: str) -> None:
    """Skip (locally) or fail (in CI) when a test's real component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (make deps installs it)")
    assert path is not None
    return path


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns"):
        require(os.geteuid() == 0, "needs root for network namespaces")
        require_tool("ip")


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    """kmock behind its breakable proxy (:class:`kmockserver.FakeCluster`), shut down after."""
    from kmockserver import FakeCluster

    c = FakeCluster()
    try:
        yield c
    finally:
        c.shutdown()
