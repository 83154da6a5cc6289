"""Capture self-metrics that the main collector does not carry.

``K8spacketCollector`` renders the contract's capture families (packets,
drops, interfaces) from :class:`SelfMetricSources`; this collector adds two
families the capture layer needs so that nothing it leaves out is silent:

* ``k8spacket_capture_interfaces_skipped{reason}`` (gauge): candidate
  interfaces not captured now, by reason (``down``, ``no_carrier``,
  ``vanished``, ``open_failed``, ``ignored_name``);
* ``k8spacket_capture_not_owner_total{interface}`` (counter): packets seen on
  an interface but counted from the other pod's interface (the exactly-once
  rule), so ``packets_total`` minus these is what the tracker got.

Sources are plain callables read once per scrape, as in ``metrics.sources``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SKIPPED = "k8spacket_capture_interfaces_skipped"
NOT_OWNER = "k8spacket_capture_not_owner_total"


class CaptureCollector(Collector):
    """Yields the two extra capture families from snapshot callables."""

    def __init__(
        self,
        skipped: Callable[[], Mapping[str, int]],
        not_owner: Callable[[], Mapping[str, int]],
    ) -> None:
        self.skipped = skipped
        self.not_owner = not_owner

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            SKIPPED, "Candidate interfaces not captured now, by reason.", labels=["reason"]
        )
        for reason, n in sorted(self.skipped().items()):
            g.add_metric([reason], n)
        yield g
        c = CounterMetricFamily(
            NOT_OWNER.removesuffix("_total"),
            "Packets left to the sending pod's interface (exactly-once rule).",
            labels=["interface"],
        )
        for name, n in sorted(self.not_owner().items()):
            c.add_metric([name], n)
        yield c
