"""docs/design.md stays true: its record fields, commands and metric names are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from k8spacket.cli import build_parser
from k8spacket.flows.record import FIELD_NAMES

DOCS = Path(__file__).resolve().parent.parent / "docs"
DESIGN = (DOCS / "design.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = DESIGN.index(f"\n### {title}\n")
    end = DESIGN.find("\n### ", start + 1)
    return DESIGN[start : end if end != -1 else len(DESIGN)]


def test_record_fields_are_the_records_fields_in_order() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", section("Connection records"), re.MULTILINE)
    assert tuple(rows) == FIELD_NAMES


def test_every_command_is_documented() -> None:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if a.dest == "command")
    documented = set(re.findall(r"^\| `k8spacket (\w+)", section("Command line"), re.MULTILINE))
    assert set(sub.choices) - documented == set()  # type: ignore[arg-type]


def test_metric_names_are_in_the_metrics_table() -> None:
    table = set(
        re.findall(r"^\| `(k8spacket_\w+)` \|", (DOCS / "metrics.md").read_text(), re.MULTILINE)
    )
    named = set(re.findall(r"`(k8spacket_\w+?)(?:\{\w+\})?`", DESIGN))
    assert named and named - table == set()


def test_package_docs_cite_docs_design_not_a_file_users_lack() -> None:
    root = Path(__file__).resolve().parent.parent
    cites = [
        str(p.relative_to(root))
        for p in [*root.joinpath("exporter").rglob("*.py"), *DOCS.glob("*.md"), root / "README.md"]
        if "DESIGN.md" in p.read_text(encoding="utf-8")
    ]
    assert cites == []
