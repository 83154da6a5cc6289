"""Connection tracker rules, proven on the captures of ``tests/pcapgen/captures.py``.

Every expected record below is worked out by hand from the scenario (times,
ISNs, payload sizes), never taken from the tracker's output. Records are
compared field by field; times are rounded to the microsecond on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k8spacket.decode import SKIP_REASONS
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.replay import ReplayStats, replay_files
from pcapgen import Capture, captures

GEN = Path(__file__).resolve().parent / "data" / "gen"
V4C, V4S = "10.0.0.1", "10.0.0.2"
V6A, V6B, V6C = "2001:db8::a", "2001:db8::b", "2001:db8::c"
GIB = 1 << 30


def rec(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    sent: int,
    received: int,
    handshake: float | None,
    outcome: str,
    close: str | None,
    start: float,
    end: float,
    first: bool = True,
) -> dict[str, Any]:
    return {
        "src": src,
        "src_port": sport,
        "dst": dst,
        "dst_port": dport,
        "bytes_sent": sent,
        "bytes_received": received,
        "handshake_seconds": handshake,
        "outcome": outcome,
        "close": close,
        "start": start,
        "end": end,
        "duration_seconds": round(end - start, 6),
        "first": first,
    }


def shape(r: ConnectionRecord) -> dict[str, Any]:
    d = r.to_dict()
    out = {k: d[k] for k in rec("", 0, "", 0, 0, 0, None, "", None, 0.0, 0.0)}
    for k in ("handshake_seconds", "start", "end", "duration_seconds"):
        if out[k] is not None:
            out[k] = round(out[k], 6)
    return out


#: the reference conversation of captures.standard(): handshake 0.0007 s, 111 up, 222 down
STANDARD = rec(V4C, 40000, V4S, 80, 111, 222, 0.0007, "established", "fin", 1.0, 1.0102)
STANDARD_V6 = rec(V6A, 40000, V6B, 80, 111, 222, 0.0007, "established", "fin", 1.0, 1.0102)
EST = "established"
OLD = ("10.0.0.5", 45000, "10.0.0.6", 8080)  # the connection open before the capture

CASES: list[tuple[str, str, dict[str, Any], list[dict[str, Any]], dict[str, int]]] = [
    # (id, file, tracker options, expected records in emission order, skipped by reason)
    (
        "handshake-timing-and-fin",
        "fin_close.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 100, 300, 0.0004, EST, "fin", 100.0, 100.0032)],
        {},
    ),
    (
        "rst-close",
        "rst_close.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 50, 20, 0.0015, EST, "rst", 10.0, 10.03)],
        {},
    ),
    (
        "refused",
        "refused.pcap",
        {},
        [rec(V4C, 40000, V4S, 81, 0, 0, None, "refused", "rst", 5.0, 5.0001)],
        {},
    ),
    (
        "unanswered-idle-then-open-at-end",
        "unanswered.pcap",
        {},
        [
            # SYNs at 1, 2, 4; flushed by the sweep the packet at 30 s triggers
            rec(V4C, 40001, V4S, 81, 0, 0, None, "unanswered", "idle", 1.0, 4.0),
            rec("10.0.0.3", 40002, V4S, 80, 0, 0, 0.0007, EST, "fin", 30.0, 30.0102),
            # still waiting when the capture ends
            rec(V4C, 40003, "10.0.0.9", 443, 0, 0, None, "unanswered", None, 31.0, 31.0),
        ],
        {},
    ),
    (
        "unanswered-long-idle-timeout-interim-only",
        "unanswered.pcap",
        {"close_older_than": 60.0},
        [
            # not idle yet at the sweep of 30 s: one interim record, nothing more at the end
            rec(V4C, 40001, V4S, 81, 0, 0, None, "unanswered", None, 1.0, 30.0),
            rec("10.0.0.3", 40002, V4S, 80, 0, 0, 0.0007, EST, "fin", 30.0, 30.0102),
            rec(V4C, 40003, "10.0.0.9", 443, 0, 0, None, "unanswered", None, 31.0, 31.0),
        ],
        {},
    ),
    (
        "retransmissions-and-duplicates-once",
        "retransmit.pcap",
        {},
        # client 1001..1250 (250), server 5001..5200 (200)
        [rec(V4C, 40000, V4S, 80, 250, 200, 0.0007, EST, "fin", 0.0, 0.4002)],
        {},
    ),
    (
        "out-of-order-gap-filled-once",
        "out_of_order.pcap",
        {},
        # client 1001..1300; server 5001..6020 (1000 bytes never captured still sent)
        [rec(V4C, 40000, V4S, 80, 300, 1020, 0.0007, EST, "fin", 0.0, 0.1002)],
        {},
    ),
    (
        "sequence-wrap",
        "seq_wrap.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 300, 400, 0.0007, EST, "fin", 0.0, 0.1002)],
        {},
    ),
    (
        "over-4GiB-ipv6-jumbograms",
        "jumbo_v6_5gib.pcap",
        {},
        [rec(V6A, 40000, V6B, 80, 5 * GIB, 0, 0.0007, EST, "fin", 0.0, 9.0002)],
        {},
    ),
    (
        "midstream-ephemeral-port-rule",
        "midstream.pcap",
        {},
        [
            rec(V4C, 51000, V4S, 443, 30, 300, None, "midstream", "fin", 50.0, 50.3002),
            # first packet seen is the SYN-ACK: still no SYN, no handshake time
            rec(
                "10.0.0.5", 45000, "10.0.0.6", 8080, 40, 60, None, "midstream", "rst", 52.0, 52.004
            ),
            # both ports below 32768: the higher one is the client's
            rec("10.0.0.3", 5000, "10.0.0.4", 80, 20, 10, None, "midstream", None, 51.0, 51.1),
        ],
        {},
    ),
    (
        "port-reuse-new-record",
        "port_reuse.pcap",
        {},
        [
            rec(V4C, 40000, V4S, 80, 10, 20, 0.0007, EST, "fin", 1.0, 1.1002),
            rec(V4C, 40000, V4S, 80, 30, 40, 0.0007, EST, "fin", 1.5, 1.6002),
            rec(V4C, 40000, V4S, 80, 50, 60, 0.0007, EST, "rst", 60.0, 60.1),
            # its end was never captured: ends at its own last packet, not the new SYN
            rec(V4C, 40001, V4S, 80, 10, 0, 0.0007, EST, "idle", 70.0, 70.01),
            rec(V4C, 40001, V4S, 80, 20, 0, 0.0007, EST, "fin", 75.0, 75.1002),
        ],
        {},
    ),
    (
        "ipv6-extension-headers",
        "ipv6_ext.pcap",
        {},
        [
            rec(V6A, 40000, V6B, 443, 123, 456, 0.002, EST, "fin", 1.0, 1.1002),
            rec(V6C, 40001, V6B, 443, 100, 7, 0.0007, EST, "fin", 2.0, 2.1002),
        ],
        {},
    ),
    ("fragments-skipped", "fragments.pcap", {}, [STANDARD], {"fragment": 3 + 3 + 2}),
    ("not-tcp-skipped", "not_tcp.pcap", {}, [], {"not_tcp": 5, "not_ip": 1}),
    (
        "ipv4-options",
        "ipv4_options.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 77, 88, 0.0007, EST, "fin", 1.0, 1.0102)],
        {},
    ),
    (
        "headers-only-snap-96",
        "snap96.pcap",
        {},
        [
            rec(V4C, 40000, V4S, 80, 3 * 1448, 10 * 1448, 0.0007, EST, "fin", 1.0, 1.1002),
            rec(V6A, 40000, V6B, 80, 2 * 1000, 5 * 1440, 0.0007, EST, "fin", 2.0, 2.1002),
        ],
        {},
    ),
    (
        "tso-and-big-tcp-super-frames",
        "bigtcp.pcap",
        {},
        [
            rec(V4C, 40000, V4S, 80, 64000 + 150000, 0, 0.0007, EST, "fin", 1.0, 1.1002),
            rec(V6A, 40000, V6B, 80, 200000 + 300000, 0, 0.0007, EST, "fin", 2.0, 2.1002),
        ],
        {},
    ),
    (
        "interim-records-flush-period",
        "interim.pcap",
        {"flush_period": 10.0, "close_older_than": 20.0},
        [
            # sweeps run at the first packet at or past 10, 21, 33 s (before it counts)
            rec(V4C, 40000, V4S, 80, 100, 0, 0.002, EST, None, 0.0, 11.0),
            rec(V4C, 40000, V4S, 80, 200, 50, 0.002, EST, None, 0.0, 23.0, first=False),
            rec(V4C, 40000, V4S, 80, 300, 0, 0.002, EST, None, 0.0, 35.0, first=False),
            rec(V4C, 40000, V4S, 80, 410, 20, 0.002, EST, "fin", 0.0, 40.0002, first=False),
        ],
        {},
    ),
    (
        "table-cap-evicts-least-recent",
        "capacity.pcap",
        {"max_connections": 3},
        [
            rec(V4C, 40000 + i, V4S, 80, 10 * i, 0, 0.0007, EST, close, i, i + 0.011)
            for i, close in ((1, "idle"), (2, "idle"), (3, None), (4, None), (5, None))
        ],
        {},
    ),
    (
        "pooled-idle-past-timeout-and-reused-is-one-connection",
        "pooled.pcap",
        {},
        [
            # silent past closeOlderThan: flushed by the sweep at 45 s, kept dormant
            rec(V4C, 40000, V4S, 80, 100, 200, 0.0007, EST, None, 0.0, 0.02),
            rec("10.0.0.3", 40001, V4S, 80, 50, 0, 0.0007, EST, None, 2.0, 2.01),
            # the keep-alive probes (0 and 1 byte at snd_nxt - 1) added nothing
            rec(V4C, 40000, V4S, 80, 300, 400, 0.0007, EST, "fin", 0.0, 101.0002, first=False),
        ],
        {},
    ),
    (
        "dormant-forgotten-after-forgetAfter",
        "pooled.pcap",
        {"forget_after": 60.0},
        [
            rec(V4C, 40000, V4S, 80, 100, 200, 0.0007, EST, None, 0.0, 0.02),
            rec("10.0.0.3", 40001, V4S, 80, 50, 0, 0.0007, EST, None, 2.0, 2.01),
            # silent for 60 s at the sweep of 75 s: it ends, at its last packet
            rec("10.0.0.3", 40001, V4S, 80, 0, 0, 0.0007, EST, "idle", 2.0, 2.01, first=False),
            rec(V4C, 40000, V4S, 80, 300, 400, 0.0007, EST, "fin", 0.0, 101.0002, first=False),
        ],
        {},
    ),
    (
        "old-rule-forgetAfter-equal-closeOlderThan-splits",
        "pooled.pcap",
        {"forget_after": 20.0},
        [
            rec(V4C, 40000, V4S, 80, 100, 200, 0.0007, EST, "idle", 0.0, 0.02),
            rec("10.0.0.3", 40001, V4S, 80, 50, 0, 0.0007, EST, "idle", 2.0, 2.01),
            rec(V4C, 40000, V4S, 80, 0, 0, None, "midstream", "idle", 45.0, 45.0001),
            rec(V4C, 40000, V4S, 80, 1, 0, None, "midstream", "idle", 75.0, 75.0001),
            rec(V4C, 40000, V4S, 80, 300, 400, None, "midstream", "fin", 100.0, 101.0002),
        ],
        {},
    ),
    (
        "rst-in-handshake-not-acking-syn-ignored",
        "rst_handshake.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 10, 20, 0.0007, EST, "fin", 1.0, 1.0102)],
        {},
    ),
    (
        "rst-outside-window-ignored-data-after-counted",
        "rst_window.pcap",
        {},
        [rec(V4C, 40000, V4S, 80, 150, 260, 0.0007, EST, "fin", 1.0, 1.1002)],
        {},
    ),
    (
        "synack-captured-before-syn-one-connection",
        "synack_first.pcap",
        {},
        # start at the first packet (the SYN-ACK, 3 us before the SYN); handshake to the ACK
        [rec(V4C, 40000, V4S, 80, 10, 20, 0.0007, EST, "fin", 1.0, 1.0102)],
        {},
    ),
    (
        "lost-fin-not-a-byte",
        "lost_fin.pcap",
        {},
        [
            # first FIN lost: the client's last ACK (one past its last byte) closes it
            rec(V4C, 40000, V4S, 80, 100, 200, 0.0007, EST, "fin", 1.0, 1.1003),
            # second FIN lost: the client's ACK covering it closes it
            rec("10.0.0.3", 40001, V4S, 80, 100, 200, 0.0007, EST, "fin", 2.0, 2.1002),
        ],
        {},
    ),
    (
        "long-transfer-interim-then-rst",
        "lean_transfer.pcap",
        {},
        [
            rec(V4C, 40000, V4S, 80, 99 * 1448, 0, 0.0007, EST, None, 0.0, 10.0),
            rec(V4C, 40000, V4S, 80, 100 * 1448, 0, 0.0007, EST, None, 0.0, 20.0, first=False),
            rec(V4C, 40000, V4S, 80, 11 * 1448, 0, 0.0007, EST, None, 0.0, 30.0, first=False),
            rec(V4C, 40000, V4S, 80, 0, 500, 0.0007, EST, "rst", 0.0, 30.5, first=False),
        ],
        {},
    ),
    (
        "open-before-capture-started",
        "preexisting.pcap",
        {},
        [
            # midstream: the first packet's payload counts (nothing before it is known)
            rec(*OLD, 400, 200, None, "midstream", None, 0.0, 12.0),
            rec(*OLD, 400, 200, None, "midstream", None, 0.0, 24.0, first=False),
            rec("10.0.0.3", 40002, V4S, 80, 0, 0, 0.0007, EST, "fin", 12.0, 12.0102),
            rec(*OLD, 200, 100, None, "midstream", "fin", 0.0, 30.0002, first=False),
        ],
        {},
    ),
    *[
        (f"link-{n}", f"link_{n}.pcap", {}, [STANDARD], {})
        for n in ("ether", "vlan", "qinq", "sll", "sll2")
    ],
    ("link-raw-v4-and-v6", "link_raw.pcap", {}, [STANDARD, STANDARD_V6], {}),
    ("pcapng", "standard.pcapng", {}, [STANDARD], {}),
    ("gzip-pcap", "standard.pcap.gz", {}, [STANDARD], {}),
    ("gzip-pcapng", "standard.pcapng.gz", {}, [STANDARD], {}),
]


def replay(paths: list[Path], **opts: Any) -> tuple[list[ConnectionRecord], ReplayStats, Any]:
    records: list[ConnectionRecord] = []
    modes = {k: opts.pop(k) for k in ("capture_mode", "lean_warmup") if k in opts}
    tracker = ConnectionTracker(records.append, **opts)
    stats = replay_files([str(p) for p in paths], tracker, **modes)
    return records, stats, tracker


@pytest.mark.parametrize(
    ("name", "opts", "expected", "skipped"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_capture_gives_exact_records(
    name: str, opts: dict[str, Any], expected: list[dict[str, Any]], skipped: dict[str, int]
) -> None:
    records, stats, tracker = replay([GEN / name], **opts)
    assert stats.errors == []
    assert [shape(r) for r in records] == expected
    assert stats.skipped == skipped
    assert set(stats.skipped) <= set(SKIP_REASONS.values())
    # connections counted once each, however many records they had
    assert tracker.connections == len({(r["src"], r["src_port"], r["start"]) for r in expected})


# ---------------------------------------------------------------- lean mode
#: a lost FIN cannot be told from data the lean filter did not pass (docs/capture.md);
#: the old "idle ends it" rule splits on silence, and the two modes see different silences
LEAN_EXCLUDED = {"lost-fin-not-a-byte", "old-rule-forgetAfter-equal-closeOlderThan-splits"}
LEAN_CASES = [c for c in CASES if c[0] not in LEAN_EXCLUDED]


def per_connection(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Records summed per connection: key (4-tuple, start; midstream: 4-tuple, n-th)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    current: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    seen: dict[tuple[Any, ...], int] = {}
    for r in records:
        tup = (r["src"], r["src_port"], r["dst"], r["dst_port"])
        if r["first"]:
            if r["outcome"] == "midstream":
                seen[tup] = seen.get(tup, 0) + 1
                current[tup] = (*tup, "mid", seen[tup])
            else:
                current[tup] = (*tup, r["start"])
            out[current[tup]] = {"sent": 0, "received": 0}
        c = out[current[tup]]
        c["sent"] += r["bytes_sent"]
        c["received"] += r["bytes_received"]
        c["outcome"], c["close"] = r["outcome"], r["close"]
    return out


@pytest.mark.parametrize(
    ("name", "opts", "expected"),
    [c[1:4] for c in LEAN_CASES],
    ids=[c[0] for c in LEAN_CASES],
)
def test_lean_mode_same_bytes_outcomes_closes(
    name: str, opts: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    """The lean filter (replay --capture-mode lean) on the same captures.

    A connection whose SYN and close were captured has exactly the full mode's
    bytes, outcome and close. One picked up midstream, or still open / idle at
    the end, has at most the full mode's bytes (the filter passed less of it)
    and may be missing; lean mode keeps a silent established connection
    dormant instead of forgetting it.
    """
    records, stats, _ = replay([GEN / name], **opts, capture_mode="lean")
    assert stats.errors == []
    want = per_connection(expected)
    got = per_connection([shape(r) for r in records])
    assert set(got) <= set(want)
    for key, w in want.items():
        exact = w["outcome"] != "midstream" and w["close"] in ("fin", "rst")
        if exact:
            assert got.get(key) == w, key
        elif key in got:
            g = got[key]
            assert g["sent"] <= w["sent"] and g["received"] <= w["received"], key
            assert g["outcome"] == w["outcome"], key
            assert g["close"] == w["close"] or {g["close"], w["close"]} <= {None, "idle"}, key


def test_lean_handshake_is_syn_to_synack() -> None:
    """The client's ACK of the SYN-ACK does not pass the lean filter."""
    (full,), _, _ = replay([GEN / "fin_close.pcap"])
    (lean,), _, _ = replay([GEN / "fin_close.pcap"], capture_mode="lean")
    assert (full.handshake_seconds, lean.handshake_seconds) == (0.0004, 0.00025)
    # the last ACK is not passed either: lean closes at the second FIN
    assert (round(full.end, 6), round(lean.end, 6)) == (100.0032, 100.0031)


def test_lean_interim_records_lag_by_less_than_a_boundary_and_a_segment() -> None:
    records, stats, _ = replay([GEN / "lean_transfer.pcap"], capture_mode="lean")
    assert stats.filtered > 0.9 * stats.tcp_packets  # 3% of the packets reach the tracker
    sent = 0
    for r in records:
        sent += r.bytes_sent
        if r.close is None:
            # the capture's segments are 1448 bytes every 0.1 s from 0.1 s
            before = 1448 * sum(1 for i in range(210) if round(0.1 + i / 10, 6) < r.end)
            assert 0 <= before - sent < 65536 + 1448, (r.end, before, sent)
    assert (sent, sum(r.bytes_received for r in records)) == (210 * 1448, 500)
    assert records[-1].close == "rst"


@pytest.mark.parametrize(
    ("warmup", "shown_before_end", "totals"),
    [(2.0, True, (1000, 500)), (0.0, False, (0, 0))],
    ids=["with-warm-up", "strict-lean"],
)
def test_lean_connection_open_before_capture(
    warmup: float, shown_before_end: bool, totals: tuple[int, int]
) -> None:
    """The agent captures everything for a warm-up, then goes lean (docs/capture.md)."""
    records, _, _ = replay([GEN / "preexisting.pcap"], capture_mode="lean", lean_warmup=warmup)
    old = [r for r in records if r.src == "10.0.0.5"]
    assert any(r.end < 30.0 for r in old) == shown_before_end
    assert (sum(r.bytes_sent for r in old), sum(r.bytes_received for r in old)) == totals
    assert old[-1].close == "fin" and [r.first for r in old].count(True) == 1


def test_lean_lost_fin_is_a_documented_limit() -> None:
    """Lean mode: a FIN the kernel dropped looks like data the filter did not pass."""
    records, _, _ = replay([GEN / "lost_fin.pcap"], capture_mode="lean")
    assert [(r.bytes_sent, r.bytes_received, r.close) for r in records] == [
        (101, 200, None),
        (100, 200, None),
    ]


def test_lean_tracker_during_the_warm_up_still_recognises_a_lost_fin() -> None:
    """While the ring passes everything (the warm-up) the lost-FIN rule holds in lean mode."""
    records, stats, _ = replay([GEN / "lost_fin.pcap"], capture_mode="lean", lean_warmup=60.0)
    assert stats.filtered == 0
    assert [(r.bytes_sent, r.bytes_received, r.close) for r in records] == [
        (100, 200, "fin"),
        (100, 200, "fin"),
    ]


def test_sums_of_records_give_totals() -> None:
    records, _, _ = replay([GEN / "interim.pcap"])
    assert sum(r.bytes_sent for r in records) == 100 + 200 + 300 + 400 + 10
    assert sum(r.bytes_received for r in records) == 50 + 20
    assert [r.first for r in records].count(True) == 1


@pytest.mark.parametrize(
    ("reason", "count"),
    [("idle", 1), ("capacity", 0)],
    ids=["idle", "capacity"],
)
def test_eviction_counters_unanswered(reason: str, count: int) -> None:
    _, _, tracker = replay([GEN / "unanswered.pcap"])
    assert tracker.evicted[reason] == count


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("rst_handshake.pcap", {"invalid_rst": 2}),
        ("rst_window.pcap", {"invalid_rst": 2}),
        ("rst_close.pcap", {}),
        ("refused.pcap", {}),
    ],
    ids=["handshake", "window", "valid-rst", "valid-refusal"],
)
def test_invalid_rst_counted(name: str, ignored: dict[str, int]) -> None:
    _, _, tracker = replay([GEN / name])
    assert {k: v for k, v in tracker.ignored.items() if v} == ignored


def test_dormant_connections_make_room_least_recent_first(tmp_path: Path) -> None:
    """Dormant entries count against the cap; the least recently active ends first."""
    cap = Capture()
    a = cap.tcp((V4C, 40001), (V4S, 80))
    a.handshake(0.0)
    a.client(0.01, "PA", 10)
    b = cap.tcp((V4C, 40002), (V4S, 80))
    b.handshake(1.0)
    b.client(1.01, "PA", 20)
    a.client(30.0, "PA", 5)  # the sweep at 30 s made both dormant; this resumes a
    cap.tcp((V4C, 40003), (V4S, 80)).client(31.0, "S")  # the table is full
    cap.write_pcap(tmp_path / "room.pcap")
    records, _, tracker = replay([tmp_path / "room.pcap"], max_connections=2)
    assert [shape(r) for r in records] == [
        rec(V4C, 40001, V4S, 80, 10, 0, 0.0007, EST, None, 0.0, 0.01),
        rec(V4C, 40002, V4S, 80, 20, 0, 0.0007, EST, None, 1.0, 1.01),
        rec(V4C, 40002, V4S, 80, 0, 0, 0.0007, EST, "idle", 1.0, 1.01, first=False),
        rec(V4C, 40001, V4S, 80, 5, 0, 0.0007, EST, None, 0.0, 30.0, first=False),
        rec(V4C, 40003, V4S, 80, 0, 0, None, "unanswered", None, 31.0, 31.0),
    ]
    assert tracker.evicted == {"idle": 0, "capacity": 1}


def test_capacity_eviction_counter() -> None:
    _, _, tracker = replay([GEN / "capacity.pcap"], max_connections=3)
    assert tracker.evicted == {"idle": 0, "capacity": 2}


@pytest.mark.timeout(120)
def test_over_4gib_of_ipv4_headers_only(tmp_path: Path) -> None:
    """65600 segments with IP total length 65535: 4 296 472 000 bytes, past 2**32."""
    path = tmp_path / "big_v4.pcap"
    captures.write_big_v4(path, 65600)
    records, stats, _ = replay([path])
    assert stats.packets == 65600 + 6
    assert [(r.bytes_sent, r.bytes_received, r.outcome, r.close) for r in records] == [
        (65600 * 65495, 0, "established", "fin")
    ]
    assert 65600 * 65495 > 1 << 32


@pytest.mark.parametrize("name", list(captures.CAPTURES), ids=list(captures.CAPTURES))
def test_committed_capture_is_current(name: str, tmp_path: Path) -> None:
    """tests/data/gen is what the scripts make (regenerate: PYTHONPATH=tests python -m pcapgen)."""
    fresh = captures.write(name, tmp_path)
    assert fresh.read_bytes() == (GEN / name).read_bytes(), f"stale {name}: regenerate"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"close_older_than": 0}, "positive"),
        ({"flush_period": -1}, "positive"),
        ({"max_connections": 0}, "at least 1"),
        ({"close_older_than": 30, "forget_after": 20}, "forget_after"),
    ],
    ids=["idle-timeout-zero", "flush-negative", "cap-zero", "forget-before-idle"],
)
def test_bad_tracker_options_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionTracker(lambda r: None, **kwargs)


def test_timestamps_going_backwards_never_end_before_start(tmp_path: Path) -> None:
    """Merged captures can step back in time; a record still ends at or after its start."""
    cap = Capture()
    conv = cap.tcp(("10.0.0.1", 50000), ("10.0.0.2", 443))
    conv.client(10.0, "PA", 5)
    conv.server(4.0, "PA", 6)  # written later, stamped earlier
    cap.write_pcap(tmp_path / "back.pcap")
    records, _, _ = replay([tmp_path / "back.pcap"])
    assert [shape(r) for r in records] == [
        rec(V4C, 50000, V4S, 443, 5, 6, None, "midstream", None, 10.0, 10.0)
    ]
