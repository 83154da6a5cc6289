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
* ``http``: :class:`~k8spacket.server.AgentHTTPServer`;
* ``k8s-watch-*`` (one per resource, :class:`~k8spacket.enrich.k8s.K8sCache`) and
  ``k8s-pods``: every ``POD_SYNC_PERIOD`` the pods of the cache's index are
  compared with the previous look: the pod addresses on this node
  (``kubernetes.nodeName``) go to ``local.set_extra``, and the series of pods
  that are gone are dropped (``TrafficMetrics.forget``);
* ``k8spacket-geoip``/``k8spacket-whois-*``: the external resolver's stages.

Naming (:class:`~k8spacket.enrich.naming.Naming`, the same chain replay
builds): the Kubernetes cache (when there is a cluster config and
``kubernetes.enabled`` is not ``false``), then the inventory file, then the
external resolver (GeoIP, optional registries), which treats every address the
first two name as not external. Readiness adds "Kubernetes cache synced".

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
from typing import TYPE_CHECKING, cast

from k8spacket.capture.bpf import compile_filter
from k8spacket.capture.interfaces import InterfaceFilter, InterfaceWatcher
from k8spacket.capture.local import LocalAddresses
from k8spacket.capture.reader import CaptureReader, InterfaceStats
from k8spacket.capture.ring import PacketRing
from k8spacket.config import ConfigError, Settings
from k8spacket.enrich.naming import Namer, Naming
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.metrics.capture_collector import CaptureCollector
from k8spacket.metrics.collector import build_registry
from k8spacket.metrics.labels import LabelPolicy, LabelPolicyError
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer

if TYPE_CHECKING:
    from k8spacket.enrich.k8s import K8sCache
    from k8spacket.enrich.k8s_index import Key, PodInfo

log = logging.getLogger(__name__)

#: seconds between two looks at the cache's pods (local addresses, deleted pods)
POD_SYNC_PERIOD = 0.5


class Agent:
    """Wires capture, tracking, records and HTTP from one :class:`Settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        namers: list[Namer] | None = None,
        clock: Callable[[], float] = time.time,
        k8s: K8sCache | str | None = "auto",
    ) -> None:
        self.settings = settings
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
        self.naming = Naming.from_settings(s, k8s)
        self.namers = self.naming.namers() + list(namers or [])
        if self.naming.k8s is not None:
            self.ready_checks.append(self.naming.k8s.ready)
        self.node_name = s.kubernetes.node_name
        self._pods: dict[Key, PodInfo] = {}  # the cache's pods at the last look
        self._pods_mark: tuple[int, ...] = ()
        self.store = ConnectionStore(s.http.connection_store)
        self.local = LocalAddresses()
        self.tracker = ConnectionTracker(
            self._sink,
            close_older_than=s.tracker.close_older_than,
            flush_period=s.tracker.flush_period,
            forget_after=s.tracker.forget_after,
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
            decode_errors=self._decode_errors,
            enrichment_lookups=(
                self.naming.external.counts.snapshot if self.naming.external else None
            ),
            k8s_watch_events=self.naming.k8s.watch_events_total if self.naming.k8s else None,
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

    def _decode_errors(self) -> dict[str, int]:
        return self.reader.decode_errors()

    def sync_pods(self) -> None:
        """One look at the cache's pods: local addresses, series of deleted pods."""
        cache = self.naming.k8s
        if cache is None:
            return
        stats = cache.stats()
        mark = (sum(cache.watch_events_total().values()), *(s["lists"] for s in stats.values()))
        if mark == self._pods_mark:
            return
        self._pods_mark = mark
        with cache.index.lock:
            pods = cast("dict[Key, PodInfo]", dict(cache.index.objects["pods"]))
        if self.node_name:
            self.local.set_extra(
                ip
                for p in pods.values()
                if p.node == self.node_name and not p.host_network
                for ip in p.ips
            )
        claimed = {ip for p in pods.values() for ip in p.ips}
        for key, old in self._pods.items():
            if key not in pods:
                gone = [ip for ip in old.ips if ip not in claimed]
                n = self.traffic.forget(old.namespace, old.name, ips=gone)
                log.debug("pod %s/%s deleted: %d label sets dropped", old.namespace, old.name, n)
        self._pods = pods

    def _pod_loop(self) -> None:
        while not self._stop.wait(POD_SYNC_PERIOD):
            self.sync_pods()

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
        self.naming.start()
        threads: list[tuple[str, Callable[[], None]]] = [
            ("capture", self.reader.run),
            ("interfaces", self.watcher.run),
        ]
        if self.naming.k8s is not None:
            if not self.node_name:
                log.warning(
                    "kubernetes.nodeName (NODE_NAME) is not set: this node's pods are "
                    "known from their traffic only"
                )
            threads.append(("k8s-pods", self._pod_loop))
        for name, target in threads:
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
        self._stop.set()
        self.watcher.stop()
        self.reader.stop()
        for t in self._threads:
            t.join(timeout=10)
        while self._pending:
            self._publish(self._pending.popleft()[1])
        self.server.stop()
        self.naming.stop()
        log.info(
            "stopped: %d connections, %d records", self.tracker.connections, self.tracker.records
        )
