"""The GeoIP stage of external naming: one thread that drains the hand-off on a budget.

Country, city and, with an ASN database, the organisation of each new external
address (``geoip.py``, a few tens of microseconds each). The stage polls the
hand-off every ``interval`` (default 50 ms) and works through it for at most
``duty * interval`` (default 2% → 1 ms), then sleeps; a batch that overruns
(one slow lookup) stretches the pause so the average stays at ``duty`` of one
core. Time is wall time (``work_clock``): while this thread runs Python it holds
the interpreter lock the packet path needs. When new addresses arrive faster
than the budget allows, the hand-off fills and the surplus is dropped (counted
by the caller's side, see ``external_cache.py``).

An address the registries should complete goes on to the registry workers
(``external_registry.py``) with what GeoIP found, so its country shows while the
registries are asked. Offline (``k8spacket replay``) :meth:`GeoIPStage.drain_now`
does the same work on the calling thread with no budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from k8spacket.enrich.duty import duty_pause
from k8spacket.enrich.external_cache import AnswerCache, ExternalInfo
from k8spacket.enrich.external_registry import RegistryWorkers
from k8spacket.enrich.geoip import GeoAnswer, GeoIPDatabase, GeoIPLookupError

log = logging.getLogger(__name__)


class GeoIPStage:
    """Looks up handed-off addresses in the GeoIP databases, ``duty`` of the time."""

    def __init__(
        self,
        answers: AnswerCache,
        geoip: GeoIPDatabase | None,
        registry: RegistryWorkers | None,
        *,
        duty: float,
        interval: float,
        work_clock: Callable[[], float],
        stopped: threading.Event,
    ) -> None:
        self.answers = answers
        self.geoip = geoip
        self.registry = registry
        self.duty = duty
        self.interval = interval
        self._work_clock = work_clock
        self._stopped = stopped

    def run(self) -> None:
        """The thread's loop: a batch, a pause, until stopped."""
        pause = 0.0
        while not self._stopped.wait(pause):
            pause = self.batch()

    def batch(self) -> float:
        """One batch; returns the seconds to pause before the next.

        Expires aged entries, then looks up handed-off addresses in order until the
        hand-off is empty or ``duty * interval`` seconds of ``work_clock`` are
        spent; what is left waits for the next batch (new addresses that find the
        hand-off full meanwhile are counted drops). The pause is at least what is
        left of ``interval`` and long enough that work stays within ``duty``.
        """
        clock = self._work_clock
        answers = self.answers
        t0 = clock()
        answers.set_batch_running(True)
        try:
            answers.expire()
            q = answers.handoff
            budget_end = t0 + self.duty * self.interval
            in_flight = answers.in_flight
            stopped = self._stopped
            while q and not stopped.is_set():
                ip = q.popleft()
                if ip not in in_flight:  # else handed off twice (two callers, or the
                    self.lookup(ip)  # negative cache evicted it while at a registry)
                if clock() >= budget_end:
                    break
        finally:
            answers.set_batch_running(False)
        spent = clock() - t0
        return max(self.interval - spent, duty_pause(spent, spent, self.duty))

    def drain_now(self) -> int:
        """Look up every handed-off address on the calling thread; return how many."""
        n = 0
        q = self.answers.handoff
        while q:
            self.lookup(q.popleft())
            n += 1
        return n

    def lookup(self, ip: str) -> None:
        """Look ``ip`` up, store the answer, and pass it on to the registries if needed."""
        answers = self.answers
        geo: GeoAnswer | None = None
        if self.geoip is not None:
            try:
                geo = self.geoip.lookup(ip)
            except GeoIPLookupError as e:
                answers.counts.add("geoip", "error")
                log.warning("GeoIP lookup failed: %s", e)
            else:
                answers.counts.add("geoip", "ok" if geo is not None else "not_found")
        info = (
            ExternalInfo(org=geo.org, country=geo.country, asn=geo.asn, city=geo.city)
            if geo is not None
            else ExternalInfo()
        )
        registry = self.registry
        if registry is None or not registry.wants(info):
            answers.store(ip, info, done=True)
            return
        answers.begin(ip)
        if not registry.submit(ip, info):
            answers.store(ip, info, done=True)
            return
        # the country shows while the registries are asked; still in flight
        answers.store(ip, info, done=False)
