"""Live capture cost in the network lab: k8spacket full and lean modes against tcpdump.

Builds a lab node with two pods and captures on both pod veths (every pod-to-pod
packet crosses both) while the same load runs again for each capturer:

1. ``k8spacket full``: the capture reader (TPACKET_V3 rings with the default
   4 MiB, BPF ``tcp`` snap 96, exactly-once rule, connection tracker) in a
   child process in the node namespace;
2. ``k8spacket lean``: the same with the lean BPF program (SYN/FIN/RST and
   64 KiB sequence-boundary crossings; no warm-up);
3. ``tcpdump -s 96 -w /dev/null tcp`` on the same two veths.

Loads: ``iperf3`` small writes (``-l 64 -N -P 2``: the most packets per second
this VM pushes through a veth pair; ``--bulk`` for one bulk stream), then many
small connections (a Python client making one short RPC per connection, as fast
as it can). Per run it prints: packets offered (the veths' own counters, both
veths), packets read, kernel drops, CPU share of one core while capturing, and
whether the tracker's byte counts equal what iperf3 reports per stream (plus
its 37-byte stream cookie); for the
RPC load, CPU microseconds per connection. Needs root, iperf3 and tcpdump::

    python bench/live_capture.py [--seconds 10] [--bulk] [--lean-boundary 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

RPC_CLIENT = r"""
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + secs
n = 0
while time.monotonic() < end:
    s = socket.create_connection((host, port))
    s.sendall(b"q" * 100)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    n += 1
print(n)
"""


def child(ifaces: list[str], mode: str, boundary: int) -> None:
    """Runs in the node namespace: capture until a line on stdin, print stats as JSON."""
    from k8spacket.capture.bpf import capture_programs
    from k8spacket.capture.local import LocalAddresses
    from k8spacket.capture.reader import CaptureReader
    from k8spacket.capture.ring import PacketRing
    from k8spacket.flows.record import ConnectionRecord
    from k8spacket.flows.tracker import ConnectionTracker

    records: list[ConnectionRecord] = []
    local = LocalAddresses()
    tracker = ConnectionTracker(records.append, is_local=local.is_local, lean=mode == "lean")
    first, lean = capture_programs(mode, boundary=boundary)
    reader = CaptureReader(tracker, local, lean_program=lean, lean_warmup=0.0)
    for name in ifaces:
        reader.attach(PacketRing(name, first))
    t = threading.Thread(target=reader.run)
    t.start()
    while len(reader.interfaces) < len(ifaces):
        time.sleep(0.01)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    sys.stdin.readline()
    reader.stop()
    t.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = reader.interface_stats()
    sent: dict[int, int] = {}
    for r in records:
        sent[r.src_port] = sent.get(r.src_port, 0) + r.bytes_sent
    out = {
        "packets": sum(s.packets for s in stats.values()),
        "drops": sum(s.drops for s in stats.values()),
        "connections": tracker.connections,
        "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "sent_by_port": sent,
    }
    print(json.dumps(out), flush=True)


def veth_packets(lab: Any, ifaces: list[str]) -> int:
    """rx + tx packets of the node-side veths (what the kernel offered to capture)."""
    total = 0
    for name in ifaces:
        out = subprocess.run(
            ["ip", "-n", lab.nodes["n1"].netns, "-j", "-s", "link", "show", "dev", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        st = json.loads(out)[0]["stats64"]
        total += st["rx"]["packets"] + st["tx"]["packets"]
    return total


Load = Callable[[float], dict[str, Any]]


def run_k8spacket(
    lab: Any, ifaces: list[str], mode: str, seconds: float, load: Load, boundary: int
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", ",".join(ifaces), "--mode", mode]
    argv = lab.node_argv([*argv, "--lean-boundary", str(boundary)])
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    p.stdout.readline()
    before = veth_packets(lab, ifaces)
    result = load(seconds)
    offered = veth_packets(lab, ifaces) - before
    time.sleep(0.5)  # the last FINs and ACKs
    p.stdin.write("stop\n")
    p.stdin.flush()
    stats: dict[str, Any] = json.loads(p.stdout.read().strip().splitlines()[-1])
    p.wait()
    stats.update(offered=offered, load=result, wall=seconds)
    return stats


def run_tcpdump(lab: Any, ifaces: list[str], seconds: float, load: Load) -> dict[str, Any]:
    procs = []
    for name in ifaces:
        argv = lab.node_argv(["tcpdump", "-i", name, "-s", "96", "-B", "16384", "-w", "/dev/null",
                              "-n", "tcp"])  # fmt: skip
        procs.append(subprocess.Popen(argv, stderr=subprocess.PIPE, text=True))
    time.sleep(1.0)
    before = veth_packets(lab, ifaces)
    result = load(seconds)
    offered = veth_packets(lab, ifaces) - before
    time.sleep(0.5)
    captured = dropped = 0
    cpu = 0.0
    for p in procs:
        p.terminate()
        assert p.stderr is not None
        err = p.stderr.read()
        _, _, usage = os.wait4(p.pid, 0)
        p.returncode = 0
        cpu += usage.ru_utime + usage.ru_stime
        captured += int(re.search(r"(\d+) packets captured", err).group(1))  # type: ignore[union-attr]
        dropped += int(re.search(r"(\d+) packets dropped by kernel", err).group(1))  # type: ignore[union-attr]
    return {"packets": captured, "drops": dropped, "cpu": cpu, "offered": offered,
            "load": result, "wall": seconds + 1.5}  # fmt: skip


#: iperf3 opens every data stream with a 37-byte cookie it does not count in its report
IPERF3_COOKIE = 37


def exact(stats: dict[str, Any]) -> str:
    """Are the tracker's bytes per iperf3 data stream what went over the wire?

    iperf3 reports what its client wrote (``sent``; data still in the socket
    when the stream is reset never leaves) and what its server read
    (``received``); the bytes on the wire lie between the two.
    """
    streams = stats["load"].get("streams")
    if not streams or "sent_by_port" not in stats:
        return ""
    got = {int(k): v for k, v in stats["sent_by_port"].items()}
    ok = all(lo + IPERF3_COOKIE <= got.get(port, -1) <= hi + IPERF3_COOKIE
             for port, (lo, hi) in streams.items())  # fmt: skip
    if ok:
        return ", bytes exact (between iperf3's received and sent)"
    return f", bytes DIFFER: {got} vs iperf3 (received, sent) {streams}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bulk", action="store_true", help="one bulk stream instead of small writes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--lean-boundary", type=int, default=1 << 16, help="lean mode's boundary")
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child.split(","), a.mode, a.lean_boundary)
        return 0
    from netlab import NetLab, tcptool_argv

    with NetLab() as lab:
        pa = lab.add_pod("a", "10.213.1.2/24")
        pb = lab.add_pod("b", "10.213.1.3/24")
        lab.popen_in(pb, ["iperf3", "-s", "-p", "5201"])
        # one server port per run: the client's ports of a run sit in TIME_WAIT for a
        # minute, and reusing the same 4-tuples would throttle the next run
        rpc_ports = iter(range(8080, 8083))
        for port in range(8080, 8083):
            lab.popen_in(pb, tcptool_argv("serve", "--port", str(port), "--reply", "100"))
        lab.wait_listening(pb, 5201)
        for port in range(8080, 8083):
            lab.wait_listening(pb, port)
        ifaces = [pa.host_if, pb.host_if]
        extra = [] if a.bulk else ["-l", "64", "-N", "-P", "2"]

        def iperf(seconds: float) -> dict[str, Any]:
            r = lab.run_in(pa, ["iperf3", "-J", "-c", pb.ip, "-p", "5201", "-t", str(seconds),
                                *extra], timeout=seconds + 30)  # fmt: skip
            j = json.loads(r.stdout)
            ports = {c["socket"]: c["local_port"] for c in j["start"]["connected"]}
            streams = {
                ports[s["sender"]["socket"]]: (s["receiver"]["bytes"], s["sender"]["bytes"])
                for s in j["end"]["streams"]
            }
            return {"streams": streams}

        def rpcs(seconds: float) -> dict[str, Any]:
            port = str(next(rpc_ports))
            r = lab.run_in(pa, [sys.executable, "-c", RPC_CLIENT, pb.ip, port, str(seconds)],
                           timeout=seconds + 30)  # fmt: skip
            return {"connections": int(r.stdout.strip())}

        lb = a.lean_boundary
        kind = "bulk stream" if a.bulk else "small writes (-l 64 -N -P 2)"
        print(f"load 1: iperf3 {kind} pod a -> pod b, {a.seconds:g}s; capture on both veths")
        runs: list[tuple[str, Callable[[Load], dict[str, Any]]]] = [
            ("k8spacket full", lambda ld: run_k8spacket(lab, ifaces, "full", a.seconds, ld, lb)),
            ("k8spacket lean", lambda ld: run_k8spacket(lab, ifaces, "lean", a.seconds, ld, lb)),
            ("tcpdump       ", lambda ld: run_tcpdump(lab, ifaces, a.seconds, ld)),
        ]
        for name, fn in runs:
            s = fn(iperf)
            print(
                f"  {name}: offered {s['offered'] / a.seconds:,.0f} pkt/s, read {s['packets']:,} "
                f"of {s['offered']:,}, kernel drops {s['drops']:,}, "
                f"CPU {100 * s['cpu'] / s['wall']:.1f}% of one core" + exact(s)
            )
        print(f"load 2: short RPC connections (100 B each way) pod a -> pod b, {a.seconds:g}s")
        for name, fn in runs:
            s = fn(rpcs)
            n = s["load"]["connections"]
            print(
                f"  {name}: {n / a.seconds:,.0f} connections/s, offered {s['offered']:,} pkts, "
                f"read {s['packets']:,}, kernel drops {s['drops']:,}, "
                f"CPU {100 * s['cpu'] / s['wall']:.1f}% of one core, "
                f"{1e6 * s['cpu'] / max(n, 1):.0f} us CPU per connection"
                + (f", tracked {s['connections']:,}" if "connections" in s else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
