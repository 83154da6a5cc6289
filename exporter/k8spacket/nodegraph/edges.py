"""Graph edges: who talked to whom, and the numbers every graph view is built from.

Every source (the local store, the agents' fan-out, Prometheus) produces an
:class:`EdgeSet`: a mapping from (client :class:`End`, server :class:`End`) to
an :class:`EdgeStats`. The views (:mod:`k8spacket.nodegraph.build`) read only
this, so the same traffic gives the same answer whatever the source.

An :class:`End` is one side at its finest level: kind, namespace, workload and
name (the pod's name for pods; for other kinds the name the naming chain gave,
else the workload). Values follow the metric labels exactly
(:func:`~k8spacket.flows.record.spelled_kind`, ``spelled_workload``): an end nothing named is kind ``unknown``,
workload ``unknown``; an external end's workload is its organisation.

:data:`WIDTH` numbers per edge, summed over the window (the layout is fixed,
the agents' fan-out sends it as is, see :data:`LAYOUT`):

* ``connections``: connections seen (counted on a connection's first record,
  like ``k8spacket_tcp_connections_total``);
* ``failed``: of those, ``refused`` or ``unanswered``;
* ``reset``: final records closed by RST that were not refused;
* ``sent``, ``received``: payload bytes client → server and back;
* ``duration_sum``: lifetime of the connections that ended;
* ``handshake_sum``, ``handshake_count``: handshake times (first record carrying one);
* ``duration_le_*``: the connections that ended within each bound of
  :data:`DURATION_BUCKETS`, cumulative like Prometheus' ``le`` buckets (the
  last, +Inf, is every connection that ended), so a quantile is computed the
  way PromQL's ``histogram_quantile`` does, with one bisection and no sum.

Small sets ride along (at most :data:`MAX_DETAIL` values each): the server
ports, a few addresses of either end and the countries of external ends.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from k8spacket.flows.record import ConnectionRecord, spelled_kind, spelled_workload
from k8spacket.metrics.traffic import DURATION_BUCKETS

CONNECTIONS, FAILED, RESET, SENT, RECEIVED, DURATION_SUM, HS_SUM, HS_COUNT = range(8)
BUCKETS0 = 8
#: the numbers of one edge, in order
LAYOUT: tuple[str, ...] = (
    "connections",
    "failed",
    "reset",
    "sent",
    "received",
    "duration_sum",
    "handshake_sum",
    "handshake_count",
    *(f"duration_le_{b:g}" for b in DURATION_BUCKETS),
    "duration_le_inf",
)
WIDTH = len(LAYOUT)
#: values kept per detail set (ports, addresses, countries)
MAX_DETAIL = 4
FAILED_OUTCOMES = frozenset({"refused", "unanswered"})


class End(NamedTuple):
    """One end of an edge at its finest level (pod, or the named thing)."""

    kind: str
    namespace: str
    workload: str
    name: str


#: an edge's numbers: a list, or a copy of the local store's ``array("d")`` (no float objects)
Values = MutableSequence[float]
Detail = frozenset[str]
_EMPTY: Detail = frozenset()
_DETAILS = ("ports", "src_addresses", "dst_addresses", "src_countries", "dst_countries")


def with_detail(s: Detail, v: str) -> Detail:
    """``s`` with ``v`` added while it holds fewer than :data:`MAX_DETAIL` values."""
    if not v or v in s or len(s) >= MAX_DETAIL:
        return s
    return s | {v}


def _union(a: Detail, b: Detail) -> Detail:
    if not b or a == b or len(a) >= MAX_DETAIL:
        return a
    if not a and len(b) <= MAX_DETAIL:
        return b
    return frozenset(sorted(a | b)[:MAX_DETAIL]) if len(a | b) > MAX_DETAIL else a | b


class EdgeStats:
    """The numbers of one edge over a window, and a few details (immutable sets, shared)."""

    __slots__ = (
        "dst_addresses",
        "dst_countries",
        "ports",
        "src_addresses",
        "src_countries",
        "values",
    )

    def __init__(self, values: Values | None = None) -> None:
        self.values: Values = [0.0] * WIDTH if values is None else values
        self.ports = self.src_addresses = self.dst_addresses = _EMPTY
        self.src_countries = self.dst_countries = _EMPTY

    def with_values(self, values: Values) -> EdgeStats:
        """A new :class:`EdgeStats` of ``values`` sharing this one's details (immutable)."""
        st = _new_stats(EdgeStats)
        st.values = values
        st.ports = self.ports
        st.src_addresses = self.src_addresses
        st.dst_addresses = self.dst_addresses
        st.src_countries = self.src_countries
        st.dst_countries = self.dst_countries
        return st

    def add(self, other: EdgeStats) -> None:
        self.values = list(map(operator.add, self.values, other.values))
        self.add_details(other)

    def add_details(self, other: EdgeStats) -> None:
        self.ports = _union(self.ports, other.ports)
        self.src_addresses = _union(self.src_addresses, other.src_addresses)
        self.dst_addresses = _union(self.dst_addresses, other.dst_addresses)
        self.src_countries = _union(self.src_countries, other.src_countries)
        self.dst_countries = _union(self.dst_countries, other.dst_countries)

    def note(self, rec: ConnectionRecord) -> None:
        """Remember the details of one record (ports, addresses, countries)."""
        self.ports = with_detail(self.ports, str(rec.dst_port))
        self.src_addresses = with_detail(self.src_addresses, rec.src)
        self.dst_addresses = with_detail(self.dst_addresses, rec.dst)
        self.src_countries = with_detail(self.src_countries, rec.src_country)
        self.dst_countries = with_detail(self.dst_countries, rec.dst_country)


_new_stats = object.__new__  # an EdgeStats without __init__ (with_values sets every slot)


def record_ends(rec: ConnectionRecord) -> tuple[End, End]:
    """The (client, server) ends of a record, spelled as the metric labels spell them."""
    skind = spelled_kind(rec.src_kind, rec.src_org)
    swl = spelled_workload(rec.src_workload, skind, rec.src_org)
    dkind = spelled_kind(rec.dst_kind, rec.dst_org)
    dwl = spelled_workload(rec.dst_workload, dkind, rec.dst_org)
    return (
        End(skind, rec.src_namespace, swl, rec.src_name or swl),
        End(dkind, rec.dst_namespace, dwl, rec.dst_name or dwl),
    )


def add_record(values: MutableSequence[float], rec: ConnectionRecord) -> None:
    """Account one connection record into an edge's numbers (the local store's path)."""
    if rec.first:
        values[CONNECTIONS] += 1
        if rec.outcome in FAILED_OUTCOMES:
            values[FAILED] += 1
        if rec.handshake_seconds is not None:
            values[HS_SUM] += rec.handshake_seconds
            values[HS_COUNT] += 1
    values[SENT] += rec.bytes_sent
    values[RECEIVED] += rec.bytes_received
    if rec.close is not None:
        if rec.close == "rst" and rec.outcome not in FAILED_OUTCOMES:
            values[RESET] += 1
        d = rec.duration_seconds
        values[DURATION_SUM] += d
        for i in range(BUCKETS0 + _bucket_index(d), WIDTH):  # cumulative
            values[i] += 1


def _bucket_index(d: float) -> int:
    # the first bound >= d (Prometheus' ``le``); past the last bound: +Inf
    for i, b in enumerate(DURATION_BUCKETS):
        if d <= b:
            return i
    return len(DURATION_BUCKETS)


def ended(values: Sequence[float]) -> float:
    """Connections that ended (the duration histogram's count: its +Inf bucket)."""
    return values[WIDTH - 1]


_LOWER = (0.0, *DURATION_BUCKETS)  # each bucket's lower bound (the first starts at 0)


def quantile(q: float, values: Sequence[float]) -> float | None:
    """The ``q`` quantile of an edge's duration histogram, as ``histogram_quantile`` computes it.

    Linear interpolation inside the bucket holding the rank (the first bucket
    starts at 0); a rank in the +Inf bucket answers the highest finite bound.
    ``None`` when no connection ended. The buckets are ``values[BUCKETS0:]``,
    cumulative: one bisection finds the rank's bucket.
    """
    total = ended(values)
    if total <= 0:
        return None
    rank = q * total
    # the first bucket whose count reaches the rank (it holds connections: rank > 0);
    # for q = 0 the first bucket holding any
    b = bisect_left(values, rank, BUCKETS0) if rank > 0 else bisect_right(values, 0.0, BUCKETS0)
    k = b - BUCKETS0
    if k >= len(DURATION_BUCKETS):
        return DURATION_BUCKETS[-1]  # in the +Inf bucket
    below = values[b - 1] if k else 0.0
    lower = _LOWER[k]
    return lower + (DURATION_BUCKETS[k] - lower) * (rank - below) / (values[b] - below)


class EdgeSet:
    """Edges (client end, server end) → numbers, summed as they are added."""

    __slots__ = ("edges",)

    def __init__(self) -> None:
        self.edges: dict[tuple[End, End], EdgeStats] = {}

    def __len__(self) -> int:
        return len(self.edges)

    def __iter__(self) -> Iterator[tuple[End, End, EdgeStats]]:
        for (s, d), st in self.edges.items():
            yield s, d, st

    def stats(self, src: End, dst: End) -> EdgeStats:
        st = self.edges.get((src, dst))
        if st is None:
            st = self.edges[(src, dst)] = EdgeStats()
        return st

    def add(self, src: End, dst: End, other: EdgeStats) -> None:
        self.stats(src, dst).add(other)

    def merge(self, other: EdgeSet) -> None:
        """Sum ``other`` into this set (never overwrite: the agents' fan-out)."""
        for s, d, st in other:
            self.add(s, d, st)

    # ------------------------------------------------------------ transport
    def to_json(self) -> list[dict[str, Any]]:
        """The edges as JSON-ready rows (what ``/nodegraph/api/graph/edges`` answers)."""
        return [
            {
                "src": list(s),
                "dst": list(d),
                "values": [_compact(x) for x in st.values],
                "ports": sorted(st.ports),
                "src_addresses": sorted(st.src_addresses),
                "dst_addresses": sorted(st.dst_addresses),
                "src_countries": sorted(st.src_countries),
                "dst_countries": sorted(st.dst_countries),
            }
            for s, d, st in self
        ]

    @classmethod
    def from_json(cls, rows: Iterable[Any]) -> EdgeSet:
        """Parse :meth:`to_json` rows; raises ``ValueError`` on anything malformed."""
        out = cls()
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError("an edge row is not an object")
            try:
                src = End(*(str(x) for x in row["src"]))
                dst = End(*(str(x) for x in row["dst"]))
                values = [float(x) for x in row["values"]]
            except (KeyError, TypeError) as e:
                raise ValueError(f"malformed edge row: {e}") from None
            if len(values) != WIDTH or not all(math.isfinite(x) for x in values):
                raise ValueError(f"an edge row needs {WIDTH} finite numbers")
            if any(a > b for a, b in pairwise(values[BUCKETS0:])):
                raise ValueError("an edge row's duration buckets are not cumulative")
            st = EdgeStats(values)
            for name in _DETAILS:
                items = row.get(name, ())
                if not isinstance(items, list):
                    raise ValueError(f"{name}: expected a list")
                for x in items[:MAX_DETAIL]:
                    setattr(st, name, with_detail(getattr(st, name), str(x)))
            out.add(src, dst, st)
        return out


def _compact(x: float) -> float | int:
    return int(x) if x.is_integer() else x
