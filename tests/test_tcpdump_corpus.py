"""tcpdump's own test captures (830 files, tests/data/tcpdump-tests) through replay.

They are odd on purpose: dozens of link types, malformed headers, fuzzed and
truncated packets, pcapng with several interfaces. The promises under test: every
file either replays or stops with a :class:`CaptureError` (one line), nothing
else is raised, nothing hangs (10 s per file), and the command line never prints
a traceback. For a handful of files with ordinary TCP conversations the
connections and bytes must match an independent oracle: tshark's own TCP
analysis (payload bytes of every segment that is not a retransmission, a
keep-alive or out of order, and its stream count), run on the same file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool
from k8spacket.decode import SKIP_REASONS
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.replay import replay_files

CORPUS = Path(__file__).resolve().parent / "data" / "tcpdump-tests"
FILES = sorted(CORPUS.iterdir())


def test_corpus_is_complete() -> None:
    assert len(FILES) == 830
    assert sum(f.stat().st_size for f in FILES) > 4_000_000


@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["full", "lean"])
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_replays_or_fails_cleanly(path: Path, mode: str) -> None:
    records: list[ConnectionRecord] = []
    tracker = ConnectionTracker(records.append)
    stats = replay_files([str(path)], tracker, capture_mode=mode)  # raises only CaptureError
    assert len(stats.errors) <= 1
    for err in stats.errors:
        assert "\n" not in err and str(path) in err
    assert set(stats.skipped) <= set(SKIP_REASONS.values())
    assert tracker.records == len(records)
    assert all(r.bytes_sent >= 0 and r.bytes_received >= 0 for r in records)
    assert all(r.end >= r.start for r in records)
    assert stats.filtered == 0 or mode == "lean"


#: files whose TCP is ordinary enough for tshark's count to be the truth (chosen
#: to cover IPv4 and IPv6, many connections per file, TSO/GSO and BIG TCP super-frames,
#: TCP Fast Open, MPTCP options, AccECN, resets and midstream starts)
ORACLE_FILES = [
    "ssh.pcap",
    "resp_1_benchmark.pcap",
    "resp_3_malicious.pcap",
    "of10_pf5240.pcap",
    "bgp-bgpsec.pcap",
    "bgp-4byte-asn.pcap",
    "gso-ipv4.pcap",
    "gso-ipv6.pcap",
    "bigtcp-ipv4.pcap",
    "mptcp-v0.pcap",
    "tfo-5c1fa7f9ae91.pcap",
    "accecn_handshake.pcap",
    "kday3.pcap",
    "dns_tcp.pcap",
]

_TSHARK_FILTER = (
    "tcp && !tcp.analysis.retransmission && !tcp.analysis.spurious_retransmission"
    " && !tcp.analysis.keep_alive && !tcp.analysis.out_of_order"
)


def tshark_oracle(path: Path) -> tuple[int, int]:
    """(TCP streams, payload bytes counted once) according to tshark."""
    tshark = require_tool("tshark")
    argv = [tshark, "-n", "-r", str(path), "-Y", _TSHARK_FILTER, "-T", "fields"]
    argv += ["-e", "tcp.stream", "-e", "tcp.len"]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    streams: set[str] = set()
    total = 0
    for line in out.splitlines():
        stream, _, length = line.partition("\t")
        if stream:
            streams.add(stream)
            total += int(length or 0)
    return len(streams), total


@pytest.mark.parametrize("name", ORACLE_FILES, ids=ORACLE_FILES)
def test_connections_and_bytes_match_tshark(name: str) -> None:
    path = CORPUS / name
    records: list[ConnectionRecord] = []
    tracker = ConnectionTracker(records.append)
    stats = replay_files([str(path)], tracker)
    assert stats.errors == []
    streams, payload = tshark_oracle(path)
    assert streams > 0 and payload > 0
    assert tracker.connections == streams
    assert sum(r.bytes_sent + r.bytes_received for r in records) == payload


@pytest.mark.timeout(120)
def test_cli_over_the_whole_corpus() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "k8spacket.cli", "replay", "--format", "table", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert "Traceback" not in p.stderr
    assert p.returncode in (0, 1)
    summary = [line for line in p.stderr.splitlines() if not line.startswith("k8spacket: error:")]
    assert len(summary) == 1
    assert summary[0].startswith("k8spacket: 830 file(s), ")
    # the corpus has public addresses: GeoIP names them, which adds the identity columns
    assert p.stdout.splitlines()[0].split()[:7] == [
        "src",
        "src_workload",
        "sport",
        "dst",
        "dst_workload",
        "dport",
        "country",
    ]
