"""Exposition text for ``k8spacket replay --format prom``.

Replays have no scrape loop and no wall clock: the records of the whole
capture go into one :class:`TrafficMetrics` (default label policy, default
budget, a fixed clock so nothing expires), the tracker's counters and the
replay's decode skip counts become the self-metrics, and the exposition is
rendered once. Capture families (interfaces, kernel drops) are left out: a
file has none.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.exposition import generate_latest

from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.collector import build_registry
from k8spacket.metrics.labels import LabelPolicy
from k8spacket.metrics.sources import SelfMetricSources, TrackerLike
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.replay import ReplayStats


def records_to_exposition(
    records: Iterable[ConnectionRecord],
    *,
    tracker: TrackerLike | None = None,
    stats: ReplayStats | None = None,
    policy: LabelPolicy | None = None,
    python_version: str | None = None,
) -> str:
    """The Prometheus text exposition of ``records`` (and the replay's counters)."""
    traffic = TrafficMetrics(policy, clock=lambda: 0.0)
    traffic.record_many(records)
    sources = SelfMetricSources()
    if tracker is not None:
        sources = sources.with_tracker(tracker)
    if stats is not None:
        skipped = dict(stats.skipped)
        sources = SelfMetricSources(
            decode_errors=lambda: skipped,
            flows_tracked=sources.flows_tracked,
            flows_evicted=sources.flows_evicted,
            tracker_ignored=sources.tracker_ignored,
        )
    kwargs = {} if python_version is None else {"python_version": python_version}
    registry = build_registry(traffic, sources, **kwargs)
    return generate_latest(registry).decode("utf-8")
