"""Metrics benchmark: scrape time and size, and cardinality under address churn.

Prints, side by side with a reference built from plain prometheus_client
``Counter``/``Histogram``/``Gauge`` objects holding the same label sets:

1. scrape (``generate_latest``) time and exposition size for 10,000 exposed
   series, two ways: 10,000 label sets of one counter family, and 250 label
   sets through all seven traffic families (40 series each: 4 counters,
   2 histograms of 15-16 buckets + sum + count, 1 gauge);
2. ``/metrics`` at the full series budget (10,000 label sets in each of the
   seven traffic families) answered as a real Prometheus 2.42 asks for it
   (its own ``Accept`` header, which prefers OpenMetrics, and gzip): before
   (what the server did: ``generate_latest`` text, no negotiation; and what
   prometheus_client's own negotiation would cost) and after
   (:meth:`ScrapeRegistry.scrape`: negotiated, fast writer), side by side;
3. record throughput and the series count after 1,000,000 records from
   distinct client addresses and ports, with ``src_ip`` and ``src_port``
   switched on (``hideSourcePort: false``) — the worst case — and with the
   default labels; the count must stay within the budget.

Run: ``python bench/metrics_bench.py [--repeat N]``. Figures only; nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import _bake_output

from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.collector import K8spacketCollector, build_registry
from k8spacket.metrics.exposition import PROMETHEUS_2_ACCEPT
from k8spacket.metrics.labels import DEFAULT_LABELS, LabelPolicy
from k8spacket.metrics.traffic import (
    DURATION_BUCKETS,
    FAMILIES,
    HANDSHAKE_BUCKETS,
    SENT,
    TrafficMetrics,
)


def record(i: int, *, ip: int | None = None) -> ConnectionRecord:
    """Record ``i``: a distinct workload pair per ``i`` (or a distinct client address)."""
    src = f"10.{(ip or 0) >> 16 & 255}.{(ip or 0) >> 8 & 255}.{(ip or 0) & 255}"
    return ConnectionRecord(
        src=src,
        src_port=32768 + (i % 28000),
        dst="10.96.0.10",
        dst_port=8080,
        bytes_sent=100 + i % 1000,
        bytes_received=2000,
        handshake_seconds=0.0001 + (i % 50) * 0.00005,
        duration_seconds=0.01 * (1 + i % 500),
        outcome="established",
        close="fin",
        start=0.0,
        end=1.0,
        src_namespace=f"ns{i % 20}",
        src_workload=f"client-{i}" if ip is None else "",
        src_kind="pod" if ip is None else "",
        dst_namespace="shop",
        dst_workload=f"server-{i % 37}",
        dst_kind="service",
    )


def best_of(fn: Callable[[], bytes], repeat: int) -> tuple[float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), size


def count_series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def k8spacket_collector(label_sets: int, *, all_families: bool) -> K8spacketCollector:
    traffic = TrafficMetrics(budget=max(20_000, 2 * label_sets), clock=lambda: 0.0)
    if all_families:
        for i in range(label_sets):
            traffic.record(record(i))
    else:
        values = traffic.policy.values
        for i in range(label_sets):
            traffic.sent.slot(values(record(i)), 0.0)[0] += 100 + i
    return K8spacketCollector(traffic)


def reference_registry(label_sets: int, *, all_families: bool) -> CollectorRegistry:
    reg = CollectorRegistry()
    labels = list(DEFAULT_LABELS)
    sent = Counter("ref_tcp_sent_bytes", "ref", labels, registry=reg)
    values = LabelPolicy().values
    if not all_families:
        for i in range(label_sets):
            sent.labels(*values(record(i))).inc(100 + i)
        return reg
    received = Counter("ref_tcp_received_bytes", "ref", labels, registry=reg)
    conns = Counter("ref_tcp_connections", "ref", [*labels, "outcome"], registry=reg)
    closed = Counter("ref_tcp_connections_closed", "ref", [*labels, "close"], registry=reg)
    hs = Histogram(
        "ref_tcp_handshake_seconds", "ref", labels, registry=reg, buckets=HANDSHAKE_BUCKETS
    )
    dur = Histogram(
        "ref_tcp_connection_duration_seconds", "ref", labels, registry=reg, buckets=DURATION_BUCKETS
    )
    open_ = Gauge("ref_tcp_open_connections", "ref", labels, registry=reg)
    for i in range(label_sets):
        r = record(i)
        v = values(r)
        sent.labels(*v).inc(r.bytes_sent)
        received.labels(*v).inc(r.bytes_received)
        conns.labels(*v, r.outcome).inc()
        closed.labels(*v, "fin").inc()
        hs.labels(*v).observe(r.handshake_seconds or 0.0)
        dur.labels(*v).observe(r.duration_seconds)
        open_.labels(*v).set(0)
    return reg


def scrape_section(repeat: int) -> None:
    print("== scrape, median of", repeat)
    print(f"{'scenario':44} {'what':28} {'series':>7} {'ms':>8} {'bytes':>10}")
    for title, label_sets, all_families in (
        ("10,000 label sets, one counter family", 10_000, False),
        ("250 label sets x all 7 traffic families", 250, True),
        ("2,500 label sets x all 7 traffic families", 2_500, True),
    ):
        c = k8spacket_collector(label_sets, all_families=all_families)
        reg = CollectorRegistry()
        reg.register(c)
        ref = reference_registry(label_sets, all_families=all_families)
        assert c.exposition() == generate_latest(reg)
        for what, fn in (
            ("k8spacket exposition()", c.exposition),
            ("k8spacket generate_latest", lambda reg=reg: generate_latest(reg)),
            ("reference Counter/Histogram", lambda ref=ref: generate_latest(ref)),
        ):
            text = fn()  # type: ignore[operator]
            # the reference also writes *_created samples; count what Prometheus ingests
            created = sum(1 for ln in text.splitlines() if b"_created{" in ln)
            secs, size = best_of(fn, repeat)  # type: ignore[arg-type]
            series = count_series(text) - created
            print(f"{title:44} {what:28} {series:>7} {secs * 1000:8.1f} {size:>10}")


def full_budget_section(repeat: int, label_sets: int = 10_000) -> None:
    print(f"\n== /metrics at the full series budget ({label_sets:,} label sets x 7 families),")
    print(f"   Accept: {PROMETHEUS_2_ACCEPT}")
    traffic = TrafficMetrics(budget=label_sets, clock=lambda: 0.0)
    for i in range(label_sets):
        traffic.record(record(i))
    registry = build_registry(traffic)
    plain = registry.scrape(PROMETHEUS_2_ACCEPT, "")[0]
    series = count_series(plain)
    print(f"{'what':58} {'format':12} {'ms':>8} {'bytes':>11}")
    rows: list[tuple[str, str, Callable[[], bytes]]] = [
        ("before: generate_latest (the old server, no negotiation)", "text 0.0.4",
         lambda: generate_latest(registry)),
        ("before: prometheus_client negotiation (_bake_output)", "OpenMetrics",
         lambda: _bake_output(registry, PROMETHEUS_2_ACCEPT, "", {}, True)[2]),
        ("before: prometheus_client negotiation + gzip", "OM gzip",
         lambda: _bake_output(registry, PROMETHEUS_2_ACCEPT, "gzip", {}, False)[2]),
        ("after: ScrapeRegistry.scrape, text asked", "text 0.0.4",
         lambda: registry.scrape("text/plain;version=0.0.4", "")[0]),
        ("after: ScrapeRegistry.scrape (Prometheus's Accept)", "OpenMetrics",
         lambda: registry.scrape(PROMETHEUS_2_ACCEPT, "")[0]),
        ("after: ScrapeRegistry.scrape + gzip (what Prometheus gets)", "OM gzip",
         lambda: registry.scrape(PROMETHEUS_2_ACCEPT, "gzip")[0]),
    ]  # fmt: skip
    for what, fmt, fn in rows:
        secs, size = best_of(fn, repeat)
        print(f"{what:58} {fmt:12} {secs * 1000:8.1f} {size:>11}")
    print(f"({series:,} samples per scrape)")


def churn_section(n: int) -> None:
    print(f"\n== cardinality: {n:,} records from distinct client addresses and ports")
    print(
        f"{'label policy':44} {'rec/s':>9} {'max family':>10} {'all families':>12} {'overflow':>9} {'RSS MB':>7}"
    )
    for title, policy in (
        ("default labels", LabelPolicy()),
        (
            "src_ip + src_port (hideSourcePort false)",
            LabelPolicy(opt_in=("src_ip", "src_port"), hide_source_port=False),
        ),
    ):
        gc.collect()
        traffic = TrafficMetrics(policy, clock=lambda: 0.0)
        recs = [record(i, ip=i) for i in range(n)]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        for r in recs:
            traffic.record(r)
        secs = time.perf_counter() - t0
        counts = traffic.series_count()
        overflow = sum(traffic.snapshot().overflow.values())
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        print(
            f"{title:44} {n / secs:9.0f} {max(counts.values()):>10} {sum(counts.values()):>12}"
            f" {overflow:>9} {rss:7.0f}"
        )
        assert counts[SENT] <= traffic.sent.limit
        del recs
    print(f"(budget: {10_000:,} label sets per family, {len(FAMILIES)} families)")
    print(
        "reference: a prometheus_client Counter labelled with src_ip and src_port would hold "
        f"{n:,} children per family."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=10_000, help="label sets per family")
    args = parser.parse_args()
    scrape_section(args.repeat)
    full_budget_section(max(1, args.repeat // 2), args.budget)
    churn_section(args.records)


if __name__ == "__main__":
    main()
