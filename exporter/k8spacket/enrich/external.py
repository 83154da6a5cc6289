"""Naming external endpoints: the resolver that turns a public address into an
organisation and a country, without ever making the caller wait.

The caller (whoever names connection records) asks :meth:`ExternalResolver.lookup`
or :meth:`ExternalResolver.name_record`. For an external address (see
``classify.py``) it gets, right now, whatever is known; an address seen for the
first time is handed off and the caller gets organisation ``unknown`` now and
the name on a later record. The caller's path takes no lock: one probe of a plain
dict, and on first sight a cheap classification (``is_private``, about 0.3 µs)
and an append to a bounded deque.

This module is the record-naming side and the wiring; each other concern has
its own module:

* ``external_cache.py``: the answers (TTL caches with a lock-free mirror), the
  bounded hand-off, the counts; memory is bounded whatever the traffic;
* ``external_geoip.py``: the GeoIP stage (one thread, ``geoip_duty`` of a core);
* ``external_registry.py``: the registry workers (RDAP, whois, optional reverse
  DNS; ``workers`` threads, ``registry_duty`` of a core together);
* ``duty.py``: the CPU-budget arithmetic both stages use.

Every step is counted by ``(source, result)`` in :attr:`ExternalResolver.counts`
(see :data:`SOURCES`, :data:`RESULTS`); ``metrics/`` renders it as
``k8spacket_enrichment_lookups_total{source,result}``. Nothing here knows of
Prometheus.

Limits: a record keeps the name it was given (records are not re-sent when a
lookup finishes later).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from k8spacket.enrich.classify import AddressClassifier, is_private
from k8spacket.enrich.duty import duty_pause
from k8spacket.enrich.external_cache import (
    PENDING,
    PENDING_ENTRY,
    UNKNOWN_ORG,
    AnswerCache,
    Entry,
    ExternalInfo,
    LookupCounts,
)
from k8spacket.enrich.external_geoip import GeoIPStage
from k8spacket.enrich.external_registry import Registry, RegistryWorkers, reverse_dns_lookup
from k8spacket.enrich.geoip import GeoIPDatabase
from k8spacket.enrich.identity import Identity
from k8spacket.flows.record import ConnectionRecord
from k8spacket.supervise import Supervised, Supervisor

__all__ = [
    "PENDING",
    "RESULTS",
    "SOURCES",
    "UNKNOWN_ORG",
    "ExternalInfo",
    "ExternalResolver",
    "LookupCounts",
    "Registry",
    "duty_pause",
    "reverse_dns_lookup",
]

#: ``source`` label values of ``k8spacket_enrichment_lookups_total`` from external naming.
SOURCES = (
    "queue",
    "geoip",
    "registry_queue",
    "asn_dns",
    "rdap",
    "whois",
    "registry",
    "reverse_dns",
)
#: ``result`` label values.
RESULTS = ("ok", "not_found", "timeout", "refused", "error", "rate_limited", "dropped")


class ExternalResolver:
    """Names external addresses from GeoIP, the registries and (optionally) reverse DNS.

    Implements the ``Resolver`` protocol of ``identity.py`` (put it last in the
    chain) and :meth:`name_record`, which also fills ``*_org`` and ``*_country``.
    ``geoip`` ``None`` means no GeoIP; ``registry`` ``None`` means organisations
    only from the ASN database. ``clock`` drives cache expiry; ``work_clock``
    measures the GeoIP stage's batches and ``cpu_clock`` (per thread) the registry
    workers' CPU time against their duty (see ``external_geoip.py`` and
    ``external_registry.py``).
    """

    def __init__(
        self,
        *,
        geoip: GeoIPDatabase | None,
        registry: Registry | None = None,
        classifier: AddressClassifier | None = None,
        reverse_dns: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 65_536,
        ttl: float = 6 * 3600.0,
        negative_cache_size: int = 16_384,
        negative_ttl: float = 600.0,
        queue_size: int = 4096,
        registry_queue_size: int = 1024,
        workers: int = 4,
        private_cache_size: int = 65_536,
        geoip_duty: float = 0.02,
        registry_duty: float = 0.02,
        interval: float = 0.05,
        work_clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
        start: bool = True,
    ) -> None:
        if min(cache_size, negative_cache_size, queue_size, registry_queue_size, workers) < 1:
            raise ValueError("cache sizes, queue sizes and workers must be at least 1")
        if not (0.0 < geoip_duty <= 1.0 and 0.0 < registry_duty <= 1.0):
            raise ValueError("geoip_duty and registry_duty must be in (0, 1]")
        if interval <= 0.0:
            raise ValueError("interval must be positive")
        self.geoip = geoip
        self.registry = registry
        self.classifier = classifier if classifier is not None else AddressClassifier()
        self.reverse_dns = reverse_dns
        self.workers = workers
        self.answers = AnswerCache(
            clock=clock,
            cache_size=cache_size,
            ttl=ttl,
            negative_cache_size=negative_cache_size,
            negative_ttl=negative_ttl,
            queue_size=queue_size,
            private_cache_size=private_cache_size,
            poll=interval,
        )
        a = self.answers
        # the caller's path reads these directly (the same objects as the cache's)
        self.known = a.known
        self.private = a.private
        self.cache = a.cache
        self.negative_cache = a.negative_cache
        self.counts = a.counts
        self.queue_size = queue_size
        self._queue = a.handoff
        self._stopped = threading.Event()
        self.registry_stage = (
            RegistryWorkers(
                a,
                registry,
                reverse_dns,
                workers=workers,
                queue_size=registry_queue_size,
                duty=registry_duty,
                cpu_clock=cpu_clock,
                stopped=self._stopped,
            )
            if registry is not None or reverse_dns is not None
            else None
        )
        self.geoip_stage = GeoIPStage(
            a,
            geoip,
            self.registry_stage,
            duty=geoip_duty,
            interval=interval,
            work_clock=work_clock,
            stopped=self._stopped,
        )
        self._threads: list[Supervised] = []
        if start:
            self.start()

    @property
    def pending(self) -> set[str]:
        """Addresses handed off or being looked up (a copy; at most both queue sizes
        plus the workers plus one)."""
        return self.answers.pending

    # ------------------------------------------------------------ caller side
    def info(self, ip: str) -> ExternalInfo | None:
        """What is known about ``ip`` now; ``None`` when it is not external.

        Never blocks on a lookup: an unknown external address is queued and
        :data:`PENDING` returned.
        """
        entry = self._entry(ip)
        return None if entry is None else entry[1]

    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        """The ``Resolver`` protocol: ``Identity(hostname, "", org or "unknown", "external")``."""
        entry = self._entry(ip)
        return None if entry is None else entry[0]

    def name_record(self, rec: ConnectionRecord) -> None:
        """Name both ends of ``rec`` in place when they are external.

        An end with no kind yet (``""`` or ``unknown``) that is external gets
        ``kind=external``, ``workload=<organisation>`` (or ``unknown``), ``name``
        (the reverse-DNS name when enabled), ``org`` and ``country``. An end an
        earlier source already called ``external`` (an inventory entry) keeps its
        name and workload (unless that is empty or ``unknown``) and gets
        ``org``/``country`` filled in.
        """
        # flat and duplicated for both ends, no method calls on the way to a known
        # answer: this runs for every record (AnswerCache.miss inlined)
        known = self.known
        private = self.private
        is_named = self.classifier.is_named
        kind = rec.dst_kind
        if kind == "" or kind == "unknown":
            ip = rec.dst
            if ip in private:
                pass  # private addresses are never in known: one probe for a pod's end
            elif is_named is None or not is_named(ip):
                entry = known.get(ip)
                if entry is None:
                    if is_private(ip):
                        self.answers.remember_private(ip)
                    else:
                        entry = PENDING_ENTRY
                        handoff = self._queue
                        if len(handoff) < self.queue_size:
                            known[ip] = entry
                            handoff.append(ip)
                        else:
                            self.counts.handoff_dropped += 1
                if entry is not None:
                    _, _, rec.dst_name, rec.dst_workload, rec.dst_org, rec.dst_country = entry
                    rec.dst_kind = "external"
                    rec.dst_namespace = ""
        elif kind == "external":
            entry = self._entry_any(rec.dst)
            if entry is not None:
                _, _, _, workload, rec.dst_org, rec.dst_country = entry
                if rec.dst_workload in ("", UNKNOWN_ORG):
                    rec.dst_workload = workload
        kind = rec.src_kind
        if kind == "" or kind == "unknown":
            ip = rec.src
            if ip in private:
                pass  # private addresses are never in known: one probe for a pod's end
            elif is_named is None or not is_named(ip):
                entry = known.get(ip)
                if entry is None:
                    if is_private(ip):
                        self.answers.remember_private(ip)
                    else:
                        entry = PENDING_ENTRY
                        handoff = self._queue
                        if len(handoff) < self.queue_size:
                            known[ip] = entry
                            handoff.append(ip)
                        else:
                            self.counts.handoff_dropped += 1
                if entry is not None:
                    _, _, rec.src_name, rec.src_workload, rec.src_org, rec.src_country = entry
                    rec.src_kind = "external"
                    rec.src_namespace = ""
        elif kind == "external":
            entry = self._entry_any(rec.src)
            if entry is not None:
                _, _, _, workload, rec.src_org, rec.src_country = entry
                if rec.src_workload in ("", UNKNOWN_ORG):
                    rec.src_workload = workload

    def _entry(self, ip: str) -> Entry | None:
        is_named = self.classifier.is_named
        if is_named is not None and is_named(ip):
            return None
        return self._entry_any(ip)

    def _entry_any(self, ip: str) -> Entry | None:
        """Like :meth:`_entry` but ignores ``is_named`` (the inventory said external)."""
        entry = self.known.get(ip)
        if entry is not None:
            return entry
        if ip in self.private:
            return None
        return self.answers.miss(ip)

    # -------------------------------------------------------------- workers
    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the GeoIP thread and the registry workers (idempotent), supervised by
        ``supervisor`` (the agent's; a private one when not given)."""
        if self._threads:
            return
        self._stopped.clear()
        sup = supervisor if supervisor is not None else Supervisor()
        self._threads.append(sup.spawn("k8spacket-geoip", self.geoip_stage.run))
        if self.registry_stage is not None:
            for i in range(self.workers):
                self._threads.append(sup.spawn(f"k8spacket-whois-{i}", self.registry_stage.run))

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers; threads stuck in a hung registry are left to die with the
        process (they are daemons)."""
        self._stopped.set()
        if self.registry_stage is not None:
            self.registry_stage.wake_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (for replay, tests, benchmarks)."""
        return self.answers.wait_idle(timeout)

    def expire(self) -> None:
        """Drop aged entries now (the GeoIP stage does it on every batch)."""
        self.answers.expire()

    def geoip_batch(self) -> float:
        """One batch of the GeoIP stage; returns the seconds to pause before the next
        (see :meth:`GeoIPStage.batch`)."""
        return self.geoip_stage.batch()

    def drain_now(self) -> int:
        """Look up every handed-off address on the calling thread; return how many.

        For offline use (``k8spacket replay``), where there is no packet path to
        protect and the first record should already carry the name: call it after
        :meth:`name_record`, then name the record again. Use it on a resolver built
        with ``start=False``; the duty budget does not apply.
        """
        return self.geoip_stage.drain_now()
