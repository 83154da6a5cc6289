"""The registry stage of external naming: RDAP, whois and reverse DNS, on worker threads.

Only addresses the GeoIP stage could not name (no organisation from an ASN
database) reach it, plus every address when reverse DNS is enabled (off by
default: provider hostnames such as ``ec2-3-5-7-9.compute.amazonaws.com`` are
noise). The registry client (``whois.py``) rate-limits per registry; here each
of ``workers`` threads takes one address at a time from a bounded queue and,
after each, sleeps in proportion to the CPU time (``cpu_clock``) it spent, so
all workers together stay within ``duty`` of one core; time spent waiting on the
network costs nothing. An address that finds the queue full is not looked up
this time (``("registry_queue", "dropped")``) and keeps what GeoIP found.

Limits: a hung registry holds one worker for the client's ``timeout`` per step,
so with every worker held new addresses are dropped (and counted) rather than
queued without end. A registry answer that raises is counted
(``("registry", "error")``) and logged; the worker goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from k8spacket.enrich.duty import duty_pause
from k8spacket.enrich.external_cache import AnswerCache, ExternalInfo
from k8spacket.enrich.whois import RegistryResult, failure_kind

log = logging.getLogger(__name__)


class Registry(Protocol):
    """Something that names an address from the Internet registries (``whois.RegistryClient``)."""

    def lookup(self, ip: str) -> RegistryResult: ...


def reverse_dns_lookup(ip: str) -> str | None:
    """The PTR name of ``ip`` via the system resolver (``None`` when there is none)."""
    try:
        return socket.gethostbyaddr(ip)[0]
    except socket.herror:
        return None


class RegistryWorkers:
    """The bounded queue and the loop each registry worker thread runs."""

    def __init__(
        self,
        answers: AnswerCache,
        registry: Registry | None,
        reverse_dns: Callable[[str], str | None] | None,
        *,
        workers: int,
        queue_size: int,
        duty: float,
        cpu_clock: Callable[[], float],
        stopped: threading.Event,
    ) -> None:
        self.answers = answers
        self.registry = registry
        self.reverse_dns = reverse_dns
        self.workers = workers
        self.duty = duty
        self._cpu_clock = cpu_clock
        self._stopped = stopped
        self.queue: queue.Queue[tuple[str, ExternalInfo] | None] = queue.Queue(queue_size)

    def wants(self, info: ExternalInfo) -> bool:
        """Whether an address GeoIP answered ``info`` for has more to learn here."""
        return (self.registry is not None and not info.org) or self.reverse_dns is not None

    def submit(self, ip: str, info: ExternalInfo) -> bool:
        """Queue ``ip`` for a worker; ``False`` (and a counted drop) when the queue is full."""
        try:
            self.queue.put_nowait((ip, info))
        except queue.Full:
            self.answers.counts.add("registry_queue", "dropped")
            return False
        return True

    def wake_all(self) -> None:
        """Wake every worker blocked on the queue so it sees the stop."""
        for _ in range(self.workers):
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                break

    def run(self) -> None:
        """One worker: look addresses up until stopped, within its share of the duty."""
        q = self.queue
        cpu, wall = self._cpu_clock, time.monotonic
        share = self.duty / self.workers  # this worker's part of the budget
        while True:
            item = q.get()
            if item is None or self._stopped.is_set():
                return
            ip, info = item
            c0, w0 = cpu(), wall()
            try:
                info = self.lookup(ip, info)
            finally:
                self.answers.store(ip, info, done=True)
            pause = duty_pause(cpu() - c0, wall() - w0, share)
            if pause > 0.0 and self._stopped.wait(pause):
                return

    def lookup(self, ip: str, info: ExternalInfo) -> ExternalInfo:
        """``info`` completed from the registries and reverse DNS (counted by step)."""
        counts = self.answers.counts
        if self.registry is not None and not info.org:
            try:
                result = self.registry.lookup(ip)
            except Exception:  # a worker must survive whatever the registry sends; counted
                counts.add("registry", "error")
                log.exception("registry lookup of %s failed", ip)
            else:
                for source, outcome in result.steps:
                    counts.add(source, outcome)
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
                counts.add("reverse_dns", failure_kind(e))
            else:
                counts.add("reverse_dns", "ok" if host else "not_found")
                if host:
                    info = dataclasses.replace(info, hostname=host)
        return info
