"""The node agent (``k8spacket run``): capture + tracker + records + HTTP.

Threads:

* ``capture``: :class:`~k8spacket.capture.reader.CaptureReader` reads every
  ring, decodes, applies the exactly-once rule, feeds the tracker and runs its
  timer; records are published on this thread (naming by inventory, the
  connection store, the traffic metrics: per record, never per packet).
  A record waits ``settle`` seconds (0.25 s + the block timeout) before it is
  published, and its ``reporter`` is decided then: rings are read a block at a
  time, so the sending pod's ring may not have been read (and the pod not yet
  known as local) when the tracker emitted the record;
* ``interfaces``: :class:`~k8spacket.capture.interfaces.InterfaceWatcher`
  follows RTNL events and opens/closes rings;
* ``http``: :class:`~k8spacket.server.AgentHTTPServer`.

:meth:`Agent.run` blocks until :meth:`Agent.stop` (the CLI wires SIGTERM and
SIGINT to it); stopping drains the rings, flushes every open connection as a
final record and closes the server. Hooks for other parts: ``namers``
(callables that fill identity fields of a record), ``local.set_extra`` (pod IPs
on this node from the Kubernetes cache) and ``ready_checks``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from k8spacket.capture.bpf import compile_filter
from k8spacket.capture.interfaces import InterfaceFilter, InterfaceWatcher
from k8spacket.capture.local import LocalAddresses
from k8spacket.capture.reader import CaptureReader, InterfaceStats
from k8spacket.capture.ring import PacketRing
from k8spacket.config import ConfigError, Settings
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.metrics.capture_collector import CaptureCollector
from k8spacket.metrics.collector import build_registry
from k8spacket.metrics.labels import LabelPolicy, LabelPolicyError
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer

log = logging.getLogger(__name__)

Namer = Callable[[ConnectionRecord], None]


class Agent:
    """Wires capture, tracking, records and HTTP from one :class:`Settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        namers: list[Namer] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.namers = list(namers or [])
        self.ready_checks: list[Callable[[], bool]] = []
        s = settings
        try:
            policy = LabelPolicy(
                s.metrics.level, s.metrics.labels, hide_source_port=s.metrics.hide_source_port
            )
            self.traffic = TrafficMetrics(
                policy, budget=s.metrics.series_budget, ttl=s.metrics.series_ttl
            )
        except (LabelPolicyError, ValueError) as e:
            raise ConfigError(f"metrics: {e}") from None
        try:
            self.program = compile_filter(s.capture.filter, s.capture.snap_length)
        except ValueError as e:
            raise ConfigError(f"capture.filter: {e}") from None
        if s.inventory:
            from k8spacket.enrich.inventory import Inventory, InventoryError

            try:
                self.namers.append(Inventory.load(s.inventory).name_record)
            except InventoryError as e:
                raise ConfigError(str(e)) from None
        self.store = ConnectionStore(s.http.connection_store)
        self.local = LocalAddresses()
        self.tracker = ConnectionTracker(
            self._sink,
            close_older_than=s.tracker.close_older_than,
            flush_period=s.tracker.flush_period,
            max_connections=s.tracker.max_connections,
            is_local=self.local.is_local,
        )
        self.reader = CaptureReader(self.tracker, self.local, clock=clock)
        self.watcher = InterfaceWatcher(
            self.reader,
            self._open_ring,
            interface_filter=InterfaceFilter(
                s.capture.interfaces.include, s.capture.interfaces.exclude
            ),
            command=s.capture.interfaces.command or None,
            refresh_period=s.capture.interfaces.refresh_period,
        )
        self.reader.on_ring_error = self.watcher.request_sync
        self.reader.on_tick = self._publish_settled
        self.settle = 0.25 + s.capture.block_timeout
        self._clock = clock
        self._pending: collections.deque[tuple[float, ConnectionRecord]] = collections.deque()
        sources = SelfMetricSources(
            capture_packets=lambda: {n: st.packets for n, st in self._istats().items()},
            capture_drops=lambda: {n: st.drops for n, st in self._istats().items()},
            capture_interfaces=lambda: len(self.reader.interfaces),
            decode_errors=self.reader.decode_errors,
        ).with_tracker(self.tracker)
        self.registry = build_registry(self.traffic, sources)
        self.registry.register(
            CaptureCollector(
                self.watcher.skipped_counts,
                lambda: {n: st.not_owner for n, st in self._istats().items()},
            )
        )
        self.server = AgentHTTPServer(
            s.http.host, s.http.port, self.registry, self.store, self.ready
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------- plumbing
    def _istats(self) -> dict[str, InterfaceStats]:
        return self.reader.interface_stats()

    def _open_ring(self, name: str) -> PacketRing:
        c = self.settings.capture
        return PacketRing(
            name,
            self.program,
            ring_bytes=c.ring_size,
            block_size=c.block_size,
            block_timeout_ms=max(1, round(c.block_timeout * 1000)),
        )

    def _sink(self, rec: ConnectionRecord) -> None:
        self._pending.append((self._clock(), rec))

    def _publish_settled(self, now: float) -> None:
        pending = self._pending
        before = now - self.settle
        while pending and pending[0][0] <= before:
            self._publish(pending.popleft()[1])

    def _publish(self, rec: ConnectionRecord) -> None:
        is_local = self.local.is_local
        rec.reporter = "client" if is_local(rec.src) else "server" if is_local(rec.dst) else None
        for namer in self.namers:
            namer(rec)
        self.store.add(rec)
        self.traffic.record(rec)

    def ready(self) -> bool:
        """Capture running, interfaces listed once, every extra check true."""
        return (
            self.reader.running.is_set()
            and self.watcher.syncs > 0
            and all(check() for check in self.ready_checks)
        )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.server.start()
        log.info("listening on http://%s:%d", self.settings.http.host, self.server.port)
        for name, target in (("capture", self.reader.run), ("interfaces", self.watcher.run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Start, block until :meth:`stop`, then shut down cleanly."""
        self.start()
        try:
            while not self._stop.wait(0.5):
                if not all(t.is_alive() for t in self._threads):
                    raise RuntimeError("a capture thread died; see the log above")
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.watcher.stop()
        self.reader.stop()
        for t in self._threads:
            t.join(timeout=10)
        while self._pending:
            self._publish(self._pending.popleft()[1])
        self.server.stop()
        log.info(
            "stopped: %d connections, %d records", self.tracker.connections, self.tracker.records
        )
