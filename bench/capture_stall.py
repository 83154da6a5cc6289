"""Capture-thread stall: the longest time between ring drains under load, before and after.

The capture thread must drain the rings at least every block timeout (20 ms):
a longer stall fills the ring and the kernel drops packets. This benchmark
runs the real agent (in-process, in a lab node namespace, capturing the two
pods' veths while one pod streams small TCP writes to the other, about 1,000
segments a second, so a block is handed over at least every block timeout),
with

* 500,000 open connections in the tracker (synthetic handshakes fed to the
  tracker before the run; the reader's old owner table, scanned whole on every
  sweep, is gone from the code and not emulated in "before"). By default
  their first records are published before the run (the steady state of a
  node with that many open connections); ``--burst`` leaves them to fall due
  during it (500,000 new connections within seconds, which the publisher
  names beside the capture thread). Conntrack is off (the
  lab's one connection is not NATed);
* the traffic families filled to the full series budget (10,000 label sets in
  each of the seven families);
* a thread scraping ``/metrics`` back to back for the whole run;

and records the time of every ring drain (a wrapper around the reader's
``_drain``). Three runs, one after the other, in one process:

* **idle**: the agent as built now with no connections and no scrape: the
  floor this machine gives (other processes share its cores);
* **before**: records are named, stored and counted on the capture thread
  (the tracker's sink does it at once, as the agent did before the publisher
  thread), the tracker's timer sweeps the whole table in one call, the
  garbage collector is left as it is, and the scrape is ``generate_latest``
  (text 0.0.4, no negotiation);
* **after**: the agent as built now (its own record path), and the scrape is
  what Prometheus 2.42 gets: :meth:`ScrapeRegistry.scrape` with its ``Accept``
  header and gzip.

Printed per design: drains, the longest gap between two drains, p99, gaps
longer than 20 ms, the sweep calls and the longest one (the tracker's timer
runs on the capture thread: a whole sweep before, a slice of one now), scrapes
done, kernel drops, and the cyclic garbage collector's passes during the run
(full ones: how many and the longest; the longest young one). Figures only;
nothing is asserted.

Run as root: ``python bench/capture_stall.py [--connections 500000] [--seconds 12]
[--designs idle,before,after] [--burst]``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import select
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

STREAM = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(b"x" * 200)
    time.sleep(0.001)
"""


# ---------------------------------------------------------------- the child
class TimedSweeps:
    """The tracker as the reader sees it, with every sweep (or sweep slice) timed.

    The tracker has ``__slots__``, so its methods cannot be wrapped in place.
    """

    def __init__(self, tracker: Any, times: list[float], whole: bool = False) -> None:
        object.__setattr__(self, "_tracker", tracker)
        object.__setattr__(self, "_times", times)
        object.__setattr__(self, "_whole", whole)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tracker, name, value)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        s0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._times.append((s0, time.perf_counter() - s0))

    def sweep(self, now: float) -> None:
        self._timed(self._tracker.sweep, now)

    def sweep_step(self, now: float, *args: Any) -> Any:
        if self._whole:  # the old timer: the whole table in one call when due
            if now >= self._tracker.next_sweep:
                self._timed(self._tracker.sweep, now)
            return False
        return self._timed(self._tracker.sweep_step, now, *args)


class TimedEpoll:
    """``select.epoll`` for the capture loop, with the time it spends away from ``poll``.

    Between two ``poll`` calls the loop drains, sweeps and counts, or waits for
    the interpreter lock: a block the kernel hands over meanwhile waits that
    long. Records ``(returned, called again)`` of every turn.
    """

    def __init__(self, busy: list[tuple[float, float]]) -> None:
        self._ep = select.epoll()
        self._busy = busy
        self._out = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ep, name)

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        t_in = time.perf_counter()
        if self._out:
            self._busy.append((self._out, t_in))
        try:
            return self._ep.poll(timeout)
        finally:
            self._out = time.perf_counter()


def fill_tracker(agent: Any, n: int) -> None:
    """``n`` established connections 10.100.x.y:port → 10.200.0.1:80 in the tracker."""
    from k8spacket.flows.tracker import ACK, SYN

    add = agent.tracker.add
    server = (10 << 24 | 200 << 16 | 1) << 16 | 80
    now = time.time()
    for i in range(n):
        client = (10 << 24 | 100 << 16 | (i >> 14)) << 16 | (32768 + (i & 0x3FFF))
        key = client << 48 | server
        rev = server << 48 | client
        sport, dport = 32768 + (i & 0x3FFF), 80
        add(now, (key, 48, sport, dport, 1000, 0, SYN, 0))
        add(now, (rev, 48, dport, sport, 5000, 1001, SYN | ACK, 0))
        add(now, (key, 48, sport, dport, 1001, 5001, ACK, 0))


def fill_metrics(agent: Any, label_sets: int) -> None:
    from metrics_bench import record

    for i in range(label_sets):
        agent.traffic.record(record(i))


def run_design(
    design: str, connections: int, seconds: float, port: int, burst: bool = False
) -> dict[str, Any]:
    from prometheus_client import generate_latest

    from k8spacket.agent import Agent
    from k8spacket.config import load_settings
    from k8spacket.metrics.exposition import PROMETHEUS_2_ACCEPT
    from k8spacket.supervise import Supervisor

    settings = load_settings(
        sets=["kubernetes.enabled=false", "enrichment.geoip.enabled=false",
              "tracker.flushPeriod=5s", "tracker.closeOlderThan=120s",
              "tracker.maxConnections=1000000", "capture.conntrack=false"],
        listen=f"127.0.0.1:{port}",
    )  # fmt: skip
    agent = Agent(settings, supervisor=Supervisor())
    idle = design == "idle"
    if idle:
        connections = 0
    else:
        fill_metrics(agent, settings.metrics.series_budget)
    t0 = time.perf_counter()
    fill_tracker(agent, connections)
    fill_secs = time.perf_counter() - t0

    if design == "before":
        # the old record path: name, store and count on the capture thread, at once
        is_local = agent.local.is_local

        def publish_now(rec: Any) -> None:
            rec.reporter = (
                "client" if is_local(rec.src) else "server" if is_local(rec.dst) else None
            )
            for namer in agent.namers:
                namer(rec)
            agent.store.add(rec)
            agent.traffic.record(rec)

        agent.tracker.sink = publish_now
        agent._gc_loop = lambda: None  # type: ignore[method-assign]  # no gc.freeze() then
        scrape: Callable[[], bytes] = lambda: generate_latest(agent.registry)  # noqa: E731
    else:
        scrape = lambda: agent.registry.scrape(PROMETHEUS_2_ACCEPT, "gzip")[0]  # noqa: E731

    warm_secs = 0.0
    if connections and not burst:
        # steady state: every connection's first record is published (named,
        # stored, counted) before the run, on this thread; with --burst they all
        # fall due during it instead: 500,000 new connections at once
        t0 = time.perf_counter()
        sink = agent.tracker.sink
        if design != "before":
            agent.tracker.sink = agent.publisher.publish
        agent.tracker.sweep(time.time() + settings.tracker.flush_period)  # all due
        agent.tracker.sink = sink
        warm_secs = time.perf_counter() - t0

    drains: list[float] = []
    original_drain = agent.reader._drain

    def timed_drain(ring: Any) -> None:
        drains.append(time.perf_counter())
        original_drain(ring)

    agent.reader._drain = timed_drain
    # the loop's epoll timed (only the reader module sees the wrapper)
    busy: list[tuple[float, float]] = []
    import k8spacket.capture.reader as reader_module

    reader_module.select = types.SimpleNamespace(  # type: ignore[assignment]
        **{k: getattr(select, k) for k in dir(select) if k.startswith("EPOLL")},
        epoll=lambda: TimedEpoll(busy),
    )
    sweeps: list[tuple[float, float]] = []  # (start, seconds)
    agent.reader.tracker = TimedSweeps(agent.tracker, sweeps, whole=design == "before")
    agent.start()
    if design == "before":
        sys.setswitchinterval(0.005)  # the interpreter's default, as before the agent set it
    deadline = time.monotonic() + 300  # "before": the first whole sweep holds the capture thread
    while (
        agent.reader.interfaces != sorted(agent.reader.interfaces)
        or len(agent.reader.interfaces) < 2
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"interfaces never opened: {agent.reader.interfaces}")
        time.sleep(0.05)

    scrapes: list[tuple[float, float]] = []  # (start, seconds)
    stop = threading.Event()
    # the cyclic collector's passes (any thread; it holds the interpreter lock):
    # (generation, start, seconds, thread)
    collections: list[tuple[int, float, float, str]] = []
    gc_started = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            t0 = gc_started[0]
            name = threading.current_thread().name
            collections.append((info["generation"], t0, time.perf_counter() - t0, name))

    gc.callbacks.append(gc_timer)

    def scraper() -> None:
        while not stop.is_set():
            s0 = time.perf_counter()
            scrape()
            scrapes.append((s0, time.perf_counter() - s0))

    scraping = threading.Thread(target=scraper, daemon=True)
    start = time.perf_counter()
    drains.clear()
    busy.clear()
    sweeps.clear()
    if not idle:
        scraping.start()
    collections.clear()
    time.sleep(seconds)
    stop.set()
    end = time.perf_counter()
    gc.callbacks.remove(gc_timer)
    # only the passes that began inside the measured window
    collections = [c for c in collections if start <= c[1] <= end]
    full = [t for g, _, t, _ in collections if g == 2]
    window = [t for t in drains if start <= t <= end]
    # a stall already going on at the start (or still at the end) counts too
    spans = list(itertools.pairwise([start, *window, end]))
    gaps = [b - a for a, b in spans]
    turns = [(a, b) for a, b in busy if start <= a and b <= end]
    turns.sort(key=lambda s: s[0] - s[1])
    busiest = [explain(a, b, collections, sweeps, scrapes) for a, b in turns[:3]]
    longest = [
        explain(a, b, collections, sweeps, scrapes)
        for a, b in sorted(spans, key=lambda s: s[0] - s[1])[:3]
    ]
    stats = agent.reader.interface_stats()
    drops = sum(s.drops for s in stats.values())
    agent.stop()
    agent.shutdown()
    if not idle:
        scraping.join(60)
    gaps.sort()
    return {
        "design": design,
        "fill_seconds": fill_secs,
        "warm_seconds": warm_secs,
        "tracked": connections,
        "drains": len(window),
        "max_gap_ms": 1000 * gaps[-1] if gaps else float("nan"),
        "p99_gap_ms": 1000 * gaps[int(0.99 * (len(gaps) - 1))] if gaps else float("nan"),
        "median_gap_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "gaps_over_20ms": sum(1 for g in gaps if g > 0.020),
        "sweeps": len(sweeps),
        "max_sweep_ms": 1000 * max((t for _, t in sweeps), default=0.0),
        "scrapes": len(scrapes),
        "scrape_ms": 1000 * statistics.median(t for _, t in scrapes) if scrapes else float("nan"),
        "kernel_drops": drops,
        "gc_full": len(full),
        "gc_full_max_ms": 1000 * max(full, default=0.0),
        "gc_young_max_ms": 1000 * max((t for g, _, t, _ in collections if g < 2), default=0.0),
        "longest": longest,
        "busiest": busiest,
        "max_busy_ms": 1000 * (turns[0][1] - turns[0][0]) if turns else float("nan"),
        "busy_over_20ms": sum(1 for a, b in turns if b - a > 0.020),
    }


def explain(
    a: float,
    b: float,
    collections: list[tuple[int, float, float, str]],
    sweeps: list[tuple[float, float]],
    scrapes: list[tuple[float, float]],
) -> str:
    """One gap between drains, and what ran during it: GC passes, sweeps, a scrape."""

    def overlap(s0: float, dur: float) -> float:
        return max(0.0, min(b, s0 + dur) - max(a, s0))

    parts = [
        f"gen{g} GC {1000 * t:.1f} ms on {name}"
        for g, s0, t, name in collections
        if overlap(s0, t) > 0.0005
    ]
    swept = sum(overlap(s0, t) for s0, t in sweeps)
    if swept > 0.0005:
        parts.append(f"sweeps {1000 * swept:.1f} ms")
    if any(overlap(s0, t) > 0 for s0, t in scrapes):
        parts.append("a scrape")
    return f"{1000 * (b - a):.1f} ms: " + (", ".join(parts) or "nothing of these")


DESIGNS = ("idle", "before", "after")


def child(connections: int, seconds: float, port: int, designs: list[str], burst: bool) -> None:
    for design in designs:
        print(json.dumps(run_design(design, connections, seconds, port, burst)), flush=True)
        gc.collect()


# --------------------------------------------------------------- the parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500_000)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--designs", default=",".join(DESIGNS),
                        help="which runs, comma-separated (default: %(default)s)")  # fmt: skip
    parser.add_argument("--burst", action="store_true",
                        help="the connections' first records fall due during the run "
                             "(default: published before it, the steady state)")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=16676, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.designs.split(",")) - set(DESIGNS)
    if unknown:
        parser.error(
            f"--designs: unknown {', '.join(sorted(unknown))} (known: {', '.join(DESIGNS)})"
        )
    if args.child:
        child(args.connections, args.seconds, args.port, args.designs.split(","), args.burst)
        return

    from netlab import NetLab

    with NetLab() as lab:
        a = lab.add_pod("a", "10.213.1.2/24")
        b = lab.add_pod("b", "10.213.1.3/24")
        lab.popen_in(b, [sys.executable, str(HERE.parent / "tests" / "netlab" / "tcptool.py"),
                         "serve", "--port", "8080"])  # fmt: skip
        lab.wait_listening(b, 8080)
        total = 2 * (args.seconds + 120)
        lab.popen_in(a, [sys.executable, "-c", STREAM, "10.213.1.3", "8080", str(total)])
        proc = lab.popen_in(
            lab.nodes["n1"],
            [sys.executable, __file__, "--child", "--connections", str(args.connections),
             "--seconds", str(args.seconds), "--designs", args.designs,
             *(["--burst"] if args.burst else [])],
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log and errors go to ours
        )  # fmt: skip
        out, _ = proc.communicate(timeout=1800)
    rows = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    print(
        f"capture-thread stall, {args.connections:,} open connections "
        f"({'first records due during the run' if args.burst else 'first records published before'}), "
        f"full-budget scrape running, {args.seconds:g}s each"
    )
    cols = [
        ("design", "design", "{}"),
        ("drains", "drains", "{}"),
        ("max gap ms", "max_gap_ms", "{:.1f}"),
        ("p99 gap ms", "p99_gap_ms", "{:.1f}"),
        ("median ms", "median_gap_ms", "{:.1f}"),
        (">20ms", "gaps_over_20ms", "{}"),
        ("max busy ms", "max_busy_ms", "{:.1f}"),
        ("busy >20ms", "busy_over_20ms", "{}"),
        ("sweep calls", "sweeps", "{}"),
        ("max sweep ms", "max_sweep_ms", "{:.1f}"),
        ("scrapes", "scrapes", "{}"),
        ("scrape ms", "scrape_ms", "{:.0f}"),
        ("kernel drops", "kernel_drops", "{}"),
        ("full GCs", "gc_full", "{}"),
        ("max full GC", "gc_full_max_ms", "{:.1f}"),
        ("max young GC", "gc_young_max_ms", "{:.1f}"),
    ]
    print("  ".join(f"{title:>12}" for title, _, _ in cols))
    for row in rows:
        print("  ".join(f"{fmt.format(row[key]):>12}" for _, key, fmt in cols))
    for row in rows:
        print(f"{row['design']}: the longest gaps and what overlapped them")
        for line in row["longest"]:
            print(f"    {line}")
        print(f"{row['design']}: the longest turns away from poll and what overlapped them")
        for line in row["busiest"]:
            print(f"    {line}")
    print("goal: no gap longer than the block timeout (20 ms)")


if __name__ == "__main__":
    main()
