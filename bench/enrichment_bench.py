"""Tracker throughput with and without external naming (prints figures; asserts nothing).

100,000 connections, each to its own public address (every tenth IPv6), six
packets each, decoded once up front; the timed loop is ``ConnectionTracker.add``
with a sink that either does nothing or calls ``ExternalResolver.name_record``
(packaged GeoLite2-City, a registry that answers after 2 s, default queue, cache
and duty settings). Every address is new, so every record takes the resolver's
first-sight path and the GeoIP stage always has work: the worst case.

Each round runs both, plain and enriched, in alternating order (plain first in odd
rounds), and measures each run by wall time and by the CPU time of the whole
process (``time.process_time``: the packet loop plus the resolver's background
threads), so a background stage that merely moves work off the timed thread
still shows (the share of a core those threads used is printed per round).
Reported: the median rates, the median of the per-round ratios
enriched/plain (each round's pair ran back to back, so load from other processes
that comes and goes over seconds partly cancels in it), and the best rates (other
load only ever slows a run down, so on a shared machine the best of several runs
is the steadiest estimate, as with ``timeit``). The goal is a ratio of at least
0.90 by both measures. Compare figures from one run only (the machine is
shared).

Last, the caller's path alone (``start=False``: no background threads, the
hand-off fills and the rest are counted drops), timed by the main thread's CPU
clock in chunks of 500 connections that alternate between a plain and a naming
tracker, so that both see the same load from other processes: the least noisy
figure of what naming costs the packet path itself.

    python bench/enrichment_bench.py [--connections 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.external_traffic import decoded_packets
from k8spacket.decode import Decoded
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


class Run:
    """One timed pass: packets per wall second and per process-CPU second, and the
    share of one core the other threads (the resolver's stages) used meanwhile."""

    def __init__(self, packets: int, wall: float, cpu: float, main_cpu: float) -> None:
        self.wall_rate = packets / wall
        self.cpu_rate = packets / cpu
        self.background = max(0.0, cpu - main_cpu) / wall


def run(
    packets: list[tuple[float, Decoded]], geoip: GeoIPDatabase | None
) -> tuple[Run, dict[tuple[str, str], int]]:
    records = [0]
    resolver = None
    registry = SlowRegistry()
    if geoip is not None:
        resolver = ExternalResolver(geoip=geoip, registry=registry)
        name = resolver.name_record

        def sink(rec: ConnectionRecord) -> None:
            name(rec)
            records[0] += 1
    else:

        def sink(rec: ConnectionRecord) -> None:
            records[0] += 1

    tracker = ConnectionTracker(sink)
    add = tracker.add
    gc.collect()
    c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    for ts, d in packets:
        add(ts, d)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    main_cpu = time.thread_time() - m0
    counts: dict[tuple[str, str], int] = {}
    if resolver is not None:
        registry.stop.set()
        resolver.close(2.0)
        counts = resolver.counts.snapshot()
    assert records[0] == len(packets) // 6, records
    return Run(len(packets), wall, cpu, main_cpu), counts


def caller_only(packets: list[tuple[float, Decoded]], geoip: GeoIPDatabase) -> None:
    resolver = ExternalResolver(geoip=geoip, start=False)
    trackers = {
        "plain": ConnectionTracker(lambda rec: None),
        "named": ConnectionTracker(resolver.name_record),
    }
    cpu = {"plain": 0.0, "named": 0.0}
    step = 500 * 6
    for n, i in enumerate(range(0, len(packets), step)):
        chunk = packets[i : i + step]
        for which in ("plain", "named") if n % 2 == 0 else ("named", "plain"):
            add = trackers[which].add
            c0 = time.thread_time()
            for ts, d in chunk:
                add(ts, d)
            cpu[which] += time.thread_time() - c0
    conns = len(packets) / 6
    p, e = cpu["plain"] / conns * 1e6, cpu["named"] / conns * 1e6
    print(
        f"caller path alone (interleaved chunks): plain {p:.2f} µs, named {e:.2f} µs "
        f"per connection; naming {e - p:.2f} µs ({p / e - 1:+.1%} throughput)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    packets = decoded_packets(args.connections)
    geoip = GeoIPDatabase()
    plain: list[Run] = []
    enriched: list[Run] = []
    for i in range(args.rounds):
        counts: dict[tuple[str, str], int] = {}
        for enrich in (False, True) if i % 2 == 0 else (True, False):
            r, c = run(packets, geoip if enrich else None)
            (enriched if enrich else plain).append(r)
            counts = c or counts
        p, e = plain[-1], enriched[-1]
        print(
            f"round {i + 1}: plain {p.wall_rate:,.0f} pkt/s wall, {p.cpu_rate:,.0f} pkt/CPU-s; "
            f"enriched {e.wall_rate:,.0f} pkt/s wall, {e.cpu_rate:,.0f} pkt/CPU-s "
            f"(background threads {e.background:.1%} of a core); {dict(sorted(counts.items()))}"
        )
    for label, attr in (("wall", "wall_rate"), ("CPU ", "cpu_rate")):
        p = statistics.median(getattr(r, attr) for r in plain)
        e = statistics.median(getattr(r, attr) for r in enriched)
        ratios = [getattr(b, attr) / getattr(a, attr) for a, b in zip(plain, enriched, strict=True)]
        ratio = statistics.median(ratios)
        print(
            f"median {label}: plain {p:,.0f}, enriched {e:,.0f} pkt/s; "
            f"paired ratio {ratio:.3f} ({ratio - 1:+.1%}; rounds: "
            f"{', '.join(f'{x:.3f}' for x in ratios)}); "
            f"naming costs {(1 / e - 1 / p) * 6 * 1e6:.2f} µs per connection (6 packets)"
        )
        p, e = max(getattr(r, attr) for r in plain), max(getattr(r, attr) for r in enriched)
        print(f"best   {label}: plain {p:,.0f}, enriched {e:,.0f} pkt/s; ratio {e / p:.3f}")
    caller_only(packets, geoip)
    geoip.close()


if __name__ == "__main__":
    main()
