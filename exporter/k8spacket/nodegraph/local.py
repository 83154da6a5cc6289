"""The local graph store: this agent's edges, aggregated into time buckets as records arrive.

:meth:`LocalGraphStore.add` is a record sink (the publisher calls it once per
counted record, never per packet). The record's ``end`` picks a bucket of
``bucket`` seconds. Each edge keeps, per bucket it had traffic in, its
*running totals* after that bucket (an array of :data:`~.edges.WIDTH`
numbers), like a counter sampled once per bucket. A window's numbers are then
one difference per edge (totals at the window's last bucket minus totals
before its first), so an answer costs per edge, not per edge x bucket.

Buckets older than ``window`` are dropped once per new bucket (their totals
become the edge's floor), so memory is bounded by edges x buckets whatever the
connection rate (``bench/nodegraph_bench.py`` measures it); an edge with no
bucket left is forgotten. A record whose bucket is older than the edge's newest
is added to that bucket and every later one (late records are rare: records
are published within a second of their end). A record older than the window
is not stored (counted in ``too_old``). Details (ports, a few addresses,
countries) are kept once per edge.

:meth:`LocalGraphStore.edges` answers the buckets overlapping ``[since,
until]``: the answer's time resolution is the bucket. Thread-safe: one lock,
held for one edge update per record.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from operator import sub

from k8spacket.flows.record import ConnectionRecord
from k8spacket.nodegraph.edges import WIDTH, EdgeSet, EdgeStats, End, add_record, record_ends

EdgeKey = tuple[End, End]
_ZERO = array("d", bytes(8 * WIDTH))


class _Edge:
    """One edge: (bucket number, running totals after it) oldest first, and its details."""

    __slots__ = ("buckets", "details", "floor", "totals")

    def __init__(self) -> None:
        self.buckets: list[int] = []
        self.totals: list[array[float]] = []
        self.floor = _ZERO  # totals of the buckets dropped from the window
        self.details = EdgeStats([])

    def at(self, n: int) -> array[float]:
        """The running totals after bucket ``n`` (of the buckets still held)."""
        buckets = self.buckets
        i = len(buckets) - 1
        while i >= 0 and buckets[i] > n:
            i -= 1
        return self.totals[i] if i >= 0 else self.floor


class LocalGraphStore:
    """Per-edge running totals per time bucket, over a sliding window."""

    def __init__(self, window: float = 3600.0, bucket: float = 60.0) -> None:
        if not bucket > 0 or not window >= bucket:
            raise ValueError(f"graph bucket ({bucket}) must be positive and at most the window")
        self.window = float(window)
        self.bucket = float(bucket)
        self._span = int(window // bucket)  # buckets held
        self._edges: dict[EdgeKey, _Edge] = {}
        self._newest = -(1 << 62)  # newest bucket number seen
        self._lock = threading.Lock()
        self.records = 0
        self.too_old = 0

    def add(self, rec: ConnectionRecord) -> None:
        """Account one connection record (a record sink)."""
        n = int(rec.end // self.bucket)
        key = record_ends(rec)
        with self._lock:
            if n > self._newest:
                self._newest = n
                self._expire(n - self._span + 1)
            elif n <= self._newest - self._span:
                self.too_old += 1
                return
            edge = self._edges.get(key)
            if edge is None:
                edge = self._edges[key] = _Edge()
            buckets, totals = edge.buckets, edge.totals
            if buckets and buckets[-1] == n:
                add_record(totals[-1], rec)
            elif not buckets or buckets[-1] < n:
                buckets.append(n)
                totals.append(array("d", totals[-1] if totals else edge.floor))
                add_record(totals[-1], rec)
            else:  # late: into its bucket and every later one
                i = bisect.bisect_left(buckets, n)
                if buckets[i] != n:
                    buckets.insert(i, n)
                    totals.insert(i, array("d", totals[i - 1] if i else edge.floor))
                for t in totals[i:]:
                    add_record(t, rec)
            edge.details.note(rec)
            self.records += 1

    def _expire(self, first: int) -> None:
        """Drop buckets before bucket ``first`` (once per new bucket: O(edges))."""
        dead = []
        for key, edge in self._edges.items():
            buckets = edge.buckets
            if not buckets or buckets[0] >= first:
                continue
            if buckets[-1] < first:
                dead.append(key)
                continue
            k = 0
            while buckets[k] < first:
                k += 1
            edge.floor = edge.totals[k - 1]
            del buckets[:k], edge.totals[:k]
        for key in dead:
            del self._edges[key]

    def edges(self, since: float, until: float) -> EdgeSet:
        """The edges' numbers over the buckets overlapping ``[since, until]`` (Unix seconds)."""
        lo, hi = int(since // self.bucket), int(until // self.bucket)
        out = EdgeSet()
        table = out.edges
        with self._lock:
            for key, edge in self._edges.items():
                buckets = edge.buckets
                if not buckets or buckets[0] > hi:
                    continue
                end = edge.totals[-1] if buckets[-1] <= hi else edge.at(hi)
                start = edge.floor if buckets[0] >= lo else edge.at(lo - 1)
                if end is start:
                    continue  # nothing inside the window
                values = end[:] if start is _ZERO else array("d", map(sub, end, start))
                table[key] = edge.details.with_values(values)
        return out

    def edge_count(self) -> int:
        """Distinct edges held."""
        with self._lock:
            return len(self._edges)

    def bucket_count(self) -> int:
        """Distinct buckets held over every edge."""
        with self._lock:
            return len({n for e in self._edges.values() for n in e.buckets})
