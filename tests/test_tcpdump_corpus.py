"""tcpdump's own test captures (830 files, tests/data/tcpdump-tests) through replay.

They are odd on purpose: dozens of link types, malformed headers, fuzzed and
truncated packets, pcapng with several interfaces. The promise under test: every
file either replays or stops with a :class:`CaptureError` (one line), nothing
else is raised, nothing hangs, and the command line never prints a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_replays_or_fails_cleanly(path: Path) -> None:
    records: list[ConnectionRecord] = []
    tracker = ConnectionTracker(records.append)
    stats = replay_files([str(path)], tracker)  # raises anything but CaptureError
    assert len(stats.errors) <= 1
    for err in stats.errors:
        assert "\n" not in err and str(path) in err
    assert stats.packets == stats.tcp_packets + sum(stats.skipped.values())
    assert set(stats.skipped) <= set(SKIP_REASONS.values())
    assert tracker.records == len(records)
    assert all(r.bytes_sent >= 0 and r.bytes_received >= 0 for r in records)
    assert all(r.end >= r.start for r in records)


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
