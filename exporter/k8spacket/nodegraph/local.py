"""The local graph store: this agent's edges, aggregated into time buckets as records arrive.

:meth:`LocalGraphStore.add` is a record sink (the publisher calls it once per
counted record, never per packet). The record's ``end`` picks a bucket of
``bucket`` seconds; the bucket holds one array of :data:`~.edges.WIDTH` numbers
per edge that had traffic in it. Buckets older than ``window`` are dropped as
new ones open, so memory is bounded by edges x buckets whatever the connection
rate (``bench/nodegraph_bench.py`` measures it). End tuples are interned: every
bucket shares one key object per edge. Details (ports, a few addresses,
countries) are kept once per edge and dropped with its last bucket.

:meth:`LocalGraphStore.edges` sums the buckets that overlap ``[since, until]``
into an :class:`~.edges.EdgeSet`: the answer's time resolution is the bucket.
A record older than the window when it arrives is not stored (counted in
``too_old``). Thread-safe: one lock, held for one dict update per record.
"""

from __future__ import annotations

import threading
from array import array
from collections import deque

from k8spacket.flows.record import ConnectionRecord
from k8spacket.nodegraph.edges import WIDTH, EdgeSet, EdgeStats, End, add_record, record_ends

EdgeKey = tuple[End, End]


class _Details:
    __slots__ = ("key", "last", "stats")

    def __init__(self, key: EdgeKey, stats: EdgeStats, last: int) -> None:
        self.key = key
        self.stats = stats
        self.last = last


class LocalGraphStore:
    """Per-edge numbers in time buckets over a sliding window."""

    def __init__(self, window: float = 3600.0, bucket: float = 60.0) -> None:
        if not bucket > 0 or not window >= bucket:
            raise ValueError(f"graph bucket ({bucket}) must be positive and at most the window")
        self.window = float(window)
        self.bucket = float(bucket)
        self._buckets: deque[tuple[int, dict[EdgeKey, array[float]]]] = deque()
        self._details: dict[EdgeKey, _Details] = {}
        self._lock = threading.Lock()
        self.records = 0
        self.too_old = 0

    def add(self, rec: ConnectionRecord) -> None:
        """Account one connection record (a record sink)."""
        n = int(rec.end // self.bucket)
        src, dst = record_ends(rec)
        with self._lock:
            buckets = self._buckets
            if not buckets or n > buckets[-1][0]:
                buckets.append((n, {}))
                self._expire(n)
                table = buckets[-1][1]
            elif n == buckets[-1][0]:
                table = buckets[-1][1]
            else:
                older = self._older(n)
                if older is None:
                    self.too_old += 1
                    return
                table = older
            det = self._details.get((src, dst))
            if det is None:
                det = self._details[(src, dst)] = _Details((src, dst), EdgeStats(values=[]), n)
            elif n > det.last:
                det.last = n
            key = det.key  # one key object per edge, shared by every bucket
            det.stats.note(rec)
            values = table.get(key)
            if values is None:
                values = table[key] = array("d", bytes(8 * WIDTH))
            add_record(values, rec)
            self.records += 1

    def _older(self, n: int) -> dict[EdgeKey, array[float]] | None:
        first = self._buckets[-1][0] - int(self.window // self.bucket) + 1
        if n < first:
            return None
        for i, (m, table) in enumerate(self._buckets):
            if m == n:
                return table
            if m > n:
                self._buckets.insert(i, (n, {}))
                return self._buckets[i][1]
        raise AssertionError("unreachable: n is older than the newest bucket")  # pragma: no cover

    def _expire(self, newest: int) -> None:
        first = newest - int(self.window // self.bucket) + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < first:
            buckets.popleft()
        if len(self._details) > 2 * sum(len(t) for _, t in buckets) + 1024:
            self._details = {k: v for k, v in self._details.items() if v.last >= first}

    def edges(self, since: float, until: float) -> EdgeSet:
        """The edges of the buckets overlapping ``[since, until]`` (Unix seconds), summed."""
        lo, hi = int(since // self.bucket), int(until // self.bucket)
        out = EdgeSet()
        with self._lock:
            tables = [t for n, t in self._buckets if lo <= n <= hi]
            for table in tables:
                for key, values in table.items():
                    st = out.edges.get(key)
                    if st is None:
                        st = out.edges[key] = EdgeStats()
                        st.add_details(self._details[key].stats)
                    v = st.values
                    for i in range(WIDTH):
                        v[i] += values[i]
        return out

    def edge_count(self) -> int:
        """Distinct edges held (over every bucket)."""
        with self._lock:
            return len({k for _, t in self._buckets for k in t})

    def bucket_count(self) -> int:
        with self._lock:
            return len(self._buckets)
