"""Self-metrics of the publisher (``k8spacket.publish``): what it dropped or left out.

* ``k8spacket_publish_dropped_total`` (counter): records dropped because the
  queue between the capture thread and the publisher was full;
* ``k8spacket_records_not_reported_total{reason}`` (counter): records the
  exactly-once rule left out of the metrics (and of every graph built from
  them); reasons ``remote_client_pod`` and ``service_backend_view``, all
  exported, zero until seen (docs/metrics.md);
* ``k8spacket_conntrack_errors_total`` (counter): conntrack lookups that failed
  with an error (not "no such entry"); such a connection is taken as not
  NATed, so a Service pair it belonged to may be counted twice.

Sources are plain callables read once per scrape, as in ``metrics.sources``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

DROPPED = "k8spacket_publish_dropped_total"
NOT_REPORTED = "k8spacket_records_not_reported_total"
CONNTRACK_ERRORS = "k8spacket_conntrack_errors_total"


class PublishCollector(Collector):
    """Yields the publisher's three families from snapshot callables."""

    def __init__(
        self,
        dropped: Callable[[], int],
        not_reported: Callable[[], Mapping[str, int]],
        conntrack_errors: Callable[[], int],
    ) -> None:
        self.dropped = dropped
        self.not_reported = not_reported
        self.conntrack_errors = conntrack_errors

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            DROPPED.removesuffix("_total"),
            "Connection records dropped because the publisher's queue was full.",
            value=self.dropped(),
        )
        c = CounterMetricFamily(
            NOT_REPORTED.removesuffix("_total"),
            "Connection records left out of the metrics by the exactly-once rule.",
            labels=["reason"],
        )
        for reason, n in sorted(self.not_reported().items()):
            c.add_metric([reason], n)
        yield c
        yield CounterMetricFamily(
            CONNTRACK_ERRORS.removesuffix("_total"),
            "Conntrack lookups that failed (the connection was taken as not NATed).",
            value=self.conntrack_errors(),
        )
