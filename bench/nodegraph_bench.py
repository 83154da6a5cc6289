"""Node Graph benchmark: answer time of /api/graph/data, and the local store's memory.

Prints, side by side in one run:

1. the time of a whole ``/api/graph/data`` answer for 1,000 nodes and 10,000
   edges from the ``local`` source (store → edges → view → JSON bytes, what the
   HTTP handler does), for each stats type, beside ``json.dumps`` of the same
   answer alone (the reference: serialisation only), the two timed in
   alternation so that a busy host slows both alike. Goals: under 200 ms, at
   most 3x the serialisation. Twice: with the edges' connections all of one
   duration (a few distinct histograms, as edges with few connections have)
   and with every edge's durations spread (``varied``: almost every histogram
   differs, nothing shared between edges);
2. the local store's memory (tracemalloc, after a garbage collection) after
   100,000 and 1,000,000 connections over the same 10,000 edges, and the record
   rate: memory must not depend on the number of connections.

Run: ``python bench/nodegraph_bench.py [--repeat N]``. Figures only; nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc

from k8spacket.flows.record import ConnectionRecord
from k8spacket.nodegraph.api import GraphAPI
from k8spacket.nodegraph.edges import BUCKETS0
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.sources import LocalSource

NODES, EDGES = 1_000, 10_000
NOW = 1_760_000_000.0


def records(
    n: int, nodes: int = NODES, edges: int = EDGES, varied: bool = False
) -> list[ConnectionRecord]:
    """``n`` records spread over ``edges`` (client, server) pairs among ``nodes`` workloads.

    An edge's records all last as long, unless ``varied`` (durations from 0.1 ms to
    about 3 hours, log-uniform at random).
    """
    out = []
    rng = random.Random(42)
    for i in range(n):
        duration = 10 ** (8 * rng.random() - 4) if varied else (i % 100) / 10
        e = i % edges
        a, b = e % nodes, (e * 7 + e // nodes + 1) % nodes
        out.append(
            ConnectionRecord(
                src=f"10.1.{a >> 8}.{a & 255}",
                src_port=32768 + i % 28000,
                dst=f"10.2.{b >> 8}.{b & 255}",
                dst_port=8080 + e // nodes,
                bytes_sent=100 + i % 900,
                bytes_received=1000 + i % 9000,
                handshake_seconds=0.0005,
                duration_seconds=duration,
                outcome="refused" if i % 50 == 0 else "established",
                close="rst" if i % 50 == 0 else "fin",
                start=NOW - 1,
                end=NOW - (i % 600),
                src_name=f"w{a}-pod",
                src_namespace=f"ns{a % 20}",
                src_workload=f"w{a}",
                src_kind="pod",
                dst_name=f"w{b}-pod",
                dst_namespace=f"ns{b % 20}",
                dst_workload=f"w{b}",
                dst_kind="pod",
            )
        )
    return out


def paired(fa: object, fb: object, repeat: int) -> tuple[list[float], list[float]]:
    """Times of ``fa`` and ``fb``, called in alternation ``repeat`` times each."""
    ta, tb = [], []
    for _ in range(repeat):
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t)
    return ta, tb


def answer_time(repeat: int, varied: bool) -> None:
    store = LocalGraphStore(window=3600, bucket=60)
    for r in records(EDGES * (12 if varied else 3), varied=varied):
        store.add(r)
    api = GraphAPI({"local": LocalSource(store)}, "local", store, clock=lambda: NOW)
    histograms = len({st.values[BUCKETS0:].tobytes() for _, _, st in store.edges(0, NOW)})
    print(f"1. /api/graph/data, local source: {store.edge_count()} edges, {NODES} nodes, "
          f"{store.bucket_count()} buckets, {histograms} distinct duration histograms "
          f"({'varied' if varied else 'one duration per edge'}; best / median of {repeat})")  # fmt: skip
    print(
        f"   {'stats type':<11} {'answer ms':>18} {'json.dumps ms':>18} {'ratio':>6} {'bytes':>9}"
    )
    for stats in ("connection", "bytes", "duration"):
        query = f"stats-type={stats}"
        status, _, body = api.data(query)
        doc = json.loads(body)
        assert status == 200 and len(doc["nodes"]) == NODES and len(doc["edges"]) == EDGES
        ta, td = paired(
            lambda q=query: api.data(q),
            lambda d=doc: json.dumps(d, separators=(",", ":")).encode(),
            repeat,
        )
        a_best, a_med, d_best, d_med = (
            min(ta),
            statistics.median(ta),
            min(td),
            statistics.median(td),
        )
        print(f"   {stats:<11} {a_best * 1e3:8.1f} / {a_med * 1e3:7.1f} "
              f"{d_best * 1e3:8.1f} / {d_med * 1e3:7.1f} {a_best / d_best:6.2f} {len(body):9d}")  # fmt: skip


def store_memory() -> None:
    print(f"2. local store memory over {EDGES} edges (window 1h, bucket 1m)")
    print(f"   {'connections':>11} {'store MiB':>10} {'records/s':>10}")
    batch = records(100_000)
    for total in (100_000, 1_000_000):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        store = LocalGraphStore(window=3600, bucket=60)
        t = time.perf_counter()
        for _ in range(total // len(batch)):
            for r in batch:
                store.add(r)
        took = time.perf_counter() - t
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        print(f"   {total:>11,} {used / 2**20:10.1f} {total / took:10,.0f}")
        del store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    answer_time(args.repeat, varied=False)
    answer_time(args.repeat, varied=True)
    store_memory()


if __name__ == "__main__":
    main()
