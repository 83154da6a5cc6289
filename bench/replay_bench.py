"""Replay throughput against tshark, and memory per open connection.

Run: ``python bench/replay_bench.py`` (``--packets``, ``--connections``,
``--open`` and ``--repeat`` scale it; defaults are the issue's: 1,000,000 packets
over 10,000 connections, IPv4 and IPv6 mixed, and 1,000,000 connections open at
once). Prints, in one run on the same file:

* packets/s per CPU-second of ``k8spacket replay`` (whole command: start-up,
  file reading, decode, tracking, JSON output to /dev/null) and of the in-process
  read + decode + track loop alone;
* the same loop with the lean capture filter applied (``--capture-mode lean``),
  and whether it found the same byte totals;
* packets/s per CPU-second of ``tshark -q -z conv,tcp`` on the same file, and the
  ratios;
* bytes of memory per tracked connection with ``--open`` connections open at
  once (tracemalloc), beside a reference that keeps the same state as a plain
  dict per connection.

Ratios are what to read: this is a shared 2-core VM and absolute times drift.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8spacket.decode import decoder_for
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.replay import replay_files
from synth import write_capture


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_child(argv: list[str]) -> float:
    """CPU seconds (user + system) a command used."""
    before = child_cpu()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return child_cpu() - before


def in_process(path: str, mode: str = "full") -> tuple[float, int, int, int]:
    """CPU seconds of read + decode + track, and the byte totals found."""
    sent = received = 0

    def sink(rec: ConnectionRecord) -> None:
        nonlocal sent, received
        sent += rec.bytes_sent
        received += rec.bytes_received

    tracker = ConnectionTracker(sink)
    t0 = time.process_time()
    stats = replay_files([path], tracker, capture_mode=mode)
    return time.process_time() - t0, stats.packets, sent, received


def memory_per_connection(n: int) -> tuple[float, float]:
    """tracemalloc bytes per open connection: the tracker, and a plain-dict reference."""
    dec = decoder_for(1)
    eth4 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    eth6 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"

    def frame(i: int, reply: bool, flags: int, seq: int, ack: int, plen: int) -> bytes:
        sport, dport = 1024 + i % 60000, 443 + (i // 60000) % 100
        if reply:
            sport, dport = dport, sport
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
        if i % 2:
            a = (0xFD00 << 112 | 0x10000 + i).to_bytes(16, "big")
            b = (0xFD00 << 112 | 7).to_bytes(16, "big")
            if reply:
                a, b = b, a
            return eth6 + struct.pack("!IHBB16s16s", 6 << 28, 20 + plen, 6, 64, a, b) + tcp
        a4, b4 = (0x0A000000 + i).to_bytes(4, "big"), b"\x0a\x64\x00\x01"
        if reply:
            a4, b4 = b4, a4
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + plen, 0, 0x4000, 64, 6, 0, a4, b4)
        return eth4 + ip + tcp

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracker = ConnectionTracker(lambda r: None, max_connections=n + 1)
    ts = 1_700_000_000.0
    for i in range(n):
        c_isn, s_isn = (i * 2654435761) & 0xFFFFFFFF, (i * 40503) & 0xFFFFFFFF
        for reply, flags, seq, ack, plen in (
            (False, 0x02, c_isn, 0, 0),
            (True, 0x12, s_isn, c_isn + 1, 0),
            (False, 0x10, c_isn + 1, s_isn + 1, 0),
            (False, 0x18, c_isn + 1, s_isn + 1, 300),
            (True, 0x18, s_isn + 1, c_isn + 301, 1400),
        ):
            f = frame(i, reply, flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, plen)
            tracker.add(ts, dec(f, 0, len(f), len(f) + plen))  # type: ignore[arg-type]
        ts += 1e-6
    assert len(tracker.table) == n, len(tracker.table)
    ours = (tracemalloc.get_traced_memory()[0] - base) / n
    del tracker
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    # Reference: the same per-connection state kept the obvious way.
    ref: dict[tuple[str, int, str, int], dict[str, object]] = {}
    for i in range(n):
        ref[(f"10.0.{i >> 8 & 255}.{i & 255}", 1024 + i % 60000, "10.100.0.1", 443)] = {
            "state": 7,
            "c_next": 3_000_000_000 + i,
            "s_next": 3_100_000_000 + i,
            "sent": 300 + i % 7,
            "received": 1400 + i % 5,
            "start": ts + i,
            "last": ts + i,
            "handshake": 0.001 + i * 1e-9,
            "reported": ts + i,
        }
    reference = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    return ours, reference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--open", type=int, default=1_000_000, help="connections open at once")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (median kept)")
    ap.add_argument("--dir", default=None, help="where to write the synthetic capture")
    args = ap.parse_args()

    tshark = shutil.which("tshark")
    k8spacket = shutil.which("k8spacket")
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="k8spacket-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pcap = str(workdir / "synthetic.pcap")
    t0 = time.time()
    expected = write_capture(pcap, args.packets, args.connections)
    n = expected["packets"]
    print(
        f"capture: {n} packets, {args.connections} connections (IPv4+IPv6), "
        f"{os.path.getsize(pcap) / 1e6:.1f} MB, written in {time.time() - t0:.1f}s"
    )

    ours_cmd: list[float] = []
    ours_loop: list[float] = []
    ours_lean: list[float] = []
    lean_same = True
    theirs: list[float] = []
    for _ in range(args.repeat):
        cpu, packets, sent, received = in_process(pcap)
        if (packets, sent, received) != (n, expected["bytes_sent"], expected["bytes_received"]):
            print(f"MISMATCH: got {(packets, sent, received)}, expected {expected}")
            return 1
        ours_loop.append(n / cpu)
        cpu, _, lean_sent, lean_received = in_process(pcap, "lean")
        ours_lean.append(n / cpu)
        lean_same &= (lean_sent, lean_received) == (sent, received)
        if k8spacket:
            ours_cmd.append(n / run_child([k8spacket, "replay", "--no-summary", pcap]))
        if tshark:
            theirs.append(n / run_child([tshark, "-r", pcap, "-q", "-z", "conv,tcp"]))

    med = statistics.median
    print(f"k8spacket read+decode+track (in-process): {med(ours_loop):>10,.0f} packets/CPU-s")
    print(
        f"  the same, lean filter applied:          {med(ours_lean):>10,.0f} packets/CPU-s "
        f"(byte totals {'equal' if lean_same else 'DIFFERENT'})"
    )
    if ours_cmd:
        print(f"k8spacket replay (whole command, jsonl):  {med(ours_cmd):>10,.0f} packets/CPU-s")
    if theirs:
        print(f"tshark -q -z conv,tcp (whole command):    {med(theirs):>10,.0f} packets/CPU-s")
        print(f"ratio in-process loop / tshark:  {med(ours_loop) / med(theirs):.2f}x")
        if ours_cmd:
            print(f"ratio whole command / tshark:    {med(ours_cmd) / med(theirs):.2f}x")
    else:
        print("tshark not installed: no reference figure (apt-get install tshark)")

    if args.open:
        ours_mem, ref_mem = memory_per_connection(args.open)
        print(
            f"memory per open connection at {args.open:,} open: {ours_mem:.0f} bytes "
            f"(reference plain dict per connection: {ref_mem:.0f} bytes)"
        )
    if not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
