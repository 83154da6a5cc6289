"""Self-metrics of the Node Graph API's ``agents`` source: the peers that did not answer.

* ``k8spacket_graph_peer_errors_total{reason}`` (counter): agents the ``agents``
  graph source asked and got no usable answer from, by reason: ``timeout``
  (no answer within ``graph.peerTimeout``), ``unreachable`` (connection
  refused, reset, no route), ``http`` (an answer other than 200),
  ``bad_answer`` (not the edges it expects, e.g. another version). Every reason
  is exported, zero until seen (docs/metrics.md). Each graph answer names the
  peers it is missing too (docs/nodegraph.md).

The source is a plain callable read once per scrape, as in ``metrics.sources``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

PEER_ERRORS = "k8spacket_graph_peer_errors_total"


class GraphCollector(Collector):
    """Yields ``k8spacket_graph_peer_errors_total`` from a snapshot callable."""

    def __init__(self, peer_errors: Callable[[], Mapping[str, int]]) -> None:
        self.peer_errors = peer_errors

    def collect(self) -> Iterable[Metric]:
        c = CounterMetricFamily(
            PEER_ERRORS.removesuffix("_total"),
            "Agents the agents graph source asked without a usable answer, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(self.peer_errors().items()):
            c.add_metric([reason], n)
        yield c
