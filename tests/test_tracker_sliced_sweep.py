"""The live capture's sliced sweep gives the same records as a whole sweep.

The capture thread must not spend seconds in one sweep of a big table (it
measured 2 s at 50,000 and 16 s at 500,000 connections, ``bench/capture_stall.py``):
:meth:`ConnectionTracker.sweep_step` does a pass in slices. Here the same
packets go into two trackers; one is swept whole, the other slice by slice, and
the records must be the same, in the same order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ACK, FIN, SWEEP_EMIT, SYN, ConnectionTracker, Sink

SERVER = (10 << 24 | 200 << 16 | 1) << 16 | 80


def feed(tracker: ConnectionTracker, n: int) -> None:
    """``n`` connections: a third closed by FIN, a third idle, a third with new bytes."""
    add = tracker.add
    for i in range(n):
        sport = 32768 + i
        client = (10 << 24 | 100 << 16 | 1) << 16 | sport
        key, rev = client << 48 | SERVER, SERVER << 48 | client
        add(0.0, (key, 48, sport, 80, 1000, 0, SYN, 0))
        add(0.0, (rev, 48, 80, sport, 5000, 1001, SYN | ACK, 0))
        add(0.0, (key, 48, sport, 80, 1001, 5001, ACK, 0))
        if i % 3 == 0:
            add(1.0, (key, 48, sport, 80, 1001, 5001, FIN | ACK, 0))
            add(1.0, (rev, 48, 80, sport, 5001, 1002, FIN | ACK, 0))
            add(1.0, (key, 48, sport, 80, 1002, 5002, ACK, 0))
        elif i % 3 == 1:
            add(25.0, (key, 48, sport, 80, 1001, 5001, ACK, 100 + i))


def live(sink: Sink, **kw: Any) -> ConnectionTracker:
    """A tracker as the live capture drives it: swept by ``sweep_step``, not by ``add``
    (idle after 20 s and a flush period of 10 s unless given)."""
    kw = {"close_older_than": 20.0, "flush_period": 10.0, **kw}
    tracker = ConnectionTracker(sink, **kw)
    tracker.sweep_in_add = False
    return tracker


def records(sliced: bool, n: int, limit: int) -> list[ConnectionRecord]:
    out: list[ConnectionRecord] = []
    tracker = live(out.append)
    feed(tracker, n)
    # only the FIN-closed connections reported while packets came in: no sweep ran
    assert [r.close for r in out] == ["fin"] * (n // 3)
    out.clear()
    if sliced:
        per_step = []
        while True:
            before = len(out)
            more = tracker.sweep_step(30.0, limit)
            per_step.append(len(out) - before)
            if not more:
                break
        # a step looks at `limit` entries, and stops early after SWEEP_EMIT records
        assert max(per_step) <= SWEEP_EMIT
        assert len(per_step) >= max(-(-n // limit), -(-len(out) // SWEEP_EMIT))
        if limit <= SWEEP_EMIT:
            assert len(per_step) == -(-n // limit)
        assert not tracker.sweep_step(30.0, limit)  # not due again before next_sweep
    else:
        tracker.sweep(30.0)
    assert tracker.next_sweep == 40.0
    return out


@pytest.mark.parametrize("limit", [1, 7, 100, 1000], ids=lambda n: f"slices-of-{n}")
def test_sliced_sweep_emits_what_a_whole_sweep_does(limit: int) -> None:
    whole = records(False, 300, limit)
    sliced = records(True, 300, limit)
    assert [dataclasses.asdict(r) for r in sliced] == [dataclasses.asdict(r) for r in whole]
    # the idle third flushed (dormant), the active third's interim records
    assert len(whole) == 200 and {r.close for r in whole} == {None}
    assert sum(r.bytes_sent for r in whole) == sum(100 + i for i in range(1, 300, 3))


def test_connections_gone_during_a_pass_are_skipped() -> None:
    out: list[ConnectionRecord] = []
    tracker = live(out.append)
    feed(tracker, 30)
    assert tracker.sweep_step(30.0, 10)
    n = len(out)
    tracker.table.clear()  # e.g. flushed at shutdown between two slices
    while tracker.sweep_step(30.0, 10):
        pass
    assert len(out) == n


def test_a_pass_starts_without_copying_the_table() -> None:
    """Starting a pass allocates nothing in proportion to the table.

    A copy of 500,000 keys was 3.5-5 ms of C holding the interpreter lock on the
    capture thread (``bench/capture_stall.py``); the pass reads the tracker's
    order of connections in place.
    """
    import tracemalloc

    out: list[ConnectionRecord] = []
    tracker = live(out.append)
    feed(tracker, 3000)
    order = tracker._order
    tracemalloc.start()
    try:
        assert tracker.sweep_step(30.0, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 3000 // 4  # a copy of the 3,000 keys' references alone is 24,000 bytes
    assert tracker._order is order
    while tracker.sweep_step(30.0, 10):
        pass


def drive_pass(tracker: ConnectionTracker, now: float, limit: int = 10) -> None:
    while tracker.sweep_step(now, limit):
        pass


def test_the_order_drops_connections_removed_outside_the_sweep() -> None:
    """Removed for room or replaced on port reuse: gone from the order after one pass."""
    out: list[ConnectionRecord] = []
    tracker = live(out.append, max_connections=100)
    feed(tracker, 300)  # capacity evictions along the way
    assert tracker.evicted["capacity"] > 0
    assert len(tracker._order) > len(tracker.table)
    drive_pass(tracker, 30.0)
    assert [c.key for c in tracker._order] == list(tracker.table)
    # port reuse: the client's new SYN on an open connection's key replaces its entry
    old = tracker._order[0]
    sport = old.key >> 48 & 0xFFFF
    tracker.add(31.0, (old.key, 48, sport, 80, 9000, 0, SYN, 0))
    assert tracker.table[old.key] is not old and tracker._order[-1] is tracker.table[old.key]
    assert len(tracker._order) == len(tracker.table) + 1
    drive_pass(tracker, 41.0)
    assert [c.key for c in tracker._order] == list(tracker.table)
    assert all(tracker.table[c.key] is c for c in tracker._order)


def test_connections_arriving_during_a_pass_wait_for_the_next() -> None:
    out: list[ConnectionRecord] = []
    tracker = live(out.append)
    feed(tracker, 30)
    assert tracker.sweep_step(30.0, 10)
    late = (10 << 24 | 100 << 16 | 2) << 16 | 40000
    tracker.add(30.0, (late << 48 | SERVER, 48, 40000, 80, 7, 0, SYN, 0))
    drive_pass(tracker, 30.0)
    assert tracker._order[-1].key == late << 48 | SERVER
    assert len(tracker._order) == len(tracker.table) == 21  # the FIN-closed third lingered out
    assert not any(r.src_port == 40000 for r in out)  # not swept by the pass it arrived in
    out.clear()
    drive_pass(tracker, 60.0)  # unanswered SYN: idle after close_older_than
    assert [r.close for r in out if r.src_port == 40000] == ["idle"]


def test_a_sink_that_raises_loses_no_connection_from_the_order() -> None:
    out: list[ConnectionRecord] = []
    fail = [0]  # the record the sink refuses, counting down; 0: none

    def sink(rec: ConnectionRecord) -> None:
        if fail[0]:
            fail[0] -= 1
            if fail[0] == 0:
                raise RuntimeError("sink failed")
        out.append(rec)

    tracker = live(sink)
    feed(tracker, 30)
    out.clear()
    fail[0] = 3
    with pytest.raises(RuntimeError):
        drive_pass(tracker, 30.0)
    drive_pass(tracker, 30.0)  # the pass goes on where it stopped
    assert sorted(c.key for c in tracker._order) == sorted(tracker.table)
    assert len(out) == 20 - 1  # every due record but the one the sink refused
    fail[0] = 2
    with pytest.raises(RuntimeError):  # the whole sweep of replay, too (all forgotten)
        tracker.sweep(700.0)
    assert len(tracker.table) == 20 - 1
    tracker.sweep(710.0)
    assert sorted(c.key for c in tracker._order) == sorted(tracker.table)
    tracker.sweep(1400.0)  # the ones the failed sweep did not reach turned dormant at 710
    assert not tracker.table and not tracker._order


# ------------------------------------------------------------ making room
def fill_active(
    tracker: ConnectionTracker, n: int, start: int = 0, shuffled: bool = False
) -> list[int]:
    """``n`` established connections, connection ``i`` last active at ``i`` ms (or,
    ``shuffled``, at a random one of those times: activity unlike arrival order)."""
    import random

    from k8spacket.decode import Decoded

    add = tracker.add
    keys = []
    times = list(range(start, start + n))
    if shuffled:
        random.Random(7).shuffle(times)
    for i, t in zip(range(start, start + n), times, strict=True):
        sport = 1024 + (i & 0xFFFF)
        client = (10 << 24 | 100 << 16 | (i >> 16)) << 16 | sport
        key, rev = client << 48 | SERVER, SERVER << 48 | client
        ts = t / 1000
        pkts: list[Decoded] = [
            (key, 48, sport, 80, 1000, 0, SYN, 0),
            (rev, 48, 80, sport, 5000, 1001, SYN | ACK, 0),
            (key, 48, sport, 80, 1001, 5001, ACK, 0),
        ]
        for p in pkts:
            add(ts, p)
        keys.append(key)
    return keys


def test_a_big_full_table_makes_room_in_steps_least_recently_active_first() -> None:
    """Past ``EVICT_EXACT_MAX`` a full table ends at most ``EVICT_BATCH`` per new
    connection, from the least recently active share, and never grows past the cap."""
    from k8spacket.flows.tracker import EVICT_BATCH, EVICT_EXACT_MAX

    cap = 20_000
    assert cap > EVICT_EXACT_MAX
    out: list[ConnectionRecord] = []
    tracker = live(out.append, close_older_than=1000.0, flush_period=1000.0, max_connections=cap)
    fill_active(tracker, cap, shuffled=True)
    assert len(tracker.table) == cap and not out
    lasts = {c.key: c.last for c in tracker.table.values()}
    per_add = []
    add = tracker.add
    for i in range(cap, cap + 3000):  # 3,000 new connections, each a SYN
        sport = 1024 + (i & 0xFFFF)
        client = (10 << 24 | 101 << 16 | (i >> 16)) << 16 | sport
        before = len(out)
        add(100.0, (client << 48 | SERVER, 48, sport, 80, 1, 0, SYN, 0))
        per_add.append(len(out) - before)
        assert len(tracker.table) <= cap
    assert max(per_add) <= EVICT_BATCH
    assert tracker.evicted["capacity"] == len(out) >= 3000
    assert {r.close for r in out} == {"idle"}
    # What was ended is what an exact "least recently active first" would end,
    # give or take the 5% share a threshold covers and its sampling error (the
    # 5% quantile of 1,024 entries is within 2% of the table's, 3 sigma).
    ended = [lasts[k] for k in lasts if k not in tracker.table]
    assert len(ended) == len(out)
    assert max(ended) <= sorted(lasts.values())[len(ended) + cap * 7 // 100]


def test_making_room_drops_closed_entries_and_repeats() -> None:
    """Closed entries found on the way go without a record; the same packets give the
    same records (the sample is seeded)."""

    def run() -> list[tuple[int, str | None]]:
        out: list[ConnectionRecord] = []
        tracker = live(
            out.append, close_older_than=1000.0, flush_period=1000.0, max_connections=8000
        )
        keys = fill_active(tracker, 8000)
        for key in keys[:100]:  # the first 100 close by RST (closed, lingering)
            sport = key >> 48 & 0xFFFF
            tracker.add(50.0, (key, 48, sport, 80, 1001, 5001, 0x04 | ACK, 0))
        assert sum(1 for c in tracker.table.values() if c.state & 32) == 100
        n = len(out)
        fill_active(tracker, 500, start=10_000)
        assert len(tracker.table) <= 8000
        assert not any(c.state & 32 for c in tracker.table.values())  # all dropped
        assert tracker.evicted["capacity"] == len(out) - n
        return [(r.src_port, r.close) for r in out]

    first = run()
    assert first == run()


def test_the_order_stays_bounded_under_churn_on_a_full_table() -> None:
    """1,000 new connections per loop turn on a full table of 5,000 (each ends one
    for room): passes outrun the arrivals, so the order keeps within about twice
    the table or so instead of growing by the dead entries every pass."""
    from k8spacket.flows.tracker import SWEEP_SLICE

    out: list[ConnectionRecord] = []
    cap = 5000
    tracker = live(out.append, max_connections=cap)
    i, now, longest = 0, 0.0, 0
    for _ in range(400):  # 20 s at 20 turns a second
        now += 0.05
        for _ in range(1000):
            sport = 1024 + (i & 0xFFFF)
            client = (10 << 24 | 100 << 16 | (i >> 16) & 0xFF) << 16 | sport
            tracker.add(now, (client << 48 | SERVER, 48, sport, 80, 1, 0, SYN, 0))
            i += 1
        if tracker._pass_end >= 0 or now >= tracker.next_sweep:  # as the reader does
            tracker.sweep_step(now)
        longest = max(longest, len(tracker._order))
        assert len(tracker.table) <= cap
    assert longest <= 4 * cap + SWEEP_SLICE * 8  # it grew by 200,000 every 10 s before
