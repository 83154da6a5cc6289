"""Live capture rate in the network lab: k8spacket's ring reader against tcpdump.

Builds a lab node with two pods, pushes TCP between them with iperf3 (small
writes, no Nagle, so many packets; or a bulk stream with ``--bulk``), and
captures on both pod veths for ``--seconds``:

1. k8spacket: the capture reader (TPACKET_V3 rings, BPF ``tcp`` snap 96,
   exactly-once rule, connection tracker) in a child process in the node
   namespace; it reports packets read, kernel drops and its CPU time;
2. tcpdump ``-s 96 -w /dev/null tcp`` on the same two veths at the same load.

Prints one line per run. Needs root, iperf3 and tcpdump. Usage::

    python bench/live_capture.py [--seconds 10] [--bulk] [--ring 16MiB]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def child(ifaces: list[str], seconds: float, ring: int) -> None:
    """Runs in the node namespace: capture for ``seconds``, print stats as JSON."""
    from k8spacket.capture.bpf import compile_filter
    from k8spacket.capture.local import LocalAddresses
    from k8spacket.capture.reader import CaptureReader
    from k8spacket.capture.ring import PacketRing
    from k8spacket.flows.tracker import ConnectionTracker

    records: list[object] = []
    local = LocalAddresses()
    tracker = ConnectionTracker(records.append, is_local=local.is_local)
    reader = CaptureReader(tracker, local)
    program = compile_filter()
    for name in ifaces:
        reader.attach(PacketRing(name, program, ring_bytes=ring))
    t = threading.Thread(target=reader.run)
    t.start()
    print("ready", flush=True)
    time.sleep(seconds)
    reader.stop()
    t.join()
    stats = reader.interface_stats()
    out = {
        "packets": sum(s.packets for s in stats.values()),
        "kernel": sum(s.kernel_packets for s in stats.values()),
        "drops": sum(s.drops for s in stats.values()),
        "not_owner": sum(s.not_owner for s in stats.values()),
        "records": len(records),
        "interfaces": len(stats),
    }
    print(json.dumps(out), flush=True)


def run_k8spacket(lab, ifaces: list[str], seconds: float, ring: int, load) -> dict[str, float]:  # type: ignore[no-untyped-def]
    argv = lab.node_argv([sys.executable, __file__, "--child", ",".join(ifaces),
                          "--seconds", str(seconds), "--ring", str(ring)])  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()
    load(seconds)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    stats = json.loads(out.strip().splitlines()[-1])
    stats["cpu"] = usage.ru_utime + usage.ru_stime
    return stats  # type: ignore[no-any-return]


def run_tcpdump(lab, ifaces: list[str], seconds: float, load) -> dict[str, float]:  # type: ignore[no-untyped-def]
    procs = []
    for name in ifaces:
        argv = lab.node_argv(["tcpdump", "-i", name, "-s", "96", "-B", "16384", "-w", "/dev/null",
                              "-n", "tcp"])  # fmt: skip
        procs.append(subprocess.Popen(argv, stderr=subprocess.PIPE, text=True))
    time.sleep(1.0)
    load(seconds)
    captured = dropped = received = 0
    cpu = 0.0
    for p in procs:
        p.terminate()
        assert p.stderr is not None
        err = p.stderr.read()
        _, _, usage = os.wait4(p.pid, 0)
        p.returncode = 0
        cpu += usage.ru_utime + usage.ru_stime
        captured += int(re.search(r"(\d+) packets captured", err).group(1))  # type: ignore[union-attr]
        received += int(re.search(r"(\d+) packets received by filter", err).group(1))  # type: ignore[union-attr]
        dropped += int(re.search(r"(\d+) packets dropped by kernel", err).group(1))  # type: ignore[union-attr]
    return {"packets": captured, "kernel": received, "drops": dropped, "cpu": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bulk", action="store_true", help="one bulk stream instead of small writes")
    ap.add_argument("--ring", type=str, default="16MiB", help="ring size per interface")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from k8spacket.config import _size

    ring = _size(a.ring)
    if a.child:
        child(a.child.split(","), a.seconds, ring)
        return 0
    from netlab import NetLab

    with NetLab() as lab:
        pa = lab.add_pod("a", "10.213.1.2/24")
        pb = lab.add_pod("b", "10.213.1.3/24")
        lab.popen_in(pb, ["iperf3", "-s", "-p", "5201"])
        lab.wait_listening(pb, 5201)
        ifaces = [pa.host_if, pb.host_if]
        extra = [] if a.bulk else ["-l", "64", "-N", "-P", "2"]

        def load(seconds: float) -> None:
            lab.run_in(pa, ["iperf3", "-c", pb.ip, "-p", "5201", "-t", str(seconds), *extra],
                       timeout=seconds + 30)  # fmt: skip

        kind = "bulk stream" if a.bulk else "small writes (-l 64 -N -P 2)"
        print(f"load: iperf3 {kind} pod a -> pod b, {a.seconds:g}s; capture on both veths")
        for name, fn in (
            ("k8spacket", lambda: run_k8spacket(lab, ifaces, a.seconds, ring, load)),
            ("tcpdump  ", lambda: run_tcpdump(lab, ifaces, a.seconds, load)),
        ):
            s = fn()
            pps = s["kernel"] / a.seconds
            print(
                f"{name}: offered {pps:,.0f} pkt/s (both veths), captured {s['packets']:,}, "
                f"kernel drops {s['drops']:,}, CPU {100 * s['cpu'] / a.seconds:.0f}% of one core"
                + (
                    f", not_owner {s['not_owner']:,}, records {s['records']}"
                    if "records" in s
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
