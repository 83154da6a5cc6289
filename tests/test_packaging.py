"""Packaging contracts: the lock file covers every runtime dependency, tools are pinned,
and ``make`` never needs the venv on ``PATH``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
LOCK = (REPO / "requirements.lock").read_text(encoding="utf-8")


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


LOCKED = {
    _name(m.group(1)): m.group(2)
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK, re.MULTILINE)
}
RUNTIME = PYPROJECT["project"]["dependencies"]


@pytest.mark.parametrize("requirement", RUNTIME, ids=_name)
def test_every_runtime_dependency_is_locked_with_hashes(requirement: str) -> None:
    name = _name(requirement)
    assert name in LOCKED, f"{name} is not in requirements.lock: run `make lock`"
    entry = re.search(
        rf"^{re.escape(name)}=={re.escape(LOCKED[name])} \\\n\s+--hash=sha256:",
        LOCK,
        re.MULTILINE | re.IGNORECASE,
    )
    assert entry is not None, f"{name} has no hash in requirements.lock"


@pytest.mark.parametrize("tool", ["ruff", "mypy", "import-linter"])
def test_linters_and_type_checker_are_pinned_exactly(tool: str) -> None:
    pins = [r for r in PYPROJECT["project"]["optional-dependencies"]["test"] if _name(r) == tool]
    assert len(pins) == 1 and re.fullmatch(rf"{re.escape(tool)}==[0-9][0-9.]*", pins[0]), pins


def test_makefile_runs_everything_through_the_venv_python() -> None:
    """No bare ``k8spacket``/``pytest``/``pip`` commands that would need the venv on PATH."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipes = [line.strip() for line in makefile.splitlines() if line.startswith("\t")]
    bare = [r for r in recipes if re.match(r"(k8spacket|pytest|pip|ruff|mypy|python3?)\b", r)]
    assert bare == []


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme
    assert [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ] == ["make test"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "k8spacket", "--version"],
        ["-m", "k8spacket", "version"],
        ["-m", "k8spacket.cli", "--version"],
    ],
    ids=["python-m-package", "version-command", "python-m-cli"],
)
def test_python_m_k8spacket_and_version(argv: list[str]) -> None:
    import subprocess
    import sys

    from k8spacket import __version__

    p = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, f"k8spacket {__version__}\n", "")
