"""Conntrack lookup cost: the publisher's raw NFNETLINK client next to the conntrack CLI.

Builds a lab node (tests/netlab) with a kube-proxy-style DNAT rule, makes one
connection through it, then, inside the node namespace, times
``ConntrackClient.original_destination`` for the client's view (found as an
original tuple: one round trip) and the backend's view (not found as original,
found as reply: two round trips), and, as the reference, ``conntrack -G`` (the
conntrack-tools CLI, one process per lookup). Needs root, ``ip``, iptables
and conntrack (scripts/deps.d/30-iptables-conntrack.sh).

Run: ``python bench/conntrack_bench.py [--lookups N]``. Figures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netlab import NetLab, tcptool_argv

INNER = r"""
import json, subprocess, sys, time
from k8spacket.capture.conntrack import ConntrackClient
a, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = ConntrackClient()
out = {}
for name, t in (("client view (1 lookup)", (a, port, "10.96.0.10", 80)),
                ("backend view (2 lookups)", (a, port, "10.213.1.3", 8080))):
    assert c.original_destination(*t) == ("10.96.0.10", 80, "10.213.1.3", 8080), t
    t0 = time.perf_counter()
    for _ in range(n):
        c.original_destination(*t)
    out[name] = (time.perf_counter() - t0) / n
m = max(1, n // 100)
t0 = time.perf_counter()
for _ in range(m):
    subprocess.run(["conntrack", "-G", "-p", "tcp", "-s", a, "-d", "10.96.0.10", "--sport",
                    str(port), "--dport", "80"], capture_output=True, check=True)
out["conntrack -G (CLI, reference)"] = (time.perf_counter() - t0) / m
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lookups", type=int, default=5000)
    n = ap.parse_args().lookups
    with NetLab() as lab:
        a = lab.add_pod("a", "10.213.1.2/24")
        b = lab.add_pod("b", "10.213.1.3/24")
        node = lab.nodes["n1"]
        lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "10"))
        lab.wait_listening(b, 8080)
        lab.run_in(node, ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10", "-p",
                          "tcp", "--dport", "80", "-j", "DNAT", "--to-destination",
                          "10.213.1.3:8080"])  # fmt: skip
        res = json.loads(lab.run_in(a, tcptool_argv("connect", "10.96.0.10", "80")).stdout)
        r = lab.run_in(node, [sys.executable, "-c", INNER, "10.213.1.2", str(res["local_port"]),
                              str(n)])  # fmt: skip
        figures = json.loads(r.stdout)
    print(f"conntrack lookups, {n} each (the CLI: {max(1, n // 100)})")
    for name, seconds in figures.items():
        print(f"  {name:32} {seconds * 1e6:10.1f} µs")


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"(took {time.monotonic() - t0:.1f} s)")
