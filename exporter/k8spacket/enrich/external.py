"""Naming external endpoints: the resolver that turns a public address into an
organisation and a country, without ever making the caller wait.

The caller (whoever names connection records) asks :meth:`ExternalResolver.lookup`
or :meth:`ExternalResolver.name_record`. For an external address (see
``classify.py``) it gets, right now, whatever is known; an address seen for the
first time is handed off and the caller gets organisation ``unknown`` now and
the name on a later record. The caller's path takes no lock: one probe of a plain
dict (:attr:`ExternalResolver.known`, a mirror of the caches that only the
background stages write), and on first sight a cheap classification
(``is_private``, about 0.3 µs) and an append to a bounded ``collections.deque``.

Two background stages do the work, each on a CPU budget so that neither can slow
the packet path much, however many new addresses arrive:

* the **GeoIP stage** (one thread): country, city, and, with an ASN database,
  the organisation (``geoip.py``), a few tens of microseconds each. It polls the
  hand-off every ``interval`` (default 50 ms) and works through it for at most
  ``geoip_duty * interval`` (default 2% → 1 ms), then sleeps; a batch that
  overruns (one slow lookup) stretches the pause so the average stays at
  ``geoip_duty`` of one core. Time is wall time (``work_clock``): while this
  thread runs Python it holds the interpreter lock the packet path needs;
* the **registry stage** (``workers`` threads): only for addresses the ASN
  database does not name, RDAP then whois (``whois.py``, rate limited per
  registry), and reverse DNS when enabled (off by default: provider hostnames
  such as ``ec2-3-5-7-9.compute.amazonaws.com`` are noise). After each address a
  worker sleeps in proportion to the CPU time (``cpu_clock``) it spent, so all
  workers together stay within ``registry_duty`` of one core; time spent waiting
  on the network costs nothing.

Both stages are bounded: an address that finds the hand-off (``queue_size``) or
the registry queue (``registry_queue_size``) full is not looked up this time (a
counted drop, ``("queue"|"registry_queue", "dropped")``) and is tried again when
it shows up on a later record. When new addresses arrive faster than the GeoIP
budget allows, the hand-off fills and the surplus is dropped this way. Results go
to a TTL cache (named) or a shorter-lived negative cache (no organisation found,
or the registries failed), both from cachetools with fixed ``maxsize``; the
addresses in flight are bounded by the queue sizes. So memory is bounded
whatever the traffic.

Every step is counted by ``(source, result)`` in :attr:`ExternalResolver.counts`
(see :data:`SOURCES`, :data:`RESULTS`); ``metrics/`` renders it as
``k8spacket_enrichment_lookups_total{source,result}``. This module knows nothing
of Prometheus.

Limits: a record keeps the name it was given (records are not re-sent when a
lookup finishes later); a hung registry holds one worker for ``timeout`` seconds
per step, so with every worker held new addresses are dropped (and counted)
rather than queued without end. The hand-off drop counter is written without a
lock: exact with one calling thread (the packet path), it may miss a drop when
several threads name records at the same instant.
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


#: What :attr:`ExternalResolver.known` holds per address: the identity, the info, and
#: (flat, for the caller's path) the name, workload, organisation and country.
_Entry = tuple[Identity, ExternalInfo, str, str, str, str]

#: What the caller gets for an external address whose lookup has not finished.
PENDING = ExternalInfo()
_PENDING_ENTRY: _Entry = (
    Identity("", "", UNKNOWN_ORG, "external"),
    PENDING,
    "",
    UNKNOWN_ORG,
    "",
    "",
)


def reverse_dns_lookup(ip: str) -> str | None:
    """The PTR name of ``ip`` via the system resolver (``None`` when there is none)."""
    try:
        return socket.gethostbyaddr(ip)[0]
    except socket.herror:
        return None


class LookupCounts:
    """Thread-safe ``(source, result) → count``.

    :attr:`handoff_dropped` is the one count the caller's path writes, as a plain
    integer without the lock (``("queue", "dropped")`` in :meth:`snapshot`).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        #: new addresses that found the hand-off full (written by the caller only)
        self.handoff_dropped = 0

    def add(self, source: str, result: str, n: int = 1) -> None:
        with self._lock:
            key = (source, result)
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            out = dict(self._counts)
        dropped = self.handoff_dropped
        if dropped:
            out[("queue", "dropped")] = out.get(("queue", "dropped"), 0) + dropped
        return out


def duty_pause(spent: float, elapsed: float, duty: float) -> float:
    """Seconds to sleep after ``spent`` seconds of work in ``elapsed`` seconds, so
    that work stays at most ``duty`` (a fraction) of the time: ``spent / duty -
    elapsed``, never negative."""
    return max(0.0, spent / duty - elapsed)


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
    only from the ASN database. ``clock`` drives cache expiry; ``work_clock``
    measures the GeoIP stage's batches and ``cpu_clock`` (per thread) the registry
    workers' CPU time against their duty (see the module docstring).
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
        self.counts = LookupCounts()
        #: the GeoIP stage works at most this fraction of the time, in batches of at
        #: most ``geoip_duty * interval`` seconds, polling the hand-off every ``interval``
        self.geoip_duty = geoip_duty
        self.interval = interval
        #: the registry workers together use at most this fraction of one core
        self.registry_duty = registry_duty
        self._work_clock = work_clock
        self._cpu_clock = cpu_clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        #: the hand-off: appended by callers (no lock), drained by the GeoIP stage
        self._queue: collections.deque[str] = collections.deque()
        #: addresses taken off the hand-off and not finished (GeoIP batch, registry)
        self._in_flight: set[str] = set()
        self._batch_running = False
        self._registry_queue: queue.Queue[tuple[str, ExternalInfo] | None] = queue.Queue(
            registry_queue_size
        )
        self._stop = False
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        if start:
            self.start()

    @property
    def pending(self) -> set[str]:
        """Addresses handed off or being looked up (a copy; at most both queue sizes
        plus the workers plus one)."""
        with self._lock:
            return set(self._queue) | self._in_flight

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
        # answer: this runs for every record (_miss inlined, see there)
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
                        self._remember_private(ip)
                    else:
                        entry = _PENDING_ENTRY
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
                        self._remember_private(ip)
                    else:
                        entry = _PENDING_ENTRY
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
        """First sight of ``ip`` (or its entry expired): classify, then hand it off
        (:meth:`name_record` has this inlined, twice; keep them alike).

        No lock: the GIL makes each dict write and deque append atomic, and only
        this path adds to :attr:`known` what is not there yet.
        """
        if is_private(ip):
            self._remember_private(ip)
            return None
        handoff = self._queue
        if len(handoff) >= self.queue_size:
            self.counts.handoff_dropped += 1
            return _PENDING_ENTRY
        self.known[ip] = _PENDING_ENTRY
        handoff.append(ip)
        return _PENDING_ENTRY

    def _remember_private(self, ip: str) -> None:
        private = self.private
        if len(private) >= self.private_cache_size:
            private.clear()
        private[ip] = True

    # -------------------------------------------------------------- workers
    def start(self) -> None:
        """Start the GeoIP thread and the registry workers (idempotent)."""
        if self._threads:
            return
        self._stop = False
        self._stopped.clear()
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
        self._stopped.set()
        for _ in range(self.workers):
            try:
                self._registry_queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def _is_idle(self) -> bool:
        return not (self._queue or self._in_flight or self._batch_running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (for replay, tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while not self._is_idle():
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                # re-check at least every interval: callers append without the lock
                self._idle.wait(min(left, self.interval))
            return True

    def _store(self, ip: str, info: ExternalInfo, *, done: bool) -> None:
        workload = info.org or UNKNOWN_ORG
        ident = Identity(info.hostname, "", workload, "external")
        entry: _Entry = (ident, info, info.hostname, workload, info.org, info.country)
        with self._lock:
            if info.org:
                self.negative_cache.pop(ip, None)
                self.cache[ip] = entry
            else:
                self.cache.pop(ip, None)
                self.negative_cache[ip] = entry
            self.known[ip] = entry
            if done:
                self._in_flight.discard(ip)
                if self._is_idle():
                    self._idle.notify_all()

    def expire(self) -> None:
        """Drop aged entries now (the GeoIP stage does it on every batch)."""
        with self._lock:
            self.cache.expire()
            self.negative_cache.expire()

    def geoip_batch(self) -> float:
        """One batch of the GeoIP stage; returns the seconds to pause before the next.

        Expires aged entries, then looks up handed-off addresses in order until the
        hand-off is empty or ``geoip_duty * interval`` seconds of ``work_clock`` are
        spent; what is left waits for the next batch (new addresses that find the
        hand-off full meanwhile are counted drops). The pause is at least what is
        left of ``interval`` and long enough that work stays within ``geoip_duty``.
        """
        clock = self._work_clock
        t0 = clock()
        with self._lock:
            self._batch_running = True
        try:
            self.expire()
            q = self._queue
            budget_end = t0 + self.geoip_duty * self.interval
            in_flight = self._in_flight
            while q and not self._stop:
                ip = q.popleft()
                if ip not in in_flight:  # else handed off twice (two callers, or the
                    self._geo_one(ip)  # negative cache evicted it while at a registry)
                if clock() >= budget_end:
                    break
        finally:
            with self._lock:
                self._batch_running = False
                if self._is_idle():
                    self._idle.notify_all()
        spent = clock() - t0
        return max(self.interval - spent, duty_pause(spent, spent, self.geoip_duty))

    def drain_now(self) -> int:
        """Look up every handed-off address on the calling thread; return how many.

        For offline use (``k8spacket replay``), where there is no packet path to
        protect and the first record should already carry the name: call it after
        :meth:`name_record`, then name the record again. Use it on a resolver built
        with ``start=False``; the duty budget does not apply.
        """
        n = 0
        q = self._queue
        while q:
            self._geo_one(q.popleft())
            n += 1
        return n

    def _geo_loop(self) -> None:
        pause = 0.0
        while not self._stopped.wait(pause):
            pause = self.geoip_batch()

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
        with self._lock:
            self._in_flight.add(ip)
        try:
            self._registry_queue.put_nowait((ip, info))
        except queue.Full:
            self.counts.add("registry_queue", "dropped")
            self._store(ip, info, done=True)
            return
        # the country shows while the registries are asked; still in flight
        self._store(ip, info, done=False)

    def _registry_loop(self) -> None:
        q = self._registry_queue
        cpu, wall = self._cpu_clock, time.monotonic
        share = self.registry_duty / self.workers  # this worker's part of the budget
        while True:
            item = q.get()
            if item is None or self._stop:
                return
            ip, info = item
            c0, w0 = cpu(), wall()
            try:
                info = self._registry_one(ip, info)
            finally:
                self._store(ip, info, done=True)
            pause = duty_pause(cpu() - c0, wall() - w0, share)
            if pause > 0.0 and self._stopped.wait(pause):
                return

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
