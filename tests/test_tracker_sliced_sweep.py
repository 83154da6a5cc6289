"""The live capture's sliced sweep gives the same records as a whole sweep.

The capture thread must not spend seconds in one sweep of a big table (it
measured 2 s at 50,000 and 16 s at 500,000 connections, ``bench/capture_stall.py``):
:meth:`ConnectionTracker.sweep_step` does a pass in slices. Here the same
packets go into two trackers; one is swept whole, the other slice by slice, and
the records must be the same, in the same order.
"""

from __future__ import annotations

import dataclasses

import pytest

from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ACK, FIN, SWEEP_EMIT, SYN, ConnectionTracker

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


def records(sliced: bool, n: int, limit: int) -> list[ConnectionRecord]:
    out: list[ConnectionRecord] = []
    tracker = ConnectionTracker(out.append, close_older_than=20.0, flush_period=10.0)
    tracker.sweep_in_add = False
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
    tracker = ConnectionTracker(out.append, close_older_than=20.0, flush_period=10.0)
    tracker.sweep_in_add = False
    feed(tracker, 30)
    assert tracker.sweep_step(30.0, 10)
    n = len(out)
    tracker.table.clear()  # e.g. flushed at shutdown between two slices
    while tracker.sweep_step(30.0, 10):
        pass
    assert len(out) == n


def test_a_pass_copies_the_keys_into_an_old_list() -> None:
    """A pass's copy of the table's keys is not a young object of the garbage collector.

    A new list of 500,000 keys in the young generation is walked item by item by
    the next two young collections, 5-10 ms each on whichever thread allocates
    (``bench/capture_stall.py``); the tracker refills one long-lived list instead.
    """
    import gc

    out: list[ConnectionRecord] = []
    tracker = ConnectionTracker(out.append, close_older_than=20.0, flush_period=10.0)
    tracker.sweep_in_add = False
    feed(tracker, 30)
    gc.collect()  # every survivor is old now, the tracker's own list among them
    assert tracker.sweep_step(30.0, 10)
    keys = tracker._pass
    assert keys is not None and len(keys) == 30
    young = gc.get_objects(generation=0) + gc.get_objects(generation=1)
    assert not any(o is keys for o in young)
    while tracker.sweep_step(30.0, 10):
        pass
    assert tracker._pass is None and not tracker._pass_keys  # emptied after the pass
