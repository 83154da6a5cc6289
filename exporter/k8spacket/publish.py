"""The publisher: tracker records in, named and counted-once records out, on one thread.

Data flows one way (docs/design.md, "Data flow")::

    tracker ─► offer() ─► bounded queue ─► publisher thread ─┬─► connection store (every record)
    (capture thread)      (full: counted drop)               ├─► traffic metrics  (counted records)
                                                             └─► record_sinks     (counted records)

The capture thread only calls :meth:`Publisher.offer` (a deque append behind a
length check, about 1 µs); a full queue drops the record and counts it in
``dropped`` (``k8spacket_publish_dropped_total``). Naming, the exactly-once
rule, conntrack, the store and the metrics all run on the publisher thread, so
the rings are drained whatever a scrape or a lookup costs.

**Settle delay.** A record waits ``settle`` seconds after the tracker emitted it
before it is published. Rings are read a block at a time, so the sending pod's
ring may not have been read (and the pod not yet known as local) when the
tracker emitted the record; a pod created a moment ago is known once its first
packets were read, whichever ring owns the connection.

**Decided once per connection.** On a connection's first record the publisher
decides its ``reporter`` (``client`` when the client is a local pod, else
``server`` when the server is, else ``None``), whether this agent counts it, and
(with a :class:`~k8spacket.capture.conntrack.ConntrackClient`) whether it went
through kube-proxy's DNAT. Later records of the connection reuse the decision,
so a connection is never half counted. The decision is forgotten on the final
record; at most ``max_decisions`` are kept (the oldest go first).

**Exactly-once rule** (docs/design.md, "Exactly-once accounting"): the agent on the
server's node stays silent in the metrics and ``record_sinks`` when the client
is a pod that is not on this node (named ``kind: pod`` by the Kubernetes cache
or the inventory, and not local). Such records still go to the connection store
(with ``reporter``), and are counted in ``not_reported`` by reason:

* ``remote_client_pod``: the client is a pod on another node; that node's
  agent reports the connection;
* ``service_backend_view``: the post-DNAT view (client → backend pod) of a
  Service connection whose pre-DNAT view (client → ClusterIP) this agent
  captures on the client's own interface and counts; it is not stored either.

**Service connections.** Once per connection, when it can matter (see
:func:`_may_be_nat`: the destination is named a Service or nothing, or is a
pod of this node), the publisher asks conntrack. When the tuple of a record
was destination-NATed (client → ClusterIP:port became client → backend:port),
the record is rewritten to the backend (``dst``, ``dst_port``, named again)
and ``dst_service`` is set to the name of the ClusterIP (from the naming
chain; its address when nothing names it; empty when the address before DNAT
is named as something else than a Service, such as a node's hostPort). Both
names stay: ``dst_*`` is the backend, ``dst_service`` the Service.

:meth:`close` (shutdown) publishes everything still queued without waiting for
the settle delay, so no record is lost at SIGTERM: while closing, ``offer``
blocks instead of dropping.

Limits: the queue holds ``capacity`` records (default 65,536); a dropped final
record leaves its connection counted open (the drop is counted); the decisions
map is bounded; without conntrack (no ``CAP_NET_ADMIN``) a Service connection
whose client and backend are both on this node is counted twice.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from k8spacket.flows.record import ConnectionRecord, Reporter

log = logging.getLogger(__name__)

RecordSink = Callable[[ConnectionRecord], None]
Namer = Callable[[ConnectionRecord], None]
Clock = Callable[[], float]

#: The reasons of ``k8spacket_records_not_reported_total{reason}`` (all exported, zero until seen).
NOT_REPORTED_REASONS: tuple[str, ...] = ("remote_client_pod", "service_backend_view")
DEFAULT_CAPACITY = 65_536
DEFAULT_MAX_DECISIONS = 1_000_000
#: how often an idle publisher looks at its queue (records wait ``settle`` anyway)
POLL = 0.02
#: at shutdown, how long ``offer`` waits for room before it counts a drop after all
BLOCKING_PUT_TIMEOUT = 10.0


class NatLookup(Protocol):
    """What the publisher asks about kube-proxy's DNAT (see ``capture.conntrack``)."""

    def original_destination(
        self, src: str, sport: int, dst: str, dport: int
    ) -> tuple[str, int, str, int] | None:
        """For a tuple ``src:sport → dst:dport`` seen on the wire: ``(pre-DNAT dst,
        port, post-DNAT dst, port)`` when the connection was destination-NATed,
        else ``None``."""
        ...

    def close(self) -> None:
        """Release what the lookups hold (a socket); a later lookup may open it again."""
        ...


@dataclasses.dataclass(slots=True)
class Decision:
    """What the publisher decided on a connection's first record."""

    reporter: Reporter | None
    #: ``None``: counted; else the ``not_reported`` reason
    silent: str | None = None
    #: (backend address, backend port) the record is rewritten to, for a pre-DNAT view
    backend: tuple[str, int] | None = None
    #: the name written to ``dst_service``
    service: str = ""
    #: False for the post-DNAT view left out of the store too
    store: bool = True


class Publisher:
    """One thread between the tracker and every consumer of records."""

    def __init__(
        self,
        *,
        is_local: Callable[[str], bool],
        namers: list[Namer],
        store: RecordSink | None = None,
        traffic: RecordSink | None = None,
        record_sinks: list[RecordSink] | None = None,
        nat: NatLookup | None = None,
        settle: float = 0.25,
        capacity: int = DEFAULT_CAPACITY,
        max_decisions: int = DEFAULT_MAX_DECISIONS,
        clock: Clock = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("publisher queue capacity must be at least 1")
        self.is_local = is_local
        self.namers = namers
        self.store = store
        self.traffic = traffic
        #: extra consumers of *counted* records (the graph's local edge store, …)
        self.record_sinks: list[RecordSink] = record_sinks if record_sinks is not None else []
        self.nat = nat
        self.settle = settle
        self.max_decisions = max_decisions
        self._clock = clock
        self.capacity = capacity
        self._queue: collections.deque[tuple[float, ConnectionRecord]] = collections.deque()
        self._decisions: dict[tuple[str, int, str, int], Decision] = {}
        self._closing = threading.Event()  # no more settle delay
        self._closed = threading.Event()  # run() returns once the queue is empty
        self._blocking = threading.Event()  # offer() waits for room instead of dropping
        self._lock = threading.Lock()  # guards the counters for readers on other threads
        #: records dropped because the queue was full (or publishing one raised)
        self.dropped = 0
        #: reason → records left out of the metrics (see the module docstring)
        self.not_reported: dict[str, int] = dict.fromkeys(NOT_REPORTED_REASONS, 0)
        #: records published (stored or counted)
        self.published = 0
        #: conntrack lookups that failed with an error (not "no such entry")
        self.nat_errors = 0
        self.finished = threading.Event()
        self._running = False  # run() is running (on some thread)

    # ---------------------------------------------------------- capture side
    def offer(self, rec: ConnectionRecord) -> None:
        """The tracker's sink (capture thread): queue ``rec``, or count a drop.

        A deque append (atomic in CPython) behind a length check: no lock, no
        wake-up call; the publisher polls every ``POLL`` seconds when idle.
        """
        q = self._queue
        if len(q) < self.capacity:
            q.append((self._clock(), rec))
            return
        if self._blocking.is_set():  # shutdown: wait for room rather than lose a record
            deadline = time.monotonic() + BLOCKING_PUT_TIMEOUT
            while len(q) >= self.capacity and time.monotonic() < deadline:
                time.sleep(POLL)
            if len(q) < self.capacity:
                q.append((self._clock(), rec))
                return
        with self._lock:
            self.dropped += 1

    def queued(self) -> int:
        return len(self._queue)

    def counters(self) -> dict[str, int]:
        """reason → records not reported (a copy, for the metrics)."""
        with self._lock:
            return dict(self.not_reported)

    # ------------------------------------------------------- publisher side
    def run(self) -> None:
        """The publisher loop; returns once :meth:`close` was called and the queue is empty.

        Ending that way it closes its NAT lookup client: it is the client's last
        user (at shutdown it may still publish after the agent stopped waiting).
        """
        q = self._queue
        closing = self._closing
        clock = self._clock
        self._running = True
        try:
            while True:
                if not q:
                    if self._closed.is_set():
                        break
                    closing.wait(POLL)
                    continue
                t, rec = q[0]
                wait = t + self.settle - clock()
                if wait > 0 and not closing.is_set():
                    closing.wait(wait)
                    continue
                q.popleft()
                try:
                    self.publish(rec)
                except Exception:
                    # a bug in a consumer: the record is lost, counted; the
                    # supervisor logs the error and restarts the loop
                    with self._lock:
                        self.dropped += 1
                    raise
        finally:
            self._running = False
            if self._closed.is_set() and not q and self.nat is not None:
                self.nat.close()
            self.finished.set()

    def block(self) -> None:
        """From now on :meth:`offer` waits for room instead of dropping (before shutdown)."""
        self._blocking.set()

    def close(self) -> None:
        """Stop waiting for the settle delay and end :meth:`run` after the queued records.

        Call after the capture thread has flushed its last records into :meth:`offer`.
        """
        self._blocking.set()
        self._closed.set()
        self._closing.set()

    def drain(self) -> int:
        """Publish every queued record now, on the calling thread (when no thread runs).

        Raises :class:`RuntimeError` while :meth:`run` runs on another thread:
        two threads publishing at once would share the decisions and the
        conntrack socket (one thread's lookup would read the other's answer).
        """
        if self._running:
            raise RuntimeError("Publisher.drain() called while the publisher thread runs")
        n = 0
        q = self._queue
        while q:
            self.publish(q.popleft()[1])
            n += 1
        return n

    def publish(self, rec: ConnectionRecord) -> None:
        """Name one record, apply the connection's decision, hand it on."""
        key = (rec.src, rec.src_port, rec.dst, rec.dst_port)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(rec)  # names the record too
            if not rec.final:
                if len(self._decisions) >= self.max_decisions:
                    del self._decisions[next(iter(self._decisions))]
                self._decisions[key] = decision
        else:
            if rec.final:
                del self._decisions[key]
            if decision.backend is not None:
                rec.dst, rec.dst_port = decision.backend
            self._name(rec)
        rec.reporter = decision.reporter
        rec.dst_service = decision.service
        if decision.store and self.store is not None:
            self.store(rec)
        silent = decision.silent
        with self._lock:
            self.published += 1
            if silent is not None:
                self.not_reported[silent] = self.not_reported.get(silent, 0) + 1
        if silent is not None:
            return
        if self.traffic is not None:
            self.traffic(rec)
        for sink in self.record_sinks:
            sink(rec)

    def _name(self, rec: ConnectionRecord) -> None:
        for namer in self.namers:
            namer(rec)

    # ------------------------------------------------------------ deciding
    def _decide(self, rec: ConnectionRecord) -> Decision:
        """A connection's first record: locality, naming, conntrack, the rule."""
        is_local = self.is_local
        src_local = is_local(rec.src)
        dst_local = is_local(rec.dst)
        reporter: Reporter | None = "client" if src_local else "server" if dst_local else None
        decision = Decision(reporter)
        self._name(rec)
        if self.nat is not None and _may_be_nat(rec, src_local, dst_local):
            self._nat(rec, decision, src_local)
        if decision.backend is not None:
            rec.dst, rec.dst_port = decision.backend
            _clear_dst_names(rec)
            self._name(rec)
        if decision.silent is None and decision.reporter == "server" and rec.src_kind == "pod":
            # the client is a pod but not local (else reporter would be "client"):
            # the agent on that pod's node reports the connection
            decision.silent = "remote_client_pod"
        return decision

    def _nat(self, rec: ConnectionRecord, decision: Decision, src_local: bool) -> None:
        """Ask conntrack whether the connection went through a DNAT; note what it means."""
        assert self.nat is not None
        try:
            nat = self.nat.original_destination(rec.src, rec.src_port, rec.dst, rec.dst_port)
        except OSError as e:
            with self._lock:
                self.nat_errors += 1
            (log.warning if self.nat_errors == 1 else log.debug)(
                "conntrack lookup failed (the connection is taken as not NATed): %s", e
            )
            return
        if nat is None:
            return
        vip, vport, backend, bport = nat
        if (rec.dst, rec.dst_port) == (vip, vport):
            # the client's side, before DNAT: this is the view that counts; the
            # record is named already, so the Service's name is at hand
            decision.backend = (backend, bport)
            decision.service = _service_name(rec.dst_kind, rec.dst_name, vip)
            if not src_local and self.is_local(backend):
                decision.reporter = "server"
            return
        decision.service = self._service_name(rec, vip, vport)
        if src_local:
            # the backend's side, after DNAT; the client's own interface on this
            # node shows the pre-DNAT view, which is the one counted
            decision.silent = "service_backend_view"
            decision.store = False

    def _service_name(self, rec: ConnectionRecord, vip: str, vport: int) -> str:
        """The name of the Service address, from the same naming chain as the records."""
        probe = ConnectionRecord(
            src=rec.src,
            src_port=rec.src_port,
            dst=vip,
            dst_port=vport,
            bytes_sent=0,
            bytes_received=0,
            handshake_seconds=None,
            duration_seconds=0.0,
            outcome=rec.outcome,
            close=None,
            start=rec.start,
            end=rec.end,
        )
        self._name(probe)
        return _service_name(probe.dst_kind, probe.dst_name, vip)


def _service_name(kind: str, name: str, vip: str) -> str:
    if kind == "service" and name:
        return name
    if kind in ("", "unknown"):
        return vip  # an unnamed ClusterIP: its address says which Service
    return ""  # a DNAT to a node or a pod address (a hostPort) is not a Service


#: kinds a Service address can be named as (a ClusterIP, or an address nothing names)
_MAYBE_SERVICE = frozenset({"service", "unknown", ""})
#: clients not on this node whose connection to a local pod may come through a DNAT
#: here and needs ``dst_service``: the node itself, a hostNetwork process, unnamed ones
_MAYBE_NAT_CLIENT = frozenset({"node", "host", "unknown", ""})


def _may_be_nat(rec: ConnectionRecord, src_local: bool, dst_local: bool) -> bool:
    """Whether a conntrack lookup can change anything for this (named) connection.

    The client's view of a Service has a destination named a Service or not
    named at all. The backend's view has a local pod as destination; it matters
    when it must be left out (the client is a pod of this node) or named
    (``dst_service`` for a node or hostNetwork client); a pod of another node as
    client is left out by the exactly-once rule anyway, and the internet
    reaches Services through a node (NodePort, SNAT) or not at all.
    """
    if not dst_local:
        return rec.dst_kind in _MAYBE_SERVICE
    if src_local:
        return True
    return rec.src_kind in _MAYBE_NAT_CLIENT


def _clear_dst_names(rec: ConnectionRecord) -> None:
    rec.dst_name = rec.dst_namespace = rec.dst_workload = ""
    rec.dst_kind = ""
    rec.dst_org = rec.dst_country = ""
