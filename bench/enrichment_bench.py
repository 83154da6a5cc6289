"""Tracker throughput with and without external naming (prints figures; asserts nothing).

100,000 connections, each to its own public address (every tenth IPv6), six
packets each, decoded once up front; the timed loop is ``ConnectionTracker.add``
with a sink that either does nothing or calls ``ExternalResolver.name_record``
(packaged GeoLite2-City, a registry that answers after 2 s, default queue and
cache sizes). Runs alternate plain/enriched ``--rounds`` times and the medians
are compared: the goal is enriched within 10% of plain.

    python bench/enrichment_bench.py [--connections 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.external_traffic import decoded_packets
from k8spacket.enrich.external import ExternalResolver
from k8spacket.enrich.geoip import GeoIPDatabase
from k8spacket.enrich.whois import RegistryAnswer, RegistryResult
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker


class SlowRegistry:
    def __init__(self) -> None:
        self.stop = threading.Event()

    def lookup(self, ip: str) -> RegistryResult:
        self.stop.wait(2.0)
        return RegistryResult(RegistryAnswer(f"Org of {ip}", "ZZ", 64512), [("rdap", "ok")])


def run(packets: list, enrich: bool) -> tuple[float, dict[tuple[str, str], int]]:
    records = [0]
    resolver = None
    registry = SlowRegistry()
    if enrich:
        resolver = ExternalResolver(geoip=GeoIPDatabase(), registry=registry)
        name = resolver.name_record

        def sink(rec: ConnectionRecord) -> None:
            name(rec)
            records[0] += 1
    else:

        def sink(rec: ConnectionRecord) -> None:
            records[0] += 1

    tracker = ConnectionTracker(sink)
    add = tracker.add
    t0 = time.perf_counter()
    for ts, d in packets:
        add(ts, d)
    elapsed = time.perf_counter() - t0
    counts: dict[tuple[str, str], int] = {}
    if resolver is not None:
        registry.stop.set()
        counts = resolver.counts.snapshot()
        resolver.close(2.0)
    return len(packets) / elapsed, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    packets = decoded_packets(args.connections)
    plain: list[float] = []
    enriched: list[float] = []
    for i in range(args.rounds):
        rate, _ = run(packets, False)
        plain.append(rate)
        rate, counts = run(packets, True)
        enriched.append(rate)
        print(f"round {i + 1}: plain {plain[-1]:,.0f} pkt/s, enriched {rate:,.0f} pkt/s; {counts}")
    p, e = statistics.median(plain), statistics.median(enriched)
    print(f"median: plain {p:,.0f} pkt/s, enriched {e:,.0f} pkt/s ({(e - p) / p:+.1%})")
    print(f"per connection: {(1 / e - 1 / p) * 6 * 1e6:.2f} µs of naming (6 packets each)")


if __name__ == "__main__":
    main()
