"""``docs/metrics.md`` against the real exposition: names, types and labels.

Every family the fully wired collector exposes must have a row, every row must
be exposed, with the same type and the same label names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from k8spacket.metrics.labels import DEFAULT_LABELS, LabelPolicy
from k8spacket.metrics.publish_collector import PublishCollector
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.publish import NOT_REPORTED_REASONS
from test_metrics_factories import ManualClock, collector, full_sources, rec

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(k8spacket_\w+)` \| (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$")
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? \S+$")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """family → (type, label names) from the table."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        name, mtype, _unit, labels, meaning = (g.strip() for g in m.groups())
        assert meaning, f"{name}: no meaning"
        names: set[str] = set()
        for part in labels.split(","):
            part = part.strip()
            if part == "_traffic labels_":
                names |= set(DEFAULT_LABELS)
            elif part != "—":
                names.add(part.strip("`"))
        assert name not in rows, f"{name} documented twice"
        rows[name] = (mtype, frozenset(names))
    return rows


def exposed(policy: LabelPolicy) -> dict[str, tuple[str, frozenset[str]]]:
    """family → (type, label names) from a fully wired collector's exposition."""
    traffic = TrafficMetrics(policy, clock=ManualClock())
    traffic.record(rec(close=None))
    traffic.record(rec())
    registry = CollectorRegistry()
    registry.register(collector(traffic, full_sources()))
    registry.register(PublishCollector(lambda: 0, lambda: dict.fromkeys(NOT_REPORTED_REASONS, 0)))
    text = generate_latest(registry).decode()
    families: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, mtype = line.split(" ")
            families[name] = (mtype, set())
        elif not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            name = m.group(1)
            base = next(f for f in families if name == f or name.removeprefix(f)[:1] == "_")
            labels = {kv.split("=", 1)[0] for kv in (m.group(2) or "").split('",') if kv}
            families[base][1].update(labels - {"le"})
    return {k: (t, frozenset(ls)) for k, (t, ls) in families.items()}


def test_every_family_documented_and_every_documented_family_exposed() -> None:
    doc, real = documented(), exposed(LabelPolicy())
    assert len(doc) >= 17
    assert sorted(set(real) - set(doc)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(doc) - set(real)) == [], "in docs/metrics.md but not exposed"


def test_types_and_labels_match() -> None:
    doc, real = documented(), exposed(LabelPolicy())
    assert {n: doc[n] for n in real} == real


@pytest.mark.parametrize(
    "policy",
    [
        LabelPolicy("pod"),
        LabelPolicy(
            "workload", ("src_ip", "dst_ip", "src_port", "dst_country"), hide_source_port=False
        ),
    ],
    ids=["pod-level", "all-opt-ins"],
)
def test_opt_in_labels_are_documented(policy: LabelPolicy) -> None:
    text = DOC.read_text()
    real = exposed(policy)
    extra = real["k8spacket_tcp_sent_bytes_total"][1] - set(DEFAULT_LABELS)
    assert extra == set(policy.opt_in)
    for name in extra:
        assert f"`{name}`" in text


def test_documented_buckets_are_the_real_ones() -> None:
    from k8spacket.metrics.traffic import DURATION_BUCKETS, HANDSHAKE_BUCKETS

    text = DOC.read_text()
    for name, buckets in (
        ("k8spacket_tcp_handshake_seconds", HANDSHAKE_BUCKETS),
        ("k8spacket_tcp_connection_duration_seconds", DURATION_BUCKETS),
    ):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{name}` | 0"))
        listed = row.split("|")[2].strip().removesuffix(", +Inf").split(", ")
        assert tuple(float(v) for v in listed) == buckets
