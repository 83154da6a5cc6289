"""Factories shared by the metrics tests: connection records and a manual clock.

No tests here; the ``test_metrics_*`` modules import it (pytest puts ``tests/``
on ``sys.path``).
"""

from __future__ import annotations

from typing import Any

from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.collector import K8spacketCollector
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics

TEST_VERSION = "0.0.0-test"
TEST_PYTHON = "3.0.0-test"


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rec(
    src_workload: str = "cart",
    dst_workload: str = "redis",
    *,
    sent: int = 100,
    received: int = 200,
    handshake: float | None = 0.0004,
    duration: float = 0.5,
    outcome: str = "established",
    close: str | None = "fin",
    first: bool = True,
    src: str = "10.244.1.5",
    src_port: int = 40000,
    dst: str = "10.244.2.7",
    dst_port: int = 6379,
    src_namespace: str = "shop",
    dst_namespace: str = "shop",
    src_kind: str = "pod",
    dst_kind: str = "pod",
    src_name: str | None = None,
    dst_name: str | None = None,
    **extra: Any,
) -> ConnectionRecord:
    """A connection record between two named pods unless told otherwise."""
    return ConnectionRecord(
        src=src,
        src_port=src_port,
        dst=dst,
        dst_port=dst_port,
        bytes_sent=sent,
        bytes_received=received,
        handshake_seconds=handshake,
        duration_seconds=duration,
        outcome=outcome,  # type: ignore[arg-type]
        close=close,  # type: ignore[arg-type]
        start=100.0,
        end=100.0 + duration,
        src_namespace=src_namespace,
        src_workload=src_workload,
        src_kind=src_kind,  # type: ignore[arg-type]
        src_name=src_name
        if src_name is not None
        else (f"{src_workload}-0" if src_workload else ""),
        dst_namespace=dst_namespace,
        dst_workload=dst_workload,
        dst_kind=dst_kind,  # type: ignore[arg-type]
        dst_name=dst_name
        if dst_name is not None
        else (f"{dst_workload}-0" if dst_workload else ""),
        first=first,
        **extra,
    )


def full_sources() -> SelfMetricSources:
    """Every self-metric source wired, with fixed numbers."""
    return SelfMetricSources(
        capture_packets=lambda: {"veth1a2b": 1500, "cali0f3e": 320},
        capture_drops=lambda: {"veth1a2b": 0, "cali0f3e": 2},
        capture_interfaces=lambda: 2,
        decode_errors=lambda: {"truncated": 3},
        flows_tracked=lambda: 17,
        flows_evicted=lambda: {"idle": 4, "capacity": 0},
        tracker_ignored=lambda: {"stray_rst": 1, "after_close": 5},
        enrichment_lookups=lambda: {
            "k8s": {"hit": 120, "miss": 3},
            "geoip": {"hit": 7, "miss": 1},
            "whois": {"hit": 2, "error": 1},
        },
        k8s_watch_events=lambda: {"pods": 40, "services": 6, "nodes": 2},
        thread_restarts=lambda: {"capture": 0, "interfaces": 1},
    )


def collector(
    traffic: TrafficMetrics, sources: SelfMetricSources | None = None
) -> K8spacketCollector:
    return K8spacketCollector(traffic, sources, version=TEST_VERSION, python_version=TEST_PYTHON)
