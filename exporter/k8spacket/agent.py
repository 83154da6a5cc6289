"""The node agent (``k8spacket run``): capture + tracker + records + HTTP.

Threads (every one started and supervised by a
:class:`~k8spacket.supervise.Supervisor`: an unexpected exception is logged with
its traceback, counted in ``k8spacket_thread_restarts_total{thread}`` and the
loop restarted with backoff; when it keeps failing ``/healthz`` fails):

* ``capture``: :class:`~k8spacket.capture.reader.CaptureReader` reads every
  ring, decodes, applies the exactly-once rule, feeds the tracker and runs its
  timer; the tracker's records go into the publisher's bounded queue
  (:meth:`~k8spacket.publish.Publisher.offer`, a full queue is a counted drop);
* ``publisher``: :class:`~k8spacket.publish.Publisher` waits the settle delay
  (0.25 s + the block timeout), decides each connection's ``reporter`` once,
  names the record, applies the exactly-once rule across agents and the
  Service (DNAT) pairing, and hands the record to the connection store, the
  traffic metrics and ``record_sinks``;
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
final record, publishes everything queued and closes the server. Hooks for
other parts: ``namers`` (callables that fill identity fields of a record),
``record_sinks`` (consumers of counted records, e.g. the graph's local edge
store), ``local.set_extra`` (pod IPs on this node from the Kubernetes cache)
and ``ready_checks``.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from k8spacket.capture.bpf import capture_programs
from k8spacket.capture.conntrack import ConntrackClient
from k8spacket.capture.interfaces import InterfaceFilter, InterfaceWatcher, netlink_pod_routes
from k8spacket.capture.local import LocalAddresses, netlink_bridge_pods
from k8spacket.capture.privileges import capture_denied
from k8spacket.capture.reader import CaptureReader, InterfaceStats
from k8spacket.capture.ring import PacketRing
from k8spacket.config import ConfigError, Settings
from k8spacket.enrich.naming import Namer, Naming
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.metrics.capture_collector import CaptureCollector
from k8spacket.metrics.collector import build_registry
from k8spacket.metrics.graph_collector import GraphCollector
from k8spacket.metrics.labels import LabelPolicy, LabelPolicyError
from k8spacket.metrics.publish_collector import PublishCollector
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.nodegraph.api import graph_api_from_settings
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.render import graph_page_route
from k8spacket.nodegraph.sources import PEER_ERROR_REASONS, AgentsSource, SourceError
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.publish import Publisher, RecordSink
from k8spacket.server import AgentHTTPServer
from k8spacket.supervise import Supervised, Supervisor

if TYPE_CHECKING:
    from k8spacket.enrich.k8s import K8sCache
    from k8spacket.enrich.k8s_index import Key, PodInfo

log = logging.getLogger(__name__)

#: seconds between two looks at the cache's pods (local addresses, deleted pods)
POD_SYNC_PERIOD = 0.5
#: the interpreter's thread switch interval while the agent runs (default 5 ms)
SWITCH_INTERVAL = 0.001
#: seconds between two ``gc.freeze()`` calls (see :meth:`Agent._gc_loop`)
GC_FREEZE_PERIOD = 1.0
#: the collector's third threshold while the agent runs: full collections never start by themselves
NO_FULL_COLLECTIONS = 1 << 30
#: seconds the final flush and its publishing may take at shutdown in all (the
#: chart's default grace period is 30 s; the kubelet kills the pod after it)
SHUTDOWN_SECONDS = 25.0


def host_pod_addresses() -> list[tuple[str, int]]:
    """(address, ifindex) of pods as the host namespace shows them: host routes via a
    link, and the bridges' neighbour and forwarding tables (``capture.local``)."""
    return netlink_pod_routes() + netlink_bridge_pods()


def build_conntrack(settings: Settings) -> ConntrackClient | None:
    """The conntrack client for Service (DNAT) pairs, or ``None`` (``capture.conntrack``).

    ``auto`` uses conntrack when the kernel lets us (``CAP_NET_ADMIN``; one
    warning and off otherwise); ``true`` makes a refused probe a start-up error.
    """
    mode = settings.capture.conntrack
    if mode == "false":
        return None
    client = ConntrackClient()
    if mode == "true":
        try:
            client.get(("127.0.0.1", 1, "127.0.0.1", 1))
        except OSError as e:
            client.close()
            raise ConfigError(
                f"capture.conntrack: true, but conntrack cannot be read ({e.strerror}; "
                "it needs CAP_NET_ADMIN and the nf_conntrack_netlink module)"
            ) from None
    return client


def graph_peers(settings: Settings, cache: K8sCache | None) -> Callable[[], list[str]] | None:
    """The agents the ``agents`` graph source asks: the DaemonSet's pods, listed per question.

    ``None`` without a Kubernetes cache (a static ``graph.peers`` list is handled by
    the graph API itself). Pods are hostNetwork, so a pod's address is its node's.
    """
    if cache is None:
        return None
    from k8spacket.enrich.k8s import list_agent_addresses

    g = settings.graph
    port = g.peer_port or settings.http.port

    def peers() -> list[str]:
        ips = list_agent_addresses(cache.api_client, g.peer_namespace, g.peer_selector)
        return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]

    return peers


class Agent:
    """Wires capture, tracking, records and HTTP from one :class:`Settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        namers: list[Namer] | None = None,
        clock: Callable[[], float] = time.time,
        k8s: K8sCache | str | None = "auto",
        supervisor: Supervisor | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor or Supervisor()
        #: what /readyz says when a check fails → the check (hook for other parts)
        self.ready_checks: dict[str, Callable[[], bool]] = {}
        #: why packets cannot be captured (no CAP_NET_RAW), found at start()
        self.capture_problem: str | None = None
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
            self.program, lean_program = capture_programs(
                s.capture.mode, s.capture.filter, s.capture.snap_length, s.capture.lean_boundary
            )
        except ValueError as e:
            raise ConfigError(f"capture.filter: {e}") from None
        self.naming = Naming.from_settings(s, k8s)
        self.namers = self.naming.namers() + list(namers or [])
        if self.naming.k8s is not None:
            self.ready_checks["Kubernetes cache not synced yet"] = self.naming.k8s.ready
        self.node_name = s.kubernetes.node_name
        self._pods: dict[Key, PodInfo] = {}  # the cache's pods at the last look
        self._pods_mark: tuple[int, ...] = ()
        self.store = ConnectionStore(s.http.connection_store)
        self.local = LocalAddresses()
        self.settle = 0.25 + s.capture.block_timeout
        #: consumers of counted records, after the store and the traffic metrics
        self.record_sinks: list[RecordSink] = []
        self.conntrack = build_conntrack(s)
        self.publisher = Publisher(
            is_local=self.local.is_local,
            namers=self.namers,
            store=self.store.add,
            traffic=self.traffic.record,
            record_sinks=self.record_sinks,
            nat=self.conntrack,
            settle=self.settle,
        )
        self.tracker = ConnectionTracker(
            self.publisher.offer,
            close_older_than=s.tracker.close_older_than,
            flush_period=s.tracker.flush_period,
            forget_after=s.tracker.forget_after or None,  # 0: the tracker's default
            max_connections=s.tracker.max_connections,
            is_local=self.local.is_local,
            lean=s.capture.mode == "lean",
        )
        self.reader = CaptureReader(
            self.tracker,
            self.local,
            clock=clock,
            lean_program=lean_program,
            lean_warmup=s.capture.lean_warmup,
        )
        self.watcher = InterfaceWatcher(
            self.reader,
            self._open_ring,
            interface_filter=InterfaceFilter(
                s.capture.interfaces.include, s.capture.interfaces.exclude
            ),
            command=s.capture.interfaces.command or None,
            refresh_period=s.capture.interfaces.refresh_period,
            list_pod_routes=host_pod_addresses,
        )
        self.reader.on_ring_error = self.watcher.request_sync
        self._clock = clock
        sources = SelfMetricSources(
            capture_packets=lambda: {n: st.packets for n, st in self._istats().items()},
            capture_drops=lambda: {n: st.drops for n, st in self._istats().items()},
            capture_interfaces=lambda: len(self.reader.interfaces),
            decode_errors=self._decode_errors,
            enrichment_lookups=(
                self.naming.external.counts.snapshot if self.naming.external else None
            ),
            k8s_watch_events=self.naming.k8s.watch_events_total if self.naming.k8s else None,
            thread_restarts=self.supervisor.restarts,
        ).with_tracker(self.tracker)
        self.registry = build_registry(self.traffic, sources)
        self.registry.register(
            CaptureCollector(
                self.watcher.skipped_counts,
                lambda: {n: st.not_owner for n, st in self._istats().items()},
            )
        )
        self.graph_store = LocalGraphStore(s.graph.window, s.graph.bucket)
        self.graph = graph_api_from_settings(
            s,
            self.graph_store,
            peers=graph_peers(s, self.naming.k8s),
            in_cluster=self.naming.k8s is not None,
            node=self.node_name,
            clock=clock,
        )
        self.record_sinks.append(self.graph_store.add)
        agents = self.graph.sources.get("agents")
        self.registry.register(
            GraphCollector(
                agents.error_counts
                if isinstance(agents, AgentsSource)
                else lambda: dict.fromkeys(PEER_ERROR_REASONS, 0)
            )
        )
        self.registry.register(
            PublishCollector(
                lambda: self.publisher.dropped,
                self.publisher.counters,
                lambda: self.publisher.nat_errors,
            )
        )
        self.server = AgentHTTPServer(
            s.http.host,
            s.http.port,
            self.registry.scrape_chunks,
            self.store,
            self.readiness,
            liveness=self.supervisor.health,
            raw_routes={
                **self.graph.routes(),
                "/graph": graph_page_route(self.graph.graph, unavailable=(SourceError,)),
            },
        )
        self._stop = threading.Event()
        self._threads: list[Supervised] = []

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

    def _gc_loop(self) -> None:
        """Keep the cyclic garbage collector's passes off the capture thread's back.

        With 500,000 open connections the heap holds millions of objects, and a
        full collection (CPython starts one whenever long-lived objects grew by
        a quarter, in whichever thread allocates at that moment, often the
        capture thread) walks every long-lived object with the interpreter lock
        held: ``bench/capture_stall.py`` measured 88 ms for one, with 10 s of
        survivors since the last freeze. While this loop runs, automatic full
        collections are off (the third threshold is out of reach; the young
        generations are collected as usual, by allocation), and every
        ``GC_FREEZE_PERIOD`` it collects the young generations and moves every
        survivor to the permanent generation (``gc.freeze``, constant time), so
        that a full collection someone asks for (``gc.collect()``) skips them
        too. Objects are still freed by reference counting, so the tracker's
        connections and the records (no reference cycles) come and go as
        before; the price is that a reference cycle which outlives a young
        collection and only then becomes garbage is not reclaimed (none is known
        on the agent's paths). The thresholds are restored when the loop ends.
        """
        young0, young1, full = gc.get_threshold()
        gc.set_threshold(young0, young1, NO_FULL_COLLECTIONS)
        try:
            while True:
                gc.collect(1)
                gc.freeze()
                if self._stop.wait(GC_FREEZE_PERIOD):
                    return
        finally:
            gc.set_threshold(young0, young1, full)

    def _open_ring(self, name: str) -> PacketRing:
        c = self.settings.capture
        return PacketRing(
            name,
            self.program,
            ring_bytes=c.ring_size,
            block_size=c.block_size,
            block_timeout_ms=max(1, round(c.block_timeout * 1000)),
        )

    def readiness(self) -> list[str]:
        """The readiness conditions that fail now (empty: ready); what /readyz says."""
        failed: list[str] = []
        if self.capture_problem is not None:
            failed.append(self.capture_problem)
        if not self.reader.running.is_set():
            failed.append("capture thread not running")
        if self.watcher.syncs == 0:
            failed.append("interfaces not listed yet")
        failed += [what for what, check in self.ready_checks.items() if not check()]
        return failed

    def ready(self) -> bool:
        """Capture permitted and running, interfaces listed once, every extra check true."""
        return not self.readiness()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        # The capture thread must get the interpreter lock back within a few
        # milliseconds while a scrape or the publisher computes (the default 5 ms
        # switch interval, several times over, is longer than a block timeout).
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.capture_problem = capture_denied()
        if self.capture_problem is not None:
            log.error(
                "%s: nothing will be captured; /readyz fails until it is", self.capture_problem
            )
        self.server.start()
        log.info("listening on http://%s:%d", self.settings.http.host, self.server.port)
        self.naming.start(self.supervisor)
        sup = self.supervisor
        self._threads = [
            sup.spawn("capture", self.reader.run, backoff_initial=0.1),
            sup.spawn("publisher", self.publisher.run),
            sup.spawn("interfaces", self.watcher.run),
        ]
        if self.naming.k8s is not None:
            if not self.node_name:
                log.warning(
                    "kubernetes.nodeName (NODE_NAME) is not set: this node's pods are "
                    "known from their traffic only"
                )
            self._threads.append(sup.spawn("k8s-pods", self._pod_loop))
        self._threads.append(sup.spawn("gc", self._gc_loop))

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Start, block until :meth:`stop`, then shut down cleanly."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._stop.set()
        self.supervisor.stop()
        self.watcher.stop()
        self.publisher.block()  # the final flush waits for room: no record lost
        self.reader.stop()
        # the final flush and its publishing share one budget, within the pod's
        # grace period (the chart's default 30 s)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        publisher = None
        for t in self._threads:
            if t.name == "publisher":
                publisher = t
                continue
            t.join(timeout=max(0.1, min(10.0, deadline - time.monotonic())))
        if not any(t.name == "capture" and t.is_alive() for t in self._threads):
            self.reader.close()  # the capture loop does this itself unless it was given up on
        self.publisher.close()
        if publisher is not None:
            publisher.join(timeout=max(0.1, deadline - time.monotonic()))
        busy = publisher is not None and publisher.is_alive()
        if busy:
            # never publish on two threads at once (they would share the decisions
            # and the conntrack socket): what the thread has not reached is lost
            log.warning(
                "shutdown: %d records not published within %.0f s (the publisher is still busy)",
                self.publisher.queued(),
                SHUTDOWN_SECONDS,
            )
        else:
            self.publisher.drain()  # what is left when no publisher thread ran (or it gave up)
        self.server.stop()
        self.naming.stop()
        if self.conntrack is not None and not busy:  # else the publisher closes it when done
            self.conntrack.close()
        log.info(
            "stopped: %d connections, %d records, %d published, %d dropped, %d conntrack errors",
            self.tracker.connections,
            self.tracker.records,
            self.publisher.published,
            self.publisher.dropped,
            self.publisher.nat_errors,
        )
