"""``k8spacket replay`` end to end, as a user runs it: a subprocess per case.

Checks what a person sees: the records on stdout, the summary line on stderr,
one ``k8spacket: error: …`` line and exit 1 for a file that cannot be read (with
the records read before the problem still printed), exit 2 and argparse's
message for a bad option, and never a traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k8spacket.flows.record import FIELD_NAMES

GEN = Path(__file__).resolve().parent / "data" / "gen"
DESIGN_FIELDS = {
    "src",
    "src_port",
    "dst",
    "dst_port",
    "bytes_sent",
    "bytes_received",
    "handshake_seconds",
    "duration_seconds",
    "outcome",
    "close",
    "start",
    "end",
}


def k8spacket(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "k8spacket.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr
    assert "Traceback" not in p.stdout


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("k8spacket: error:")]


def test_jsonl_records_have_design_fields() -> None:
    p = k8spacket("replay", GEN / "fin_close.pcap")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert set(r) >= DESIGN_FIELDS
    assert set(r) == set(FIELD_NAMES)
    assert (r["src"], r["src_port"], r["dst"], r["dst_port"]) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (r["bytes_sent"], r["bytes_received"], r["outcome"], r["close"]) == (
        100,
        300,
        "established",
        "fin",
    )
    assert r["handshake_seconds"] == pytest.approx(0.0004, abs=1e-6)


@pytest.mark.parametrize(
    ("files", "opts", "summary"),
    [
        (
            ["fin_close.pcap"],
            [],
            "1 file(s), 10 packets, 10 TCP, 1 connections, 1 records; skipped: none",
        ),
        (
            ["not_tcp.pcap"],
            [],
            "1 file(s), 6 packets, 0 TCP, 0 connections, 0 records; skipped: not_ip=1, not_tcp=5",
        ),
        (
            ["fragments.pcap", "not_tcp.pcap"],
            [],
            "2 file(s), 23 packets, 9 TCP, 1 connections, 1 records; "
            "skipped: fragment=8, not_ip=1, not_tcp=5",
        ),
        (
            ["capacity.pcap"],
            ["--max-connections", "3"],
            "1 file(s), 25 packets, 25 TCP, 5 connections, 5 records; skipped: none; evicted: capacity=2",
        ),
        (
            ["unanswered.pcap"],
            [],
            "1 file(s), 10 packets, 10 TCP, 3 connections, 3 records; skipped: none; evicted: idle=1",
        ),
        (
            ["unanswered.pcap"],
            ["--close-older-than", "1m"],
            "1 file(s), 10 packets, 10 TCP, 3 connections, 3 records; skipped: none",
        ),
        (
            ["interim.pcap"],
            [],
            "1 file(s), 14 packets, 14 TCP, 1 connections, 4 records; skipped: none",
        ),
        (
            ["interim.pcap"],
            ["--flush-period", "1h"],
            "1 file(s), 14 packets, 14 TCP, 1 connections, 1 records; skipped: none",
        ),
        (
            ["standard.pcapng", "standard.pcap.gz"],
            [],
            "2 file(s), 18 packets, 18 TCP, 2 connections, 2 records; skipped: none",
        ),
        (
            ["lean_transfer.pcap"],
            ["--capture-mode", "lean"],
            "1 file(s), 425 packets, 425 TCP, 1 connections, 3 records; skipped: none; "
            "lean filter left out: 418",
        ),
        (
            ["lean_transfer.pcap"],
            ["--capture-mode", "lean", "--lean-boundary", "4096"],
            "1 file(s), 425 packets, 425 TCP, 1 connections, 4 records; skipped: none; "
            "lean filter left out: 348",
        ),
    ],
    ids=[
        "one-file",
        "skipped-by-reason",
        "two-files",
        "capacity-eviction",
        "idle-eviction",
        "longer-idle-timeout",
        "interim",
        "long-flush-period",
        "pcapng-and-gzip",
        "lean",
        "lean-4k-boundary",
    ],
)
def test_summary_line(files: list[str], opts: list[str], summary: str) -> None:
    p = k8spacket("replay", *opts, *(GEN / f for f in files))
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [f"k8spacket: {summary}"]


@pytest.mark.parametrize("name", ["fin_close.pcap", "rst_window.pcap", "lean_transfer.pcap",
                                  "port_reuse.pcap", "snap96.pcap"])  # fmt: skip
def test_lean_mode_closed_connections_equal_full(name: str) -> None:
    """Both modes on one file: every connection seen from SYN to close has the same totals."""
    totals = {}
    for mode in ("full", "lean"):
        p = k8spacket("replay", "--capture-mode", mode, "--no-geoip", GEN / name)
        assert p.returncode == 0, p.stderr
        sums: dict[tuple[object, ...], list[object]] = {}
        for line in p.stdout.splitlines():
            r = json.loads(line)
            key = (r["src"], r["src_port"], r["dst"], r["dst_port"], r["start"])
            acc = sums.setdefault(key, [0, 0, None, None])
            acc[0] += r["bytes_sent"]  # type: ignore[operator]
            acc[1] += r["bytes_received"]  # type: ignore[operator]
            acc[2], acc[3] = r["outcome"], r["close"]
        totals[mode] = {k: v for k, v in sums.items() if v[3] in ("fin", "rst")}
    assert totals["full"] and totals["lean"] == totals["full"]


def test_table_format() -> None:
    p = k8spacket("replay", "--format", "table", GEN / "refused.pcap", GEN / "fin_close.pcap")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines()]
    assert rows == [
        [
            "src",
            "sport",
            "dst",
            "dport",
            "sent",
            "received",
            "handshake",
            "duration",
            "outcome",
            "close",
        ],
        ["10.0.0.1", "40000", "10.0.0.2", "81", "0", "0", "-", "0.000100", "refused", "rst"],
        [
            "10.0.0.1",
            "40000",
            "10.0.0.2",
            "80",
            "100",
            "300",
            "0.000400",
            "0.003200",
            "established",
            "fin",
        ],
    ]


def test_prom_format() -> None:
    p = k8spacket("replay", "--format", "prom", GEN / "fin_close.pcap")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    sent = [
        line for line in p.stdout.splitlines() if line.startswith("k8spacket_tcp_sent_bytes_total{")
    ]
    assert len(sent) == 1
    assert sent[0].endswith(" 100.0")


def truncated_copy(src: Path, dst: Path, cut_from_end: int) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - cut_from_end])
    return dst


def test_truncated_pcap_prints_records_before_the_cut(tmp_path: Path) -> None:
    # fin_close.pcap minus the last 30 bytes: the final ACK (record 10) is cut
    path = truncated_copy(GEN / "fin_close.pcap", tmp_path / "cut.pcap", 30)
    p = k8spacket("replay", path)
    no_traceback(p)
    assert p.returncode == 1
    records = [json.loads(line) for line in p.stdout.splitlines()]
    # both FINs were seen: the bytes are all there, the connection was never ACKed closed
    assert [(r["bytes_sent"], r["bytes_received"]) for r in records] == [(100, 300)]
    errors = error_lines(p.stderr)
    assert len(errors) == 1
    assert "truncated after 9 packets" in errors[0]
    assert str(path) in errors[0]
    assert "9 packets" in p.stderr.splitlines()[0]


def test_truncated_pcapng_is_an_error(tmp_path: Path) -> None:
    path = truncated_copy(GEN / "standard.pcapng", tmp_path / "cut.pcapng", 40)
    p = k8spacket("replay", path)
    no_traceback(p)
    assert p.returncode == 1
    assert len(error_lines(p.stderr)) == 1
    assert len(p.stdout.splitlines()) == 1  # the one connection, from the packets before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is not a capture\n", "not a pcap or pcapng capture"),
        (b"", "empty or too short"),
        (b"\xd4\xc3", "empty or too short"),
        (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic", "gzip"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated file header"),
        (
            b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00"
            + bytes(8)
            + b"\x00\x00\x04\x00\x01\x00\x00\x00"
            + b"\x00" * 8
            + b"\xff\xff\xff\x00"
            + b"\x00" * 4,
            "corrupt record",
        ),
        (b"\x0a\x0d\x0d\x0a" + bytes(24), "pcapng"),
    ],
    ids=["text", "empty", "two-bytes", "broken-gzip", "short-header", "huge-caplen", "bad-pcapng"],
)
def test_unreadable_file_is_one_error_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    p = k8spacket("replay", "--no-summary", path)
    no_traceback(p)
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"k8spacket: error: {path}: ")
    assert message in lines[0]
    assert p.stdout == ""


@pytest.mark.parametrize("fmt", ["jsonl", "table", "prom"])
@pytest.mark.parametrize("name", ["missing.pcap", "."], ids=["missing-file", "directory"])
def test_cannot_open_is_one_line_before_any_output(tmp_path: Path, name: str, fmt: str) -> None:
    p = k8spacket("replay", "--format", fmt, GEN / "fin_close.pcap", tmp_path / name)
    no_traceback(p)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        f"k8spacket: error: {tmp_path / name}: cannot open: "
        + ("No such file or directory" if name != "." else "Is a directory")
    ]


@pytest.mark.parametrize("name", ["standard.pcap.gz", "standard.pcapng.gz"])
def test_cut_gzip_capture_salvages_the_records_before_the_cut(tmp_path: Path, name: str) -> None:
    """A gzipped capture cut short (a copy interrupted) gives the records of the packets
    before the cut, exactly as the same bytes uncompressed and cut do, plus one error."""
    import zlib

    data = (GEN / name).read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    plain = tmp_path / f"cut-{name.removesuffix('.gz')}"
    plain.write_bytes(zlib.decompressobj(31).decompress(cut.read_bytes()))
    got, want = k8spacket("replay", cut), k8spacket("replay", plain)
    no_traceback(got)
    assert got.returncode == 1
    assert got.stdout and got.stdout == want.stdout
    assert len(error_lines(got.stderr)) == 1


def test_good_file_after_bad_one_is_still_replayed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_text("nope")
    p = k8spacket("replay", bad, GEN / "fin_close.pcap")
    no_traceback(p)
    assert p.returncode == 1
    assert len(p.stdout.splitlines()) == 1
    assert len(error_lines(p.stderr)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--close-older-than", "soon"], "argument --close-older-than: not a duration"),
        (["--close-older-than", "0s"], "argument --close-older-than: must be positive"),
        (["--flush-period", "-5"], "argument --flush-period: must be positive"),
        (["--max-connections", "0"], "argument --max-connections: must be at least 1"),
        (["--max-connections", "many"], "argument --max-connections: not a whole number"),
        (["--format", "xml"], "argument --format: invalid choice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--capture-mode", "sparse"], "argument --capture-mode: invalid choice"),
        (["--lean-boundary", "1000"], "--lean-boundary: must be a power of two"),
    ],
    ids=[
        "duration-text",
        "duration-zero",
        "flush-negative",
        "cap-zero",
        "cap-text",
        "format",
        "unknown",
        "capture-mode",
        "lean-boundary",
    ],
)
def test_bad_option_exits_2(args: list[str], message: str) -> None:
    p = k8spacket("replay", *args, GEN / "fin_close.pcap")
    no_traceback(p)
    assert p.returncode == 2
    assert message in p.stderr
    assert p.stdout == ""


def test_no_files_exits_2() -> None:
    p = k8spacket("replay")
    no_traceback(p)
    assert p.returncode == 2
    assert re.search(r"required: FILE", p.stderr)


def test_console_script_matches_module() -> None:
    import shutil

    # beside the interpreter (a venv need not be on PATH), else on PATH
    beside = Path(sys.executable).parent / "k8spacket"
    script = str(beside) if beside.exists() else shutil.which("k8spacket")
    assert script is not None, "the k8spacket console script is installed (pip install -e .)"
    p = subprocess.run(
        [script, "replay", "--format", "table", str(GEN / "fin_close.pcap")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0
    assert p.stdout == k8spacket("replay", "--format", "table", GEN / "fin_close.pcap").stdout


def test_demo_sample_is_current_and_replays(tmp_path: Path) -> None:
    """``make demo``: the committed sample is what tests/pcapgen/demo.py makes, and it replays."""
    from pcapgen import demo

    fresh = demo.write(tmp_path)
    for path in fresh:
        assert path.read_bytes() == (demo.SAMPLES / path.name).read_bytes(), f"stale {path.name}"
    assert (demo.SAMPLES / "demo.pcap").stat().st_size < 200_000
    p = k8spacket(
        "replay",
        "--inventory",
        demo.SAMPLES / "demo-inventory.yaml",
        demo.SAMPLES / "demo.pcap",
    )
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    outcomes = sorted({(r["outcome"], r["close"]) for r in records})
    assert outcomes == [("established", "fin"), ("established", "rst"), ("refused", "rst")]
    assert {r["src_workload"] for r in records} == {"frontend", "cart", "catalog"}
    assert any(r["dst"] == "81.2.69.142" and r["dst_kind"] == "external" for r in records)
    assert any(":" in r["src"] for r in records)
    assert all(r["src_kind"] == "pod" for r in records)
