"""What is known about external addresses, and the hand-off of the ones not yet known.

:class:`AnswerCache` is the state shared by the three parts of external naming
(record naming in ``external.py``, the GeoIP stage in ``external_geoip.py``, the
registry workers in ``external_registry.py``):

* :attr:`AnswerCache.known`: a plain dict the caller's path reads without a lock
  (one probe per end of a record). It mirrors two cachetools ``TTLCache`` objects
  with a fixed ``maxsize``: :attr:`~AnswerCache.cache` (an organisation was found,
  long TTL) and :attr:`~AnswerCache.negative_cache` (nothing found or the
  registries failed, short TTL), plus the placeholder of addresses in flight.
  Only the background stages write the caches (under :attr:`AnswerCache.lock`);
  what they evict or expire leaves the mirror too (:class:`MirroredTTLCache`).
* :attr:`AnswerCache.handoff`: a ``collections.deque`` the caller appends new
  addresses to (no lock; the GIL makes the append atomic), bounded by
  ``queue_size``: an address that finds it full is a counted drop
  (``("queue", "dropped")``) and is tried again on a later record.
* :attr:`AnswerCache.private`: addresses known to be private (static facts),
  cleared when it reaches ``private_cache_size``.

So memory is bounded whatever the traffic. Counts by ``(source, result)`` live
in :class:`LookupCounts`; ``metrics/`` renders them. Limit: the hand-off drop
counter is written without a lock, so it may miss a drop when several threads
name records at the same instant (exact with one calling thread).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from k8spacket.enrich.classify import is_private
from k8spacket.enrich.identity import Identity

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


#: What :attr:`AnswerCache.known` holds per address: the identity, the info, and
#: (flat, for the caller's path) the name, workload, organisation and country.
Entry = tuple[Identity, ExternalInfo, str, str, str, str]

#: What the caller gets for an external address whose lookup has not finished.
PENDING = ExternalInfo()
PENDING_ENTRY: Entry = (
    Identity("", "", UNKNOWN_ORG, "external"),
    PENDING,
    "",
    UNKNOWN_ORG,
    "",
    "",
)


def make_entry(info: ExternalInfo) -> Entry:
    """The cache entry of a finished (or partly finished) lookup."""
    workload = info.org or UNKNOWN_ORG
    ident = Identity(info.hostname, "", workload, "external")
    return (ident, info, info.hostname, workload, info.org, info.country)


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


class MirroredTTLCache(TTLCache[str, Entry]):
    """A TTLCache that removes what it evicts or expires from a plain dict mirror.

    The mirror is what the caller reads, without a lock and in one dict probe; the
    cache stays the authority on size and age. Writers hold the owner's lock.
    """

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], mirror: dict[str, Entry]
    ) -> None:
        super().__init__(maxsize, ttl, timer=timer)
        self.mirror = mirror

    def popitem(self) -> tuple[str, Entry]:
        key, value = super().popitem()
        if self.mirror.get(key) is value:
            del self.mirror[key]
        return key, value

    def expire(self, time: float | None = None) -> list[tuple[str, Entry]]:
        expired = list(super().expire(time))
        for key, value in expired:
            if self.mirror.get(key) is value:
                del self.mirror[key]
        return expired


class AnswerCache:
    """Answers, the hand-off and the bookkeeping of addresses in flight.

    ``clock`` drives expiry; ``poll`` is how often :meth:`wait_idle` re-checks
    (callers append to the hand-off without the lock, so nobody notifies).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        cache_size: int,
        ttl: float,
        negative_cache_size: int,
        negative_ttl: float,
        queue_size: int,
        private_cache_size: int,
        poll: float,
    ) -> None:
        self.known: dict[str, Entry] = {}
        self.cache = MirroredTTLCache(cache_size, ttl, clock, self.known)
        self.negative_cache = MirroredTTLCache(negative_cache_size, negative_ttl, clock, self.known)
        self.private: dict[str, bool] = {}
        self.private_cache_size = private_cache_size
        self.queue_size = queue_size
        self.counts = LookupCounts()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        #: appended by callers (no lock), drained by the GeoIP stage
        self.handoff: collections.deque[str] = collections.deque()
        #: addresses taken off the hand-off and not finished (GeoIP batch, registry)
        self.in_flight: set[str] = set()
        self.batch_running = False
        self.poll = poll

    # ------------------------------------------------------------ caller side
    def miss(self, ip: str) -> Entry | None:
        """First sight of ``ip`` (or its entry expired): classify, then hand it off.

        ``None`` when ``ip`` is private. No lock: the GIL makes each dict write and
        deque append atomic, and only this path adds to :attr:`known` what is not
        there yet. (``ExternalResolver.name_record`` has this inlined; keep them alike.)
        """
        if is_private(ip):
            self.remember_private(ip)
            return None
        handoff = self.handoff
        if len(handoff) >= self.queue_size:
            self.counts.handoff_dropped += 1
            return PENDING_ENTRY
        self.known[ip] = PENDING_ENTRY
        handoff.append(ip)
        return PENDING_ENTRY

    def remember_private(self, ip: str) -> None:
        private = self.private
        if len(private) >= self.private_cache_size:
            private.clear()
        private[ip] = True

    # ------------------------------------------------------------ stage side
    def store(self, ip: str, info: ExternalInfo, *, done: bool) -> None:
        """Record what is known about ``ip``; ``done`` ends its time in flight."""
        entry = make_entry(info)
        with self.lock:
            if info.org:
                self.negative_cache.pop(ip, None)
                self.cache[ip] = entry
            else:
                self.cache.pop(ip, None)
                self.negative_cache[ip] = entry
            self.known[ip] = entry
            if done:
                self.in_flight.discard(ip)
                self._notify_if_idle()

    def begin(self, ip: str) -> None:
        """``ip`` leaves the GeoIP batch unfinished (it waits for a registry worker)."""
        with self.lock:
            self.in_flight.add(ip)

    def set_batch_running(self, running: bool) -> None:
        with self.lock:
            self.batch_running = running
            if not running:
                self._notify_if_idle()

    def expire(self) -> None:
        """Drop aged entries now."""
        with self.lock:
            self.cache.expire()
            self.negative_cache.expire()

    @property
    def pending(self) -> set[str]:
        """Addresses handed off or being looked up (a copy)."""
        with self.lock:
            return set(self.handoff) | self.in_flight

    def is_idle(self) -> bool:
        return not (self.handoff or self.in_flight or self.batch_running)

    def _notify_if_idle(self) -> None:  # the lock is held
        if self.is_idle():
            self.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (for replay, tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self.idle:
            while not self.is_idle():
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                self.idle.wait(min(left, self.poll))
            return True
