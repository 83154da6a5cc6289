"""Golden exposition files, checked by ``promtool check metrics``.

The scenarios are fixed records with an injected clock and fixed versions, so
the text is byte-for-byte stable. Regenerate after an intended change with::

    K8SPACKET_REGEN_GOLDEN=1 python -m pytest tests/test_metrics_golden.py

and review the diff. Without the flag a mismatch fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conftest import require_tool
from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.labels import LabelPolicy
from k8spacket.metrics.replay import records_to_exposition
from k8spacket.metrics.traffic import TrafficMetrics
from test_metrics_factories import ManualClock, collector, full_sources, rec

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("K8SPACKET_REGEN_GOLDEN") == "1"


def cluster_records() -> list[ConnectionRecord]:
    """A small cluster's worth: pods, a service, a node, the internet, failures."""
    return [
        rec(
            "frontend",
            "cart",
            sent=512,
            received=2048,
            handshake=0.00012,
            duration=0.02,
            dst_port=8080,
        ),
        rec(
            "frontend",
            "cart",
            sent=480,
            received=1999,
            handshake=0.00031,
            duration=0.04,
            dst_port=8080,
            src_port=40001,
        ),
        rec("cart", "redis", sent=100, received=40, close=None, duration=10.0),
        rec("cart", "redis", sent=900, received=60, close=None, first=False, duration=20.0),
        rec("cart", "redis", sent=7, received=7, close="fin", first=False, duration=24.5),
        rec(
            "cart",
            "redis",
            sent=64,
            received=0,
            close=None,
            handshake=0.0009,
            src_port=40002,
            duration=10.0,
        ),
        rec(
            "cart",
            "api",
            dst_kind="service",
            dst_port=80,
            sent=300,
            received=900,
            handshake=0.0021,
            duration=1.2,
        ),
        rec(
            "kubelet",
            "cart",
            src_namespace="",
            src_kind="node",
            dst_port=8081,
            sent=0,
            received=0,
            handshake=None,
            outcome="refused",
            close="rst",
            duration=0.0003,
        ),
        rec(
            "checkout",
            "",
            dst_namespace="",
            dst_kind="external",
            dst_org="Telstra Pty Ltd",
            dst_country="AU",
            dst="1.128.0.1",
            dst_port=443,
            sent=1200,
            received=5400,
            handshake=0.045,
            duration=3.5,
        ),
        rec(
            "checkout",
            "",
            dst_namespace="",
            dst_kind="",
            dst="203.0.113.9",
            dst_port=443,
            sent=0,
            received=0,
            handshake=None,
            outcome="unanswered",
            close="idle",
            duration=20.0,
        ),
        rec(
            "",
            "",
            src_namespace="",
            src_kind="",
            dst_namespace="",
            dst_kind="",
            src="192.0.2.1",
            dst="192.0.2.2",
            dst_port=22,
            sent=33,
            received=44,
            handshake=None,
            outcome="midstream",
            close="fin",
            duration=61.0,
        ),
    ]


def default_exposition() -> str:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record_many(cluster_records())
    registry = CollectorRegistry()
    registry.register(collector(traffic, full_sources()))
    return generate_latest(registry).decode()


def pod_level_budget_exposition() -> str:
    """Pod level with addresses and the source port, a budget of 12: folding shows."""
    policy = LabelPolicy("pod", ("src_ip", "src_port", "dst_country"), hide_source_port=False)
    traffic = TrafficMetrics(policy, budget=12, clock=ManualClock())
    for i in range(20):
        traffic.record(
            rec(
                "web",
                "cart",
                src_name=f"web-{i % 4}",
                src=f"10.244.3.{i}",
                src_port=50000 + i,
                sent=10,
                received=20,
                handshake=0.0002,
                duration=0.1,
            )
        )
    traffic.record(rec("web", "cart", dst_namespace="billing", sent=1, received=1))
    registry = CollectorRegistry()
    registry.register(collector(traffic))
    return generate_latest(registry).decode()


def replay_exposition() -> str:
    return records_to_exposition(cluster_records(), python_version="3.0.0-test").replace(
        'version="' + __import__("k8spacket").__version__ + '"', 'version="0.0.0-test"'
    )


SCENARIOS: dict[str, Callable[[], str]] = {
    "metrics_default.prom": default_exposition,
    "metrics_pod_level_budget.prom": pod_level_budget_exposition,
    "metrics_replay.prom": replay_exposition,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS), ids=lambda n: n.removesuffix(".prom"))
def test_exposition_matches_golden(name: str) -> None:
    text = SCENARIOS[name]()
    path = GOLDEN / name
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with K8SPACKET_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs (K8SPACKET_REGEN_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("name", sorted(SCENARIOS), ids=lambda n: n.removesuffix(".prom"))
def test_promtool_finds_nothing(name: str) -> None:
    promtool = require_tool("promtool")
    text = SCENARIOS[name]()
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_promtool_would_catch_a_bad_name() -> None:
    """The check above can fail: promtool does report a counter without ``_total``."""
    promtool = require_tool("promtool")
    bad = "# HELP x_bytes b\n# TYPE x_bytes counter\nx_bytes 1\n"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 or done.stdout or done.stderr


def test_pod_level_stays_within_budget_and_counts_the_overflow() -> None:
    text = pod_level_budget_exposition()
    sent = [ln for ln in text.splitlines() if ln.startswith("k8spacket_tcp_sent_bytes_total{")]
    assert len(sent) <= 12
    assert 'src_workload="__other__"' in text
    assert 'k8spacket_series_overflow_total{metric="k8spacket_tcp_sent_bytes_total"} 11.0' in text
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in sent) == 20 * 10 + 1
