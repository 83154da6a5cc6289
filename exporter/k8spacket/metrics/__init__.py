"""Prometheus metrics: the only layer that touches prometheus_client.

Wiring (the agent does this once):

* :class:`~k8spacket.metrics.labels.LabelPolicy` — level, opt-in labels,
  ``hideSourcePort``;
* :class:`~k8spacket.metrics.traffic.TrafficMetrics` — its ``record`` is the
  record sink (one dict update per family, no prometheus_client call); its
  ``forget``/``drop_where`` remove the series of deleted pods;
* :class:`~k8spacket.metrics.sources.SelfMetricSources` — callables behind the
  self-metrics;
* :class:`~k8spacket.metrics.collector.K8spacketCollector` — a custom collector
  (register it, or serve ``make_wsgi_app(collector, *other_collectors)`` on
  ``/metrics`` for the fast exposition).

``metrics.replay.records_to_exposition`` renders a replay's records once.
Every family is documented in ``docs/metrics.md``.
"""
