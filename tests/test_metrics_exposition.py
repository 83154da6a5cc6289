"""The fast writer and /metrics content negotiation against prometheus_client's encoders."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from k8spacket.metrics.collector import K8spacketCollector, ScrapeRegistry, make_wsgi_app
from k8spacket.metrics.exposition import PROMETHEUS_2_ACCEPT
from k8spacket.metrics.labels import LabelPolicy
from k8spacket.metrics.traffic import TrafficMetrics
from test_metrics_factories import ManualClock, collector, full_sources, rec
from test_metrics_golden import SCENARIOS, cluster_records


def standard(c: K8spacketCollector) -> bytes:
    registry = CollectorRegistry()
    registry.register(c)
    return generate_latest(registry)


def standard_openmetrics(c: K8spacketCollector) -> bytes:
    registry = CollectorRegistry()
    registry.register(c)
    return openmetrics_latest(registry)


def default_collector() -> K8spacketCollector:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record_many(cluster_records())
    return collector(traffic, full_sources())


def opt_in_collector() -> K8spacketCollector:
    policy = LabelPolicy(
        "pod", ("src_ip", "dst_ip", "src_port", "dst_country"), hide_source_port=False
    )
    traffic = TrafficMetrics(policy, budget=12, clock=ManualClock())
    for i in range(20):
        traffic.record(rec("web", "cart", src_name=f"web-{i}", src_port=50000 + i, close=None))
    traffic.record(rec('we"ird\\name', "line\nbreak", dst_org="Org, Inc.", dst_kind="external"))
    return collector(traffic)


CASES: dict[str, Callable[[], K8spacketCollector]] = {
    "default": default_collector,
    "pod-opt-ins-budget-escapes": opt_in_collector,
    "empty": lambda: collector(TrafficMetrics(clock=ManualClock())),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_exposition_is_byte_identical(case: str) -> None:
    c = CASES[case]()
    assert c.exposition() == standard(c)
    assert c.exposition() == standard(c)  # second scrape: from the label cache


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_openmetrics_is_byte_identical(case: str) -> None:
    c = CASES[case]()
    om = c.exposition(encoder=openmetrics_latest, openmetrics=True)
    assert om == standard_openmetrics(c)
    assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    # the strict OpenMetrics parser takes it (counter families without _total, EOF)
    names = {f.name for f in text_string_to_metric_families(om.decode())}
    assert "k8spacket_tcp_sent_bytes" in names or case == "empty"


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (PROMETHEUS_2_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        ("", "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain;version=0.0.4", "text/plain; version=0.0.4; charset=utf-8"),
        ("*/*", "text/plain; version=0.0.4; charset=utf-8"),
    ],
    ids=["prometheus-2.42", "no-accept", "text-0.0.4", "any"],
)
@pytest.mark.parametrize("encoding", ["", "gzip", "gzip, deflate"], ids=["plain", "gzip", "gzip+"])
def test_scrape_negotiates_format_and_gzip(accept: str, content_type: str, encoding: str) -> None:
    c = default_collector()
    other = CollectorRegistry()
    Gauge("k8spacket_capture_ring_bytes", "test gauge", registry=other).set(5)
    registry = ScrapeRegistry(c)
    registry.register(other)
    body, headers = registry.scrape(accept, encoding)
    h = dict(headers)
    assert h["Content-Type"].startswith(content_type)
    if encoding:
        assert h["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    else:
        assert "Content-Encoding" not in h
    reference = CollectorRegistry()
    reference.register(c)
    reference.register(other)
    om = content_type.startswith("application/openmetrics-text")
    assert body == (openmetrics_latest if om else generate_latest)(reference)


def test_cache_follows_new_and_dropped_series() -> None:
    clock = ManualClock()
    traffic = TrafficMetrics(ttl=60, clock=clock)
    c = collector(traffic)
    traffic.record(rec("a", "b"))
    first = c.exposition()
    clock.advance(61)
    traffic.record(rec("c", "d", sent=7))
    second = c.exposition()
    assert second == standard(c)
    assert b'src_workload="a"' in first
    assert b'src_workload="a"' not in second


def test_golden_default_through_the_fast_path() -> None:
    from test_metrics_golden import GOLDEN

    c = default_collector()
    assert c.exposition().decode() == (GOLDEN / "metrics_default.prom").read_text()
    assert "metrics_default.prom" in SCENARIOS


def test_wsgi_app_serves_the_exposition_and_other_collectors() -> None:
    c = default_collector()
    other = CollectorRegistry()
    Gauge("k8spacket_capture_ring_bytes", "test gauge", registry=other).set(5)
    registry = ScrapeRegistry(c)
    registry.register(other)
    app = make_wsgi_app(registry)
    seen: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(
        app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "wsgi.input": io.BytesIO()},
            lambda status, headers: seen.append((status, headers)),
        )
    )
    status, headers = seen[0]
    assert status == "200 OK"
    assert ("Content-Type", "text/plain; version=0.0.4; charset=utf-8") in headers
    assert body == standard(c) + generate_latest(other)
