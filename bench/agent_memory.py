"""Agent memory at the chart's defaults: what ``resources`` in the Helm chart rests on.

Measures the resident set (VmRSS, and the peak VmHWM) of one Python process as it
grows the agent's long-lived state to the default limits:

1. start-up: the modules ``k8spacket run`` imports (agent, Kubernetes client,
   scapy's filter compiler, the external resolver) and the bundled GeoLite2-City
   database opened and queried;
2. the connection tracker full: ``tracker.maxConnections`` (default 500,000)
   connections open at once, half IPv4 and half IPv6, fed as decoded SYN,
   SYN-ACK, ACK packets (the decoder's own output on synthetic frames);
3. the traffic metrics full: more distinct workload pairs than the series
   budget (default 10,000 label sets per family, 7 families), then one scrape
   (the exposition text is built in memory, the peak of a scrape);
4. the connection store full (``http.connectionStore``, 10,000 records).

With ``--rings`` (root), it also opens two 256 MiB capture rings on ``lo`` and
prints what they add to the resident set and to this process's memory cgroup
(what a container's memory limit counts): the kernel allocates ring blocks
without charging them to the cgroup, so they show in RSS but not in the limit.

Printed side by side with a reference: the same process with nothing but the
imports (stage 1). The Kubernetes cache is not filled here: docs/kubernetes.md
measures it at about 1.2 MB per 1,000 pods (``bench/k8s_cache.py``); add that for the
cluster's size.

Run: ``python bench/agent_memory.py [--connections N] [--budget N] [--rings]``. Figures only.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8spacket.decode import decode_ethernet
from k8spacket.flows.record import ConnectionRecord
from synth import ACK, SYN, _frame


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    got: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(rest.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


def start_up() -> None:
    import k8spacket.agent
    import k8spacket.cli
    import k8spacket.enrich.external
    import k8spacket.enrich.k8s
    import k8spacket.server  # noqa: F401
    from k8spacket.capture.bpf import compile_filter

    compile_filter("tcp", 96)


def open_geoip() -> None:
    """Open the bundled GeoLite2-City and look a few thousand addresses up (pages touched)."""
    from k8spacket.enrich.geoip import GeoIPDatabase

    db = GeoIPDatabase()
    for i in range(5000):
        db.lookup(str(ipaddress.IPv4Address(0x01000000 + i * 700_001)))
    _KEEP.append(db)


_KEEP: list[object] = []


def syn_handshake(i: int, v6: bool) -> list[bytes]:
    """SYN, SYN-ACK, ACK of connection ``i`` (distinct client address and port)."""
    if v6:
        cli = ipaddress.IPv6Address(0xFD00 << 112 | 0x10000 + i).packed
        srv = ipaddress.IPv6Address(0xFD00 << 112 | 1 + i % 50).packed
    else:
        cli = ipaddress.IPv4Address(0x0A000000 + 0x10000 + i).packed
        srv = ipaddress.IPv4Address(0x0A640000 + 1 + i % 50).packed
    sport, dport, c, s = 32768 + i % 28000, 8080, (i * 2654435761) & 0xFFFFFFFF, 7
    return [
        _frame(v6, cli, srv, sport, dport, c, 0, SYN, 0)[0],
        _frame(v6, srv, cli, dport, sport, s, c + 1, SYN | ACK, 0)[0],
        _frame(v6, cli, srv, sport, dport, c + 1, s + 1, ACK, 0)[0],
    ]


def fill_tracker(n: int) -> object:
    from k8spacket.flows.tracker import ConnectionTracker

    records: list[ConnectionRecord] = []
    tracker = ConnectionTracker(records.append, max_connections=n, close_older_than=3600.0,
                                flush_period=3600.0)  # fmt: skip
    t = 1_700_000_000.0
    for i in range(n):
        for frame in syn_handshake(i, v6=i % 2 == 1):
            d = decode_ethernet(frame, 0, len(frame), len(frame))
            assert not isinstance(d, int)
            tracker.add(t, d)
        t += 1e-6
    assert len(tracker.table) == n, len(tracker.table)
    return tracker


def fill_metrics(budget: int) -> object:
    from k8spacket.metrics.collector import build_registry
    from k8spacket.metrics.traffic import TrafficMetrics

    traffic = TrafficMetrics(budget=budget)
    for i in range(budget + budget // 10):
        traffic.record(
            ConnectionRecord(
                src="10.1.0.1",
                src_port=40000,
                dst="10.2.0.1",
                dst_port=8080 + i % 3,
                bytes_sent=100,
                bytes_received=2000,
                handshake_seconds=0.0002,
                duration_seconds=0.5,
                outcome="established",
                close="fin",
                start=0.0,
                end=1.0,
                src_namespace=f"ns{i % 40}",
                src_workload=f"client-{i}",
                src_kind="pod",
                dst_namespace="shop",
                dst_workload=f"server-{i % 97}",
                dst_kind="service",
            )
        )
    from prometheus_client import generate_latest

    text = generate_latest(build_registry(traffic))
    print(f"    (scrape: {len(text) / 1e6:.1f} MB of exposition text)")
    return traffic


def fill_store(n: int) -> object:
    from k8spacket.nodegraph.store import ConnectionStore

    store = ConnectionStore(n)
    for i in range(n):
        store.add(
            ConnectionRecord(
                src=f"10.1.{i >> 8 & 255}.{i & 255}",
                src_port=40000 + i % 20000,
                dst="10.2.0.1",
                dst_port=8080,
                bytes_sent=100,
                bytes_received=2000,
                handshake_seconds=0.0002,
                duration_seconds=0.5,
                outcome="established",
                close="fin",
                start=float(i),
                end=float(i) + 1,
                src_namespace="shop",
                src_workload=f"client-{i % 500}",
                src_kind="pod",
                dst_namespace="shop",
                dst_workload="cart",
                dst_kind="service",
                dst_name="cart",
            )
        )
    return store


def memory_cgroup_usage() -> int | None:
    """Bytes charged to this process's memory cgroup (v2 or v1), if readable."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for candidate in (
            Path(f"/sys/fs/cgroup{path}/memory.current") if controllers == "" else None,
            Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
            if "memory" in controllers.split(",")
            else None,
        ):
            if candidate is not None and candidate.is_file():
                return int(candidate.read_text())
    return None


def rings_stage() -> None:
    from k8spacket.capture.bpf import compile_filter
    from k8spacket.capture.ring import PacketRing

    program = compile_filter("tcp", 96)
    before_rss, before_cg = rss_mib()[0], memory_cgroup_usage()
    rings = [PacketRing("lo", program, ring_bytes=256 << 20) for _ in range(2)]
    time.sleep(0.3)
    after_rss, after_cg = rss_mib()[0], memory_cgroup_usage()
    cg = (
        f"{(after_cg - before_cg) / 2**20:+.0f} MiB"
        if before_cg is not None and after_cg is not None
        else "not readable"
    )
    print(
        f"    (2 x 256 MiB rings on lo: RSS {after_rss - before_rss:+.0f} MiB, "
        f"memory cgroup {cg}; other processes in the cgroup add noise)"
    )
    for ring in rings:
        ring.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=500_000)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--store", type=int, default=10_000)
    ap.add_argument("--rings", action="store_true", help="also measure capture rings (root)")
    args = ap.parse_args()

    base = rss_mib()[0]
    print(f"{'stage':<44} {'RSS MiB':>8} {'+MiB':>7} {'peak MiB':>9} {'s':>6}")
    print(f"{'python, nothing imported (reference)':<44} {base:8.1f} {0:7.1f} {base:9.1f}")
    keep: list[object] = []
    last = base
    stages = (
        ("imports of k8spacket run", start_up),
        ("bundled GeoLite2-City opened and queried", open_geoip),
        (f"tracker: {args.connections:,} open connections",
         lambda: keep.append(fill_tracker(args.connections))),
        (f"metrics: budget {args.budget:,} x 7 families + a scrape",
         lambda: keep.append(fill_metrics(args.budget))),
        (f"connection store: {args.store:,} records", lambda: keep.append(fill_store(args.store))),
    )  # fmt: skip
    for name, fn in stages:
        t0 = time.perf_counter()
        fn()
        gc.collect()
        rss, peak = rss_mib()
        print(
            f"{name:<44} {rss:8.1f} {rss - last:7.1f} {peak:9.1f} {time.perf_counter() - t0:6.1f}"
        )
        last = rss
    rss, peak = rss_mib()
    print(
        f"total resident {rss:.0f} MiB, peak {peak:.0f} MiB (a memory limit needs headroom above the peak)"
    )
    if args.rings:
        rings_stage()


if __name__ == "__main__":
    main()
