"""Self-metric sources: plain callables that the agent wires to the collector.

The numbers behind the self-metrics live in parts this package does not own
(capture statistics, the tracker's counters, decode skip counts, enrichment
and Kubernetes watch counters). Each is handed in as a callable returning plain
numbers or dicts of numbers, read once per scrape; nothing here imports those
parts, so the layering rule holds (lower layers never import ``metrics``).

A family whose source is not wired is left out of the exposition (so another
collector, e.g. the capture engineer's, may export it instead); a source that
raises is logged and its family is left out of that scrape, the rest of the
scrape still answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

Number = int | float
#: interface (or reason, resource) → count
CountsBy = Callable[[], Mapping[str, Number]]
#: (source, result) → count, or source → {result → count}
LookupCounts = Callable[[], Mapping[tuple[str, str], Number] | Mapping[str, Mapping[str, Number]]]


class TrackerLike(Protocol):
    """What :meth:`SelfMetricSources.from_tracker` reads from a ConnectionTracker."""

    @property
    def table(self) -> Mapping[int, object]: ...

    @property
    def evicted(self) -> Mapping[str, int]: ...

    @property
    def ignored(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class SelfMetricSources:
    """Callables behind the self-metrics; ``None`` leaves a family out."""

    #: ``k8spacket_capture_packets_total{interface}``
    capture_packets: CountsBy | None = None
    #: ``k8spacket_capture_drops_total{interface}`` (kernel PACKET_STATISTICS drops)
    capture_drops: CountsBy | None = None
    #: ``k8spacket_capture_interfaces``
    capture_interfaces: Callable[[], Number] | None = None
    #: ``k8spacket_decode_errors_total{reason}`` (reasons of ``decode.SKIP_REASONS``)
    decode_errors: CountsBy | None = None
    #: ``k8spacket_flows_tracked``
    flows_tracked: Callable[[], Number] | None = None
    #: ``k8spacket_flows_evicted_total{reason}``
    flows_evicted: CountsBy | None = None
    #: ``k8spacket_tracker_ignored_packets_total{reason}`` (``stray_rst``, ``after_close``)
    tracker_ignored: CountsBy | None = None
    #: ``k8spacket_enrichment_lookups_total{source,result}``
    enrichment_lookups: LookupCounts | None = None
    #: ``k8spacket_k8s_watch_events_total{resource}``
    k8s_watch_events: CountsBy | None = None
    #: ``k8spacket_thread_restarts_total{thread}`` (the agent's :class:`Supervisor`)
    thread_restarts: CountsBy | None = None

    def with_tracker(self, tracker: TrackerLike) -> SelfMetricSources:
        """A copy whose ``flows_tracked``/``flows_evicted`` read ``tracker``."""
        return dataclasses.replace(
            self,
            flows_tracked=lambda: len(tracker.table),
            flows_evicted=lambda: dict(tracker.evicted),
            tracker_ignored=lambda: dict(tracker.ignored),
        )
