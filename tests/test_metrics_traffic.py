"""Accounting rules: records in, exact sample values out (fresh registry per test)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.collector import K8spacketCollector, build_registry
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics
from test_metrics_factories import ManualClock, collector, full_sources, rec

EDGE = {
    "src_namespace": "shop",
    "src_workload": "cart",
    "src_kind": "pod",
    "dst_namespace": "shop",
    "dst_workload": "redis",
    "dst_kind": "pod",
    "dst_port": "6379",
}


def registry_of(
    *records: ConnectionRecord, sources: SelfMetricSources | None = None
) -> CollectorRegistry:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record_many(records)
    registry = CollectorRegistry()
    registry.register(collector(traffic, sources))
    return registry


def test_a_long_lived_connection_counts_once_and_sums_its_deltas() -> None:
    reg = registry_of(
        rec(sent=10, received=20, close=None, first=True, duration=10),
        rec(sent=30, received=40, close=None, first=False, duration=20),
        rec(sent=5, received=6, close="fin", first=False, duration=25),
    )
    get = reg.get_sample_value
    assert get("k8spacket_tcp_sent_bytes_total", EDGE) == 45
    assert get("k8spacket_tcp_received_bytes_total", EDGE) == 66
    assert get("k8spacket_tcp_connections_total", {**EDGE, "outcome": "established"}) == 1
    assert get("k8spacket_tcp_connections_closed_total", {**EDGE, "close": "fin"}) == 1
    assert get("k8spacket_tcp_handshake_seconds_count", EDGE) == 1
    assert get("k8spacket_tcp_connection_duration_seconds_count", EDGE) == 1
    assert get("k8spacket_tcp_connection_duration_seconds_sum", EDGE) == 25
    assert get("k8spacket_tcp_connection_duration_seconds_bucket", {**EDGE, "le": "15.0"}) == 0
    assert get("k8spacket_tcp_connection_duration_seconds_bucket", {**EDGE, "le": "60.0"}) == 1
    assert get("k8spacket_tcp_open_connections", EDGE) == 0


def test_open_connections_gauge_follows_first_and_final_records() -> None:
    reg = registry_of(
        rec(close=None, src_port=1),
        rec(close=None, src_port=2),
        rec(close=None, src_port=3),
        rec(close="rst", first=False, src_port=2),
        rec(close="fin", first=True, src_port=4),  # opened and closed between flushes
    )
    get = reg.get_sample_value
    assert get("k8spacket_tcp_open_connections", EDGE) == 2
    assert get("k8spacket_tcp_connections_total", {**EDGE, "outcome": "established"}) == 4
    assert get("k8spacket_tcp_connections_closed_total", {**EDGE, "close": "rst"}) == 1
    assert get("k8spacket_tcp_connections_closed_total", {**EDGE, "close": "fin"}) == 1


def test_open_gauge_comes_back_down_when_names_change_before_the_close() -> None:
    """The -1 goes to the series of the +1, whatever the final record is named."""
    clock = ManualClock()
    traffic = TrafficMetrics(clock=clock)
    for port in (1, 2, 3):
        traffic.record(rec(close=None, src_port=port, dst_kind="external", dst_workload=""))
    # the organisation (and, for one, the cache) caught up before the connections ended
    for port in (1, 2, 3):
        traffic.record(rec(first=False, src_port=port, dst_kind="external",
                           dst_workload="", dst_org="Telstra"))  # fmt: skip
    registry = CollectorRegistry()
    registry.register(collector(traffic))
    open_series = [
        s.value
        for fam in registry.collect()
        if fam.name == "k8spacket_tcp_open_connections"
        for s in fam.samples
    ]
    assert open_series and sum(open_series) == 0
    assert traffic.open_tracked() == 0
    # back at zero, the series ages out with the TTL (no stale series)
    clock.advance(traffic.ttl + 1)
    assert traffic.expire() > 0
    assert traffic.series_count()["k8spacket_tcp_open_connections"] == 0


def test_a_final_record_without_an_interim_one_leaves_the_gauge_alone() -> None:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record(rec(close=None, src_port=7))
    traffic.record(rec(first=False, src_port=8))  # never counted open: no -1 for port 7
    assert traffic.open_tracked() == 1
    traffic.record(rec(first=False, src_port=7))
    assert traffic.open_tracked() == 0


@pytest.mark.parametrize(
    ("value", "le_in", "le_below"),
    [
        (0.00008, "0.0001", None),
        (0.0001, "0.0001", None),  # le is inclusive
        (0.0004, "0.0005", "0.00025"),
        (1.02, "3.0", "1.0"),  # one SYN retransmission
        (12.0, "+Inf", "10.0"),
    ],
    ids=["80us", "100us-edge", "400us", "syn-retransmit", "beyond-last"],
)
def test_handshake_buckets(value: float, le_in: str, le_below: str | None) -> None:
    get = registry_of(rec(handshake=value)).get_sample_value
    assert get("k8spacket_tcp_handshake_seconds_bucket", {**EDGE, "le": le_in}) == 1
    if le_below is not None:
        assert get("k8spacket_tcp_handshake_seconds_bucket", {**EDGE, "le": le_below}) == 0
    assert get("k8spacket_tcp_handshake_seconds_sum", EDGE) == value


def test_handshake_seen_only_after_a_first_interim_record_is_observed_once() -> None:
    reg = registry_of(
        rec(handshake=None, close=None, first=True),
        rec(handshake=12.5, close=None, first=False),
        rec(handshake=12.5, close="fin", first=False),
    )
    assert reg.get_sample_value("k8spacket_tcp_handshake_seconds_count", EDGE) == 1
    assert reg.get_sample_value("k8spacket_tcp_handshake_seconds_sum", EDGE) == 12.5


def test_other_connections_later_records_do_not_add_handshakes() -> None:
    reg = registry_of(
        rec(handshake=None, close=None, first=True, src_port=1),  # pending
        rec(handshake=0.001, close=None, first=False, src_port=2),  # not pending
        rec(handshake=None, close=None, first=True, outcome="midstream", src_port=3),
        rec(handshake=None, close="fin", first=False, outcome="midstream", src_port=3),
    )
    assert reg.get_sample_value("k8spacket_tcp_handshake_seconds_count", EDGE) is None


@pytest.mark.parametrize(
    ("outcome", "close", "handshake"),
    [("refused", "rst", None), ("unanswered", "idle", None), ("midstream", "fin", None)],
    ids=["refused", "unanswered", "midstream"],
)
def test_failed_connections(outcome: str, close: str, handshake: float | None) -> None:
    get = registry_of(
        rec(outcome=outcome, close=close, handshake=handshake, sent=0, received=0)
    ).get_sample_value
    assert get("k8spacket_tcp_connections_total", {**EDGE, "outcome": outcome}) == 1
    assert get("k8spacket_tcp_connections_closed_total", {**EDGE, "close": close}) == 1
    assert get("k8spacket_tcp_sent_bytes_total", EDGE) == 0
    assert get("k8spacket_tcp_handshake_seconds_count", EDGE) is None


def test_self_metrics_come_from_the_sources() -> None:
    get = registry_of(sources=full_sources()).get_sample_value
    assert get("k8spacket_capture_packets_total", {"interface": "cali0f3e"}) == 320
    assert get("k8spacket_capture_drops_total", {"interface": "cali0f3e"}) == 2
    assert get("k8spacket_capture_interfaces") == 2
    assert get("k8spacket_decode_errors_total", {"reason": "truncated"}) == 3
    assert get("k8spacket_decode_errors_total", {"reason": "not_tcp"}) == 0  # closed set, zeros
    assert get("k8spacket_flows_tracked") == 17
    assert get("k8spacket_flows_evicted_total", {"reason": "idle"}) == 4
    assert get("k8spacket_enrichment_lookups_total", {"source": "whois", "result": "error"}) == 1
    assert get("k8spacket_k8s_watch_events_total", {"resource": "pods"}) == 40
    assert (
        get("k8spacket_build_info", {"version": "0.0.0-test", "python_version": "3.0.0-test"}) == 1
    )


def test_lookup_counts_may_be_keyed_by_pairs() -> None:
    sources = SelfMetricSources(enrichment_lookups=lambda: {("geoip", "hit"): 5})
    get = registry_of(sources=sources).get_sample_value
    assert get("k8spacket_enrichment_lookups_total", {"source": "geoip", "result": "hit"}) == 5


def test_sources_are_read_on_every_scrape() -> None:
    counts = {"veth0": 1}
    reg = registry_of(sources=SelfMetricSources(capture_packets=lambda: dict(counts)))
    assert reg.get_sample_value("k8spacket_capture_packets_total", {"interface": "veth0"}) == 1
    counts["veth0"] = 7
    assert reg.get_sample_value("k8spacket_capture_packets_total", {"interface": "veth0"}) == 7


def test_a_failing_source_leaves_out_its_family_only(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("stats unavailable")

    sources = SelfMetricSources(capture_packets=broken, flows_tracked=lambda: 3)
    with caplog.at_level(logging.ERROR, logger="k8spacket.metrics.collector"):
        reg = registry_of(rec(), sources=sources)
        names = {m.name for m in reg.collect()}
    assert "k8spacket_capture_packets" not in names
    assert reg.get_sample_value("k8spacket_flows_tracked") == 3
    assert "stats unavailable" in caplog.text


def test_unwired_sources_leave_their_families_out() -> None:
    names = {m.name for m in build_registry(None).collect()}
    assert names == {"k8spacket_build_info"}


def test_describe_lets_the_registry_refuse_duplicates() -> None:
    reg = CollectorRegistry()
    reg.register(K8spacketCollector(TrafficMetrics(), full_sources()))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(K8spacketCollector(None, SelfMetricSources(capture_interfaces=lambda: 1)))


def test_tracker_sources() -> None:
    from k8spacket.flows.tracker import ConnectionTracker

    tracker = ConnectionTracker(lambda r: None)
    tracker.evicted["idle"] = 9
    sources = SelfMetricSources().with_tracker(tracker)
    get = registry_of(sources=sources).get_sample_value
    assert get("k8spacket_flows_tracked") == 0
    assert get("k8spacket_flows_evicted_total", {"reason": "idle"}) == 9
    assert get("k8spacket_flows_evicted_total", {"reason": "capacity"}) == 0
