"""What external naming costs the tracker, in instructions (repeatable on a busy machine).

``bench/enrichment_bench.py`` times the tracker with and without naming; on a
shared 2-core VM those timings drift by tens of percent between rounds. This
script counts CPU instructions instead, with ``valgrind --tool=callgrind``,
which gives the same count for the same work whatever else the machine does.
It runs the same traffic (``--connections`` connections, each to its own
public address, six packets each) through ``ConnectionTracker.add`` in four
modes, each in its own process under callgrind:

* ``setup``: everything but the loop (packets built, resolver built), the baseline;
* ``plain``: the loop with a sink that does nothing;
* ``named``: the loop with ``ExternalResolver.name_record`` as the sink, no
  background threads (the caller's path only);
* ``threads``: the same with the GeoIP and registry stages running (bundled
  GeoLite2-City, no registry).

and prints instructions per connection for the loop, and naming's share.

    python bench/enrichment_callgrind.py [--connections 10000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"


def workload(mode: str, connections: int) -> None:
    """The measured program (run under callgrind by :func:`main`)."""
    sys.path.insert(0, str(TESTS))
    from fixtures.external_traffic import decoded_packets
    from k8spacket.enrich.external import ExternalResolver
    from k8spacket.enrich.geoip import GeoIPDatabase
    from k8spacket.flows.record import ConnectionRecord
    from k8spacket.flows.tracker import ConnectionTracker

    packets = decoded_packets(connections)

    def nothing(rec: ConnectionRecord) -> None:
        return None

    resolver = ExternalResolver(geoip=GeoIPDatabase(), start=mode == "threads")
    sink = nothing if mode in ("setup", "plain") else resolver.name_record
    tracker = ConnectionTracker(sink)
    if mode != "setup":
        add = tracker.add
        for ts, d in packets:
            add(ts, d)
    resolver.close(1.0)


def count(mode: str, connections: int, outdir: str) -> int:
    out = Path(outdir) / f"callgrind.{mode}"
    p = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--run",
            mode,
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Collected : (\d+)", p.stderr)
    if m is None:
        raise SystemExit(f"no instruction count from callgrind for {mode}:\n{p.stderr[-2000:]}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--run", choices=("setup", "plain", "named", "threads"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        workload(args.run, args.connections)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 1
    n = args.connections
    with tempfile.TemporaryDirectory(prefix="k8spacket-callgrind-") as tmp:
        counts = {mode: count(mode, n, tmp) for mode in ("setup", "plain", "named", "threads")}
    base = counts["setup"]
    plain = (counts["plain"] - base) / n
    print(f"{n} connections, 6 packets each, every one to a new public address")
    print(f"plain tracker:           {plain:>10,.0f} instructions per connection")
    for mode in ("named", "threads"):
        cost = (counts[mode] - base) / n
        print(
            f"with naming ({mode + '):':<9}{cost:>10,.0f} instructions per connection "
            f"(naming {cost - plain:,.0f}, {cost / plain - 1:+.1%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
