"""The tracker's sliced sweep: what one pass costs the capture thread, slice by slice.

The live capture calls :meth:`ConnectionTracker.sweep_step` once per loop turn;
a pass over the table is a series of slices of ``SWEEP_SLICE`` entries. Printed
for a table of N established connections (their first records already out, so
the pass only walks; and a pass where every connection has new bytes, so each
slice stops at ``SWEEP_EMIT`` records):

* the whole pass, the number of slices, the first slice and the longest one;
* beside them, the reference: copying the table's keys (``list(table)``), the
  work a pass used to start with before the tracker kept its own order of
  connections (the first slice then cost that much more);
* a full table making room for 5% more connections: the longest ``add`` and
  the total, in steps, beside the whole-table scan that ended 5% at once
  (``_evict_exact``, still used for tables of up to 4,096).

Run: ``python bench/sweep_pass.py [--connections 500000] [--repeat 3]``. Figures only.
"""

from __future__ import annotations

import argparse
import statistics
import time

from k8spacket.flows.tracker import ACK, SYN, ConnectionTracker

SERVER = (10 << 24 | 200 << 16 | 1) << 16 | 80


def filled(n: int) -> ConnectionTracker:
    """``n`` established connections, their first records out, swept at 6 s."""
    t = ConnectionTracker(
        lambda r: None, close_older_than=120, flush_period=5, max_connections=2 * n
    )
    t.sweep_in_add = False
    add = t.add
    for i in range(n):
        sport = 32768 + (i & 0x3FFF)
        client = (10 << 24 | 100 << 16 | (i >> 14)) << 16 | sport
        key, rev = client << 48 | SERVER, SERVER << 48 | client
        add(0.0, (key, 48, sport, 80, 1000, 0, SYN, 0))
        add(0.0, (rev, 48, 80, sport, 5000, 1001, SYN | ACK, 0))
        add(0.0, (key, 48, sport, 80, 1001, 5001, ACK, 0))
    t.sweep(6.0)
    return t


def one_pass(t: ConnectionTracker, now: float) -> tuple[float, int, float, float]:
    """(whole pass, slices, first slice, longest slice), seconds."""
    t.next_sweep = now
    slices: list[float] = []
    t0 = time.perf_counter()
    while True:
        s0 = time.perf_counter()
        more = t.sweep_step(now)
        slices.append(time.perf_counter() - s0)
        if not more:
            break
    return time.perf_counter() - t0, len(slices), slices[0], max(slices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.connections
    t = filled(n)
    rows: dict[str, list[tuple[float, int, float, float]]] = {"walk": [], "emit": []}
    copies: list[float] = []
    now = 7.0
    for _ in range(args.repeat):
        s0 = time.perf_counter()
        keys = list(t.table)
        copies.append(time.perf_counter() - s0)
        del keys
        rows["walk"].append(one_pass(t, now))  # nothing due: every connection reported at 6 s
        now += 6.0
        for conn in t.table.values():  # new bytes everywhere: every connection due
            conn.client_bytes = 1
        rows["emit"].append(one_pass(t, now))
        now += 6.0
    print(f"sliced sweep over {n:,} connections, median of {args.repeat}")
    print(f"  {'pass':<28}{'whole ms':>10}{'slices':>8}{'first ms':>10}{'max ms':>8}")
    for name, label in (("walk", "nothing due (walk only)"), ("emit", "all due (a record each)")):
        r = rows[name]
        print(
            f"  {label:<28}{1000 * statistics.median(x[0] for x in r):>10.0f}"
            f"{statistics.median(x[1] for x in r):>8.0f}"
            f"{1000 * statistics.median(x[2] for x in r):>10.2f}"
            f"{1000 * statistics.median(x[3] for x in r):>8.2f}"
        )
    print(
        f"  reference: copying the table's {n:,} keys (the old pass start) "
        f"{1000 * statistics.median(copies):.2f} ms"
    )
    room(n)


def room(n: int) -> None:
    """A full table of ``n`` makes room for new connections: per add, longest and in all."""
    import random

    rng = random.Random(3)

    def full() -> ConnectionTracker:
        t = filled(n)
        t.max_connections = n
        for conn in t.table.values():  # activity unlike arrival order
            conn.last = rng.random()
        return t

    t = full()
    new = n // 20
    adds: list[float] = []
    t0 = time.perf_counter()
    for i in range(new):
        sport = 1024 + (i & 0x3FFF)
        client = (10 << 24 | 101 << 16 | (i >> 14)) << 16 | sport
        s0 = time.perf_counter()
        t.add(2.0, (client << 48 | SERVER, 48, sport, 80, 1, 0, SYN, 0))
        adds.append(time.perf_counter() - s0)
    total = time.perf_counter() - t0
    print(f"a full table of {n:,} making room for {new:,} new connections")
    print(
        f"  in steps (now): {1000 * total:.0f} ms in all, longest add {1000 * max(adds):.2f} ms, "
        f"{t.evicted['capacity']:,} ended"
    )
    t = full()
    s0 = time.perf_counter()
    t._evict_exact(n // 20)
    print(
        f"  reference: the whole-table scan (before; still used up to 4,096 entries) "
        f"{1000 * (time.perf_counter() - s0):.0f} ms at once, {t.evicted['capacity']:,} ended"
    )


if __name__ == "__main__":
    main()
