"""A real Prometheus scrapes the exporter; PromQL returns what the test generated.

The exporter side is an :class:`ExporterTarget`: an address Prometheus scrapes
and a ``feed(records)`` that makes traffic happen. Here it is the registry's
WSGI app (``make_wsgi_app``: the agent's content negotiation and fast writer)
served on 127.0.0.1 and fed with synthesized connection records of known sizes.
The app records what it answered, so the test also shows that a real
Prometheus asks for (and parses) OpenMetrics, gzipped.

Exact numbers from ``increase()``: Prometheus extrapolates a range to its
edges unless the range starts and ends exactly on samples. The test finds the
scrape that last saw batch A and the first that saw A+B, and evaluates at the
second one with a range reaching back exactly to the first, so ``increase``
must equal batch B to the byte.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from conftest import require_tool
from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.collector import build_registry, make_wsgi_app
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics
from promserver import PrometheusServer
from test_metrics_factories import rec

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


class ExporterTarget(Protocol):
    address: str  # host:port Prometheus scrapes (path /metrics)

    def feed(self, records: Iterable[ConnectionRecord]) -> None: ...


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class CollectorTarget:
    """The collector's WSGI app (what /metrics serves) on 127.0.0.1, in a thread."""

    def __init__(self) -> None:
        self.traffic = TrafficMetrics()
        registry = build_registry(self.traffic, SelfMetricSources(flows_tracked=lambda: 0))
        app = make_wsgi_app(registry)
        #: (Content-Type, Content-Encoding) of every answer
        self.answered: list[tuple[str, str]] = []

        def recording(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            def start(status: str, headers: list[tuple[str, str]]) -> Any:
                h = dict(headers)
                self.answered.append((h["Content-Type"], h.get("Content-Encoding", "")))
                return start_response(status, headers)

            return app(environ, start)

        self.server = make_server("127.0.0.1", 0, recording, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def feed(self, records: Iterable[ConnectionRecord]) -> None:
        self.traffic.record_many(records)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def target() -> Iterator[CollectorTarget]:
    t = CollectorTarget()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def prometheus(target: CollectorTarget, tmp_path: Path) -> Iterator[PrometheusServer]:
    binary = require_tool("prometheus")
    server = PrometheusServer(binary, target.address, tmp_path)
    try:
        yield server
    finally:
        server.stop()


def batch(
    n: int, src: str, dst: str, *, sent: int, received: int, handshake: float, port0: int
) -> list[ConnectionRecord]:
    return [
        rec(
            src,
            dst,
            sent=sent,
            received=received,
            handshake=handshake,
            duration=0.2,
            src_port=port0 + i,
        )
        for i in range(n)
    ]


SENT_CART_REDIS = 'k8spacket_tcp_sent_bytes_total{src_workload="cart",dst_workload="redis"}'


def test_promql_returns_the_generated_bytes_and_connections(
    target: ExporterTarget, prometheus: PrometheusServer
) -> None:
    # batch A: handshakes in (0.001, 0.0025]
    a = batch(3, "cart", "redis", sent=1000, received=5000, handshake=0.002, port0=41000)
    a += batch(2, "web", "cart", sent=70, received=700, handshake=0.002, port0=42000)
    target.feed(a)
    prometheus.wait_target_up()
    prometheus.wait_until(
        "batch A to be scraped", lambda: prometheus.value(f"sum({SENT_CART_REDIS})") == 3000
    )

    # batch B: handshakes in (0.00025, 0.0005]
    b = batch(4, "cart", "redis", sent=1234, received=4321, handshake=0.0004, port0=43000)
    b += [
        rec(
            "cart",
            "redis",
            sent=0,
            received=0,
            handshake=None,
            outcome="refused",
            close="rst",
            src_port=44000,
        )
    ]
    target.feed(b)
    prometheus.wait_until(
        "batch B to be scraped",
        lambda: prometheus.value(f"sum({SENT_CART_REDIS})") == 3000 + 4 * 1234,
    )

    # the scrape that last saw A and the first that saw A+B
    t_b, window = prometheus.step_window(SENT_CART_REDIS, 3000, 3000 + 4 * 1234)

    assert prometheus.value(f"increase({SENT_CART_REDIS}{window})", at=t_b) == 4 * 1234
    received = prometheus.value(
        "sum(increase(k8spacket_tcp_received_bytes_total"
        f'{{src_workload="cart",dst_workload="redis"}}{window}))',
        at=t_b,
    )
    assert received == 4 * 4321
    by_outcome = prometheus.by_labels(
        f"sum by (outcome) (increase(k8spacket_tcp_connections_total{window}))", "outcome", at=t_b
    )
    # the refused series is born inside the window with value 1: like any new
    # series, increase() cannot see its first step (docs/metrics.md says so)
    assert by_outcome == {"established": 4.0}
    now_by_outcome = prometheus.by_labels(
        "sum by (outcome) (k8spacket_tcp_connections_total)", "outcome", at=t_b
    )
    assert now_by_outcome == {"established": 5 + 4, "refused": 1}

    # totals per workload pair, as a dashboard asks
    totals = prometheus.by_labels(
        "sum by (src_workload, dst_workload) (k8spacket_tcp_sent_bytes_total)",
        "src_workload",
        "dst_workload",
        at=t_b,
    )
    assert totals == {("cart", "redis"): 3000 + 4 * 1234, ("web", "cart"): 140}
    conns = prometheus.value("sum(k8spacket_tcp_connections_total)", at=t_b)
    assert conns == 5 + 5

    # median handshake of batch B alone: 4 observations in (0.00025, 0.0005],
    # linear interpolation at rank 2 of 4 → 0.000375
    median_b = prometheus.value(
        "histogram_quantile(0.5, sum by (le) "
        f"(increase(k8spacket_tcp_handshake_seconds_bucket{window})))",
        at=t_b,
    )
    assert median_b == pytest.approx(0.000375)
    # over everything: 5 in (0.001, 0.0025] and 4 below → rank 4.5 lies in the upper bucket
    median_all = prometheus.value(
        "histogram_quantile(0.5, sum by (le) (k8spacket_tcp_handshake_seconds_bucket))", at=t_b
    )
    assert median_all == pytest.approx(0.001 + 0.0015 * (4.5 - 4) / 5)
    assert prometheus.value("k8spacket_flows_tracked", at=t_b) == 0
    # Prometheus 2.x prefers OpenMetrics and accepts gzip: that is what it was served
    assert isinstance(target, CollectorTarget)
    content_type, encoding = target.answered[-1]
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert encoding == "gzip"
