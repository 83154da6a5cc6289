"""Traffic metrics: connection records in, bounded labeled accumulators out.

:meth:`TrafficMetrics.record` is what the record sink calls, once per
connection record (never per packet). It costs a tuple of label values and a
few dict updates under one lock: no prometheus_client object is touched here.
The collector (:mod:`k8spacket.metrics.collector`) takes a
:meth:`TrafficMetrics.snapshot` on every scrape.

Accounting rules (docs/design.md, "Connection records" and "Metrics"):

* bytes: every record's deltas add to ``sent``/``received``;
* ``connections_total{outcome}``: once per connection, on its ``first`` record;
* ``connections_closed_total{close}`` and the duration histogram: on the final
  record (``close`` set);
* handshake histogram: on the first record that carries a handshake time. A
  connection whose first record is interim and has none yet (handshake slower
  than the flush period) is remembered by its addresses and ports until a later
  record brings the time or it ends (at most ``PENDING_HANDSHAKES`` of them;
  past that such late handshakes are not observed);
* ``open_connections``: +1 when a connection's first record is interim, -1 on
  its final record, taken from the very series the +1 went to: the connection
  (addresses and ports) is remembered with that series until its final record,
  so names that change in between (an organisation resolved later, the cache
  catching up) cannot strand a +1. The gauge sums to 0 once everything closed;
  a series back at 0 ages out with the TTL like any other. At most
  ``OPEN_CONNECTIONS`` connections are remembered; past that a new connection
  is not counted open (rather than never coming back down). A final record
  never creates a series and the gauge never goes below zero.

Series idle past ``ttl`` seconds (clock injected, ``time.monotonic`` by
default) are dropped on each snapshot; :meth:`forget` and :meth:`drop_where`
let the Kubernetes layer remove the series of deleted pods.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from k8spacket.flows.record import CLOSES, OUTCOMES, ConnectionRecord
from k8spacket.metrics.budget import Key, SeriesBudget
from k8spacket.metrics.labels import LabelPolicy

#: Handshake time (first SYN → the client's ACK of the SYN-ACK), seconds. In a
#: cluster a handshake takes 50 µs to a few ms; 1 s and 3 s catch SYN
#: retransmissions (the kernel retries after 1 s, then 2 s more).
HANDSHAKE_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    3.0,
    10.0,
)
#: Connection lifetime, seconds: from a 1 ms request to a day-long stream.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.025,
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    14400.0,
    86400.0,
)

SENT = "k8spacket_tcp_sent_bytes_total"
RECEIVED = "k8spacket_tcp_received_bytes_total"
CONNECTIONS = "k8spacket_tcp_connections_total"
CLOSED = "k8spacket_tcp_connections_closed_total"
HANDSHAKE = "k8spacket_tcp_handshake_seconds"
DURATION = "k8spacket_tcp_connection_duration_seconds"
OPEN = "k8spacket_tcp_open_connections"
#: The traffic families, in exposition order.
FAMILIES: tuple[str, ...] = (SENT, RECEIVED, CONNECTIONS, CLOSED, HANDSHAKE, DURATION, OPEN)

DEFAULT_BUDGET = 10_000
DEFAULT_TTL = 600.0
PENDING_HANDSHAKES = 100_000
#: connections remembered with the open-connections series they were counted in
OPEN_CONNECTIONS = 1_000_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class TrafficSnapshot:
    """A consistent copy of every traffic family, taken under the lock."""

    label_names: tuple[str, ...]
    handshake_buckets: tuple[float, ...]
    duration_buckets: tuple[float, ...]
    #: family → [(label values (+ outcome/close), numbers)]
    series: Mapping[str, list[tuple[Key, tuple[float, ...]]]]
    #: family → updates folded into ``__other__`` since start
    overflow: Mapping[str, int]


class TrafficMetrics:
    """Bounded, labeled accumulators of the seven traffic families."""

    def __init__(
        self,
        policy: LabelPolicy | None = None,
        *,
        budget: int = DEFAULT_BUDGET,
        budgets: Mapping[str, int] | None = None,
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
        handshake_buckets: Iterable[float] = HANDSHAKE_BUCKETS,
        duration_buckets: Iterable[float] = DURATION_BUCKETS,
    ) -> None:
        """``budget``: label sets per family; ``budgets`` overrides it per family name."""
        self.policy = policy if policy is not None else LabelPolicy()
        if not ttl > 0:
            raise ValueError(f"series TTL must be positive, got {ttl}")
        per_family = dict(budgets or {})
        unknown = sorted(set(per_family) - set(FAMILIES))
        if unknown:
            raise ValueError(f"series budget for unknown metric(s): {', '.join(unknown)}")
        self.ttl = float(ttl)
        self._clock = clock
        self._values = self.policy.values
        self.handshake_buckets = _buckets(handshake_buckets, "handshake")
        self.duration_buckets = _buckets(duration_buckets, "duration")
        fm, fa = self.policy.fold_mask, self.policy.fold_all_mask

        def make(family: str, width: int, tail: int = 1, keep: bool = False) -> SeriesBudget:
            return SeriesBudget(
                family,
                limit=per_family.get(family, budget),
                width=width,
                fold_mask=fm,
                fold_all_mask=fa,
                tail_values=tail,
                keep=_open_positive if keep else None,
            )

        self.sent = make(SENT, 1)
        self.received = make(RECEIVED, 1)
        self.connections = make(CONNECTIONS, 1, len(OUTCOMES))
        self.closed = make(CLOSED, 1, len(CLOSES))
        # histograms: one count per bucket (the last is +Inf), then the sum
        self.handshake = make(HANDSHAKE, len(self.handshake_buckets) + 2)
        self.duration = make(DURATION, len(self.duration_buckets) + 2)
        self.open = make(OPEN, 1, keep=True)
        self.budgets: tuple[SeriesBudget, ...] = (
            self.sent,
            self.received,
            self.connections,
            self.closed,
            self.handshake,
            self.duration,
            self.open,
        )
        self._pending_hs: dict[tuple[str, int, str, int], None] = {}
        #: connection → the open-connections slot its +1 went to (until its final record)
        self._open_slots: dict[tuple[str, int, str, int], list[float]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ records
    def record(self, rec: ConnectionRecord) -> None:
        """Account one connection record (the record sink calls this)."""
        key = self._values(rec)
        now = self._clock()
        first = rec.first
        close = rec.close
        hs = rec.handshake_seconds
        with self._lock:
            self.sent.slot(key, now)[0] += rec.bytes_sent
            self.received.slot(key, now)[0] += rec.bytes_received
            if first:
                self.connections.slot((*key, rec.outcome), now)[0] += 1
            if hs is not None:
                # first record carrying it: the connection's first, or a pending one
                if first or (
                    self._pending_hs
                    and self._pending_hs.pop((rec.src, rec.src_port, rec.dst, rec.dst_port), 0)
                    is None
                ):
                    _observe(self.handshake.slot(key, now), self.handshake_buckets, hs)
            elif (
                first
                and close is None
                and rec.outcome != "midstream"
                and len(self._pending_hs) < PENDING_HANDSHAKES
            ):
                self._pending_hs[(rec.src, rec.src_port, rec.dst, rec.dst_port)] = None
            if close is None:
                if first and len(self._open_slots) < OPEN_CONNECTIONS:
                    slot = self.open.slot(key, now)
                    slot[0] += 1
                    self._open_slots[(rec.src, rec.src_port, rec.dst, rec.dst_port)] = slot
            else:
                self.closed.slot((*key, close), now)[0] += 1
                _observe(self.duration.slot(key, now), self.duration_buckets, rec.duration_seconds)
                if not first and self._open_slots:
                    held = self._open_slots.pop(
                        (rec.src, rec.src_port, rec.dst, rec.dst_port), None
                    )
                    if held is not None and held[0] > 0:
                        held[0] -= 1
                        held[-1] = now
                if hs is None and self._pending_hs:
                    self._pending_hs.pop((rec.src, rec.src_port, rec.dst, rec.dst_port), None)

    def record_many(self, records: Iterable[ConnectionRecord]) -> None:
        for rec in records:
            self.record(rec)

    # ------------------------------------------------------------- series care
    def expire(self, now: float | None = None) -> int:
        """Drop label sets idle longer than the TTL; returns how many were dropped."""
        before = (self._clock() if now is None else now) - self.ttl
        with self._lock:
            return sum(b.expire(before) for b in self.budgets)

    def drop_where(self, predicate: Callable[[Mapping[str, str]], bool]) -> int:
        """Drop every label set (all families) for which ``predicate(labels)`` is true.

        ``labels`` maps the policy's label names to values (without ``outcome``
        or ``close``). Returns how many label sets were dropped.
        """
        names = self.policy.names

        def match(key: Key) -> bool:
            return predicate(dict(zip(names, key, strict=False)))

        with self._lock:
            return sum(b.drop_where(match) for b in self.budgets)

    def forget(self, namespace: str, pod: str, ips: Iterable[str] = ()) -> int:
        """Drop the series of a deleted pod; returns how many label sets went.

        Matches series whose ``src_pod``/``dst_pod`` label (level ``pod``) names
        the pod, or whose ``src_ip``/``dst_ip`` label is one of ``ips`` within
        the same namespace. With neither label enabled a pod has no series of
        its own (its workload's series stay) and nothing is dropped.
        """
        names = self.policy.names
        ip_set = frozenset(ips)
        tests: list[tuple[int, int, frozenset[str]]] = []  # (namespace idx, label idx, values)
        for side in ("src", "dst"):
            ns_i = names.index(f"{side}_namespace")
            if f"{side}_pod" in names:
                tests.append((ns_i, names.index(f"{side}_pod"), frozenset({pod})))
            if ip_set and f"{side}_ip" in names:
                tests.append((ns_i, names.index(f"{side}_ip"), ip_set))
        if not tests:
            return 0

        def match(key: Key) -> bool:
            return any(key[ns] == namespace and key[i] in vals for ns, i, vals in tests)

        with self._lock:
            return sum(b.drop_where(match) for b in self.budgets)

    # ---------------------------------------------------------------- snapshot
    def snapshot(self) -> TrafficSnapshot:
        """Expire idle series, then copy every family (the collector's input)."""
        before = self._clock() - self.ttl
        with self._lock:
            series = {}
            for b in self.budgets:
                b.expire(before)
                series[b.family] = b.snapshot()
            overflow = {b.family: b.overflow for b in self.budgets}
        return TrafficSnapshot(
            label_names=self.policy.names,
            handshake_buckets=self.handshake_buckets,
            duration_buckets=self.duration_buckets,
            series=series,
            overflow=overflow,
        )

    def open_tracked(self) -> int:
        """Connections counted open now (remembered until their final record)."""
        with self._lock:
            return len(self._open_slots)

    def series_count(self) -> dict[str, int]:
        """Label sets held per family (for benchmarks and tests)."""
        with self._lock:
            return {b.family: len(b) for b in self.budgets}


def _open_positive(s: list[float]) -> bool:
    return s[0] > 0


def _observe(s: list[float], bounds: tuple[float, ...], value: float) -> None:
    s[bisect.bisect_left(bounds, value)] += 1
    s[-2] += value


def _buckets(values: Iterable[float], what: str) -> tuple[float, ...]:
    b = tuple(float(v) for v in values)
    if not b or any(not math.isfinite(v) for v in b) or list(b) != sorted(set(b)):
        raise ValueError(f"{what} buckets must be finite, strictly increasing and not empty")
    return b
