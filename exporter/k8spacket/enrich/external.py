"""Naming external endpoints: the resolver that turns a public address into an
organisation and a country, without ever making the caller wait.

The caller (whoever names connection records) asks :meth:`ExternalResolver.lookup`
or :meth:`ExternalResolver.name_record`. For an external address (see
``classify.py``) it gets, right now, whatever the caches hold; an address seen for
the first time is queued and the caller gets organisation ``unknown`` now and the
name on a later record. Two background stages do the work:

* the **GeoIP stage** (one thread): country, city, and, with an ASN database,
  the organisation (``geoip.py``), a few tens of microseconds each. It yields
  the interpreter lock after every address so that it takes little CPU from the
  packet path while that is busy;
* the **registry stage** (``workers`` threads): only for addresses the ASN
  database does not name, RDAP then whois (``whois.py``, rate limited per
  registry), and reverse DNS when enabled (off by default: provider hostnames
  such as ``ec2-3-5-7-9.compute.amazonaws.com`` are noise).

Both queues are bounded: an address that finds its queue full is not looked up
this time (a counted drop, ``("queue"|"registry_queue", "dropped")``) and is tried
again when it shows up on a later record. Results go to a TTL cache (named) or a
shorter-lived negative cache (no organisation found, or the registries failed),
both from cachetools with fixed ``maxsize``; the addresses in flight are bounded
by the queue sizes. So memory is bounded whatever the traffic.

Every step is counted by ``(source, result)`` in :attr:`ExternalResolver.counts`
(see :data:`SOURCES`, :data:`RESULTS`); ``metrics/`` renders it as
``k8spacket_enrichment_lookups_total{source,result}``. This module knows nothing
of Prometheus.

Limits: a record keeps the name it was given (records are not re-sent when a
lookup finishes later); a hung registry holds one worker for ``timeout`` seconds
per step, so with every worker held new addresses are dropped (and counted)
rather than queued without end.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cachetools import TTLCache

from k8spacket.enrich.classify import AddressClassifier, is_private
from k8spacket.enrich.geoip import GeoAnswer, GeoIPDatabase, GeoIPLookupError
from k8spacket.enrich.identity import Identity
from k8spacket.enrich.whois import RegistryResult, failure_kind
from k8spacket.flows.record import ConnectionRecord

log = logging.getLogger(__name__)

#: ``source`` label values of ``k8spacket_enrichment_lookups_total`` from this module.
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
#: The workload (and metric label) of an external end whose organisation is not known.
UNKNOWN_ORG = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class ExternalInfo:
    """What is known about an external address (empty strings when nothing)."""

    org: str = ""
    country: str = ""
    asn: int | None = None
    city: str = ""
    hostname: str = ""


class Registry(Protocol):
    """Something that names an address from the Internet registries (``whois.RegistryClient``)."""

    def lookup(self, ip: str) -> RegistryResult: ...


#: What the caller gets for an external address whose lookup has not finished.
PENDING = ExternalInfo()
_PENDING_ENTRY = (Identity("", "", UNKNOWN_ORG, "external"), PENDING)


def reverse_dns_lookup(ip: str) -> str | None:
    """The PTR name of ``ip`` via the system resolver (``None`` when there is none)."""
    try:
        return socket.gethostbyaddr(ip)[0]
    except socket.herror:
        return None


class LookupCounts:
    """Thread-safe ``(source, result) → count``."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, source: str, result: str, n: int = 1) -> None:
        with self._lock:
            key = (source, result)
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


_Entry = tuple[Identity, ExternalInfo]


class _MirroredTTLCache(TTLCache[str, _Entry]):
    """A TTLCache that removes what it evicts or expires from a plain dict mirror.

    The mirror is what the caller reads, without a lock and in one dict probe; the
    cache stays the authority on size and age. Writers hold the resolver's lock.
    """

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], mirror: dict[str, _Entry]
    ) -> None:
        super().__init__(maxsize, ttl, timer=timer)
        self.mirror = mirror

    def popitem(self) -> tuple[str, _Entry]:
        key, value = super().popitem()
        if self.mirror.get(key) is value:
            del self.mirror[key]
        return key, value

    def expire(self, time: float | None = None) -> list[tuple[str, _Entry]]:
        expired = list(super().expire(time))
        for key, value in expired:
            if self.mirror.get(key) is value:
                del self.mirror[key]
        return expired


class ExternalResolver:
    """Names external addresses from GeoIP, the registries and (optionally) reverse DNS.

    Implements the ``Resolver`` protocol of ``identity.py`` (put it last in the
    chain) and :meth:`name_record`, which also fills ``*_org`` and ``*_country``.
    ``geoip`` ``None`` means no GeoIP; ``registry`` ``None`` means organisations
    only from the ASN database. ``clock`` drives cache expiry; ``yield_`` is what
    the GeoIP stage calls between addresses (default ``time.sleep(0)``).
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
        yield_: Callable[[], None] = lambda: time.sleep(0),
        start: bool = True,
    ) -> None:
        if min(cache_size, negative_cache_size, queue_size, registry_queue_size, workers) < 1:
            raise ValueError("cache sizes, queue sizes and workers must be at least 1")
        self.geoip = geoip
        self.registry = registry
        self.classifier = classifier if classifier is not None else AddressClassifier()
        self.reverse_dns = reverse_dns
        self.queue_size = queue_size
        self.workers = workers
        #: what callers read: cached answers and addresses in flight (one dict probe)
        self.known: dict[str, _Entry] = {}
        self.cache = _MirroredTTLCache(cache_size, ttl, clock, self.known)
        self.negative_cache = _MirroredTTLCache(
            negative_cache_size, negative_ttl, clock, self.known
        )
        #: addresses known to be private (static facts), cleared when full
        self.private: dict[str, bool] = {}
        self.private_cache_size = private_cache_size
        #: addresses queued or being looked up (at most both queue sizes + workers)
        self.pending: set[str] = set()
        self.counts = LookupCounts()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._registry_queue: queue.Queue[tuple[str, ExternalInfo] | None] = queue.Queue(
            registry_queue_size
        )
        self._yield = yield_
        self._stop = False
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

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
        kind = rec.dst_kind
        if kind == "" or kind == "unknown" or kind == "external":
            entry = self._entry(rec.dst) if kind != "external" else self._entry_any(rec.dst)
            if entry is not None:
                ident, info = entry
                if kind != "external":
                    rec.dst_kind = "external"
                    rec.dst_name = ident.name
                    rec.dst_namespace = ""
                    rec.dst_workload = ident.workload
                elif rec.dst_workload in ("", UNKNOWN_ORG):
                    rec.dst_workload = ident.workload
                rec.dst_org = info.org
                rec.dst_country = info.country
        kind = rec.src_kind
        if kind == "" or kind == "unknown" or kind == "external":
            entry = self._entry(rec.src) if kind != "external" else self._entry_any(rec.src)
            if entry is not None:
                ident, info = entry
                if kind != "external":
                    rec.src_kind = "external"
                    rec.src_name = ident.name
                    rec.src_namespace = ""
                    rec.src_workload = ident.workload
                elif rec.src_workload in ("", UNKNOWN_ORG):
                    rec.src_workload = ident.workload
                rec.src_org = info.org
                rec.src_country = info.country

    def _entry(self, ip: str) -> _Entry | None:
        is_named = self.classifier.is_named
        if is_named is not None and is_named(ip):
            return None
        entry = self.known.get(ip)
        if entry is not None:
            return entry
        if ip in self.private:
            return None
        return self._miss(ip)

    def _entry_any(self, ip: str) -> _Entry | None:
        """Like :meth:`_entry` but ignores ``is_named`` (the inventory said external)."""
        entry = self.known.get(ip)
        if entry is not None:
            return entry
        if ip in self.private:
            return None
        return self._miss(ip)

    def _miss(self, ip: str) -> _Entry | None:
        """First sight of ``ip`` (or its entry expired): classify, then queue it."""
        if is_private(ip):
            private = self.private
            if len(private) >= self.private_cache_size:
                private.clear()
            private[ip] = True
            return None
        with self._lock:
            entry = self.known.get(ip)
            if entry is not None:
                return entry
            if ip in self.pending:
                return _PENDING_ENTRY
            if len(self._queue) >= self.queue_size:
                dropped = True
            else:
                dropped = False
                self.pending.add(ip)
                self.known[ip] = _PENDING_ENTRY
                self._queue.append(ip)
        if dropped:
            self.counts.add("queue", "dropped")
        elif not self._wake.is_set():
            self._wake.set()
        return _PENDING_ENTRY

    # -------------------------------------------------------------- workers
    def start(self) -> None:
        """Start the GeoIP thread and the registry workers (idempotent)."""
        if self._threads:
            return
        self._stop = False
        t = threading.Thread(target=self._geo_loop, name="k8spacket-geoip", daemon=True)
        self._threads.append(t)
        if self.registry is not None or self.reverse_dns is not None:
            for i in range(self.workers):
                self._threads.append(
                    threading.Thread(
                        target=self._registry_loop, name=f"k8spacket-whois-{i}", daemon=True
                    )
                )
        for t in self._threads:
            t.start()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers; threads stuck in a hung registry are left to die with the
        process (they are daemons)."""
        self._stop = True
        self._wake.set()
        for _ in range(self.workers):
            try:
                self._registry_queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (for replay, tests, benchmarks)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self.pending, timeout)

    def _store(self, ip: str, info: ExternalInfo, *, done: bool) -> None:
        entry = (Identity(info.hostname, "", info.org or UNKNOWN_ORG, "external"), info)
        with self._lock:
            if info.org:
                self.negative_cache.pop(ip, None)
                self.cache[ip] = entry
            else:
                self.cache.pop(ip, None)
                self.negative_cache[ip] = entry
            self.known[ip] = entry
            if done:
                self.pending.discard(ip)
                if not self.pending:
                    self._idle.notify_all()

    def expire(self) -> None:
        """Drop aged entries now (the GeoIP thread does it every ``sweep`` seconds)."""
        with self._lock:
            self.cache.expire()
            self.negative_cache.expire()

    def _geo_loop(self) -> None:
        q = self._queue
        while not self._stop:
            self._wake.wait(0.5)
            self._wake.clear()
            self.expire()
            while q and not self._stop:
                ip = q.popleft()
                self._geo_one(ip)
                self._yield()

    def _geo_one(self, ip: str) -> None:
        geo: GeoAnswer | None = None
        if self.geoip is not None:
            try:
                geo = self.geoip.lookup(ip)
            except GeoIPLookupError as e:
                self.counts.add("geoip", "error")
                log.warning("GeoIP lookup failed: %s", e)
            else:
                self.counts.add("geoip", "ok" if geo is not None else "not_found")
        info = (
            ExternalInfo(org=geo.org, country=geo.country, asn=geo.asn, city=geo.city)
            if geo is not None
            else ExternalInfo()
        )
        slow = (self.registry is not None and not info.org) or self.reverse_dns is not None
        if not slow:
            self._store(ip, info, done=True)
            return
        try:
            self._registry_queue.put_nowait((ip, info))
        except queue.Full:
            self.counts.add("registry_queue", "dropped")
            self._store(ip, info, done=True)
            return
        # the country shows while the registries are asked; still pending
        self._store(ip, info, done=False)

    def _registry_loop(self) -> None:
        q = self._registry_queue
        while True:
            item = q.get()
            if item is None or self._stop:
                return
            ip, info = item
            try:
                info = self._registry_one(ip, info)
            finally:
                self._store(ip, info, done=True)

    def _registry_one(self, ip: str, info: ExternalInfo) -> ExternalInfo:
        if self.registry is not None and not info.org:
            try:
                result = self.registry.lookup(ip)
            except Exception:  # a worker must survive whatever the registry sends; counted
                self.counts.add("registry", "error")
                log.exception("registry lookup of %s failed", ip)
            else:
                for source, outcome in result.steps:
                    self.counts.add(source, outcome)
                ans = result.answer
                if ans is not None:
                    info = dataclasses.replace(
                        info,
                        org=info.org or ans.org,
                        country=info.country or ans.country,
                        asn=info.asn if info.asn is not None else ans.asn,
                    )
        if self.reverse_dns is not None:
            try:
                host = self.reverse_dns(ip)
            except OSError as e:
                self.counts.add("reverse_dns", failure_kind(e))
            else:
                self.counts.add("reverse_dns", "ok" if host else "not_found")
                if host:
                    info = dataclasses.replace(info, hostname=host)
        return info
