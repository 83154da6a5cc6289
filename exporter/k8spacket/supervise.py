"""Supervised background threads: nothing the agent starts dies silently.

Every long-running loop of the agent (capture, interface watcher, pod sync,
publisher, the external naming stages, the Kubernetes watches) is started with
:meth:`Supervisor.spawn`. The supervisor runs the loop on a daemon thread and,
when it raises an exception it did not handle itself:

1. logs it with its traceback (once per distinct error of that thread: the same
   error again is one line without the traceback, so a crash loop does not
   flood the log);
2. counts it (:meth:`Supervisor.restarts`, exported as
   ``k8spacket_thread_restarts_total{thread}``);
3. waits an exponential backoff (``initial * 2**n`` capped at ``maximum``; a
   loop that ran ``stable_after`` seconds before failing starts again from
   ``initial``) and calls the loop again;
4. after more than ``max_failures`` failures within ``window`` seconds it gives
   up: the thread ends and :meth:`Supervisor.health` names it, so ``/healthz``
   fails and Kubernetes restarts the pod.

A loop that *returns* has finished (the agent is stopping); it is not
restarted. A loop must therefore be restartable: it keeps its state on its
object and re-acquires what it opened (sockets, epoll) at the start of each
call. Only :class:`Exception` is caught; ``KeyboardInterrupt`` and
``SystemExit`` are left alone.

Every timer here runs on the monotonic clock (``clock``, injectable), and the
waits end at once on :meth:`Supervisor.stop`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Work = Callable[[], None]


@dataclass
class Backoff:
    """Restart delays of one thread: ``initial * 2**n`` seconds, capped at ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2.0**self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Supervised:
    """One supervised thread: its name, its loop and what happened to it."""

    name: str
    work: Work
    backoff: Backoff
    thread: threading.Thread | None = None
    restarts: int = 0
    #: monotonic times of the failures inside the window
    failures: collections.deque[float] = field(default_factory=collections.deque)
    #: why the supervisor gave up on this thread (None while it runs or finished)
    gave_up: str | None = None
    last_error: str = ""

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)


class Supervisor:
    """Starts named threads, restarts their loops after an exception, reports health."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.clock = clock
        self.threads: dict[str, Supervised] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------- control
    def spawn(self, name: str, work: Work, *, backoff_initial: float | None = None) -> Supervised:
        """Run ``work`` on a daemon thread called ``name``, supervised; returns its handle."""
        initial = self.backoff_initial if backoff_initial is None else backoff_initial
        with self._lock:
            if name in self.threads and self.threads[name].is_alive():
                raise RuntimeError(f"a supervised thread named {name!r} is already running")
            s = Supervised(name, work, Backoff(initial, max(initial, self.backoff_max)))
            s.restarts = self.threads[name].restarts if name in self.threads else 0
            self.threads[name] = s
        s.thread = threading.Thread(target=self._run, args=(s,), name=name, daemon=True)
        s.thread.start()
        return s

    def stop(self) -> None:
        """No more restarts; backoff waits end now (the loops are stopped by their owners)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float = 10.0) -> None:
        """Wait for every thread (at most ``timeout`` seconds in all)."""
        deadline = self.clock() + timeout
        for s in list(self.threads.values()):
            s.join(max(0.0, deadline - self.clock()))

    # --------------------------------------------------------------- state
    def restarts(self) -> dict[str, int]:
        """thread name → restarts so far (every spawned thread, zero included)."""
        with self._lock:
            return {name: s.restarts for name, s in self.threads.items()}

    def health(self) -> str | None:
        """``None`` while every thread runs (or finished); else why the process is unhealthy."""
        with self._lock:
            failed = [s.gave_up for s in self.threads.values() if s.gave_up]
        return "; ".join(failed) if failed else None

    # ---------------------------------------------------------------- loop
    def _run(self, s: Supervised) -> None:
        while True:
            started = self.clock()
            try:
                s.work()
                return
            except Exception as e:
                if self._failed(s, e, started):
                    return
            if self._stop.wait(s.backoff.next()):
                return
            with self._lock:
                s.restarts += 1
            log.info("thread %s: restarting (restart %d)", s.name, s.restarts)

    def _failed(self, s: Supervised, e: Exception, started: float) -> bool:
        """Log and count one failure; True when the thread must not be restarted."""
        now = self.clock()
        error = f"{type(e).__name__}: {e}"
        if self._stop.is_set():
            log.warning("thread %s failed while stopping: %s", s.name, error)
            return True
        if now - started >= self.stable_after:
            s.backoff.reset()
        s.failures.append(now)
        while s.failures and s.failures[0] < now - self.window:
            s.failures.popleft()
        tb = "".join(traceback.format_exception(e)).rstrip()
        if error != s.last_error:
            log.error("thread %s failed unexpectedly:\n%s", s.name, tb)
        else:
            log.error("thread %s failed again: %s", s.name, error)
        s.last_error = error
        if len(s.failures) > self.max_failures:
            reason = (
                f"thread {s.name} failed {len(s.failures)} times within "
                f"{self.window:g}s, last: {error}"
            )
            with self._lock:
                s.gave_up = reason
            log.critical("%s; not restarting it (/healthz now fails)", reason)
            return True
        return False
