"""The supervisor on its own: restart with backoff, count, log once, give up, stop."""

from __future__ import annotations

import logging
import threading

import pytest

from k8spacket.supervise import Backoff, Supervisor
from kmockserver import wait_for


class Flaky:
    """A loop that raises ``errors`` (in order), then blocks until released."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.release = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.release.wait(10)


def fast(**kwargs: float) -> Supervisor:
    return Supervisor(backoff_initial=0.01, backoff_max=0.05, **kwargs)  # type: ignore[arg-type]


def test_restart_after_an_exception_counts_and_logs_the_traceback_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = fast()
    work = Flaky(ValueError("boom"), ValueError("boom"))
    with caplog.at_level(logging.INFO, "k8spacket.supervise"):
        handle = sup.spawn("worker", work)
        wait_for(lambda: work.calls == 3, "third call after two failures")
    assert sup.restarts() == {"worker": 2}
    assert sup.health() is None
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1  # the same error again is one line
    assert "ValueError: boom" in tracebacks[0].getMessage()
    assert any("failed again: ValueError: boom" in r.getMessage() for r in caplog.records)
    work.release.set()
    handle.join(5)
    assert not handle.is_alive()  # a loop that returns has finished: no restart
    assert sup.restarts() == {"worker": 2}


def test_gives_up_after_too_many_failures_in_the_window() -> None:
    sup = fast(max_failures=2, window=60.0)
    work = Flaky(*[RuntimeError(f"broken {i}") for i in range(10)])
    handle = sup.spawn("capture", work)
    handle.join(5)
    assert not handle.is_alive()
    assert work.calls == 3  # two restarts, then the third failure exceeds the budget
    assert sup.restarts() == {"capture": 2}
    reason = sup.health()
    assert reason is not None
    assert reason.startswith("thread capture failed 3 times within 60s")
    assert "RuntimeError: broken 2" in reason


def test_failures_outside_the_window_do_not_add_up() -> None:
    now = [0.0]
    sup = Supervisor(max_failures=1, window=10.0, backoff_initial=0.0, clock=lambda: now[0])
    calls = 0
    done = threading.Event()

    def work() -> None:
        nonlocal calls
        calls += 1
        now[0] += 11.0  # each run lasts longer than the window
        if calls < 4:
            raise OSError("transient")
        done.set()

    sup.spawn("w", work).join(5)
    assert done.is_set()
    assert sup.health() is None
    assert sup.restarts() == {"w": 3}


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_stable_run_resets_the_backoff() -> None:
    now = [0.0]
    sup = Supervisor(backoff_initial=0.01, stable_after=5.0, clock=lambda: now[0])
    attempts: list[int] = []
    calls = 0

    def work() -> None:
        nonlocal calls
        calls += 1
        handle = sup.threads["w"]
        attempts.append(handle.backoff.attempt)
        if calls == 3:
            now[0] += 6.0  # this run was stable before it failed
        if calls < 5:
            raise ValueError(str(calls))

    sup.spawn("w", work).join(5)
    assert attempts == [0, 1, 2, 1, 2]


def test_stop_ends_a_backoff_wait_without_restarting() -> None:
    sup = Supervisor(backoff_initial=30.0)
    work = Flaky(ValueError("once"))
    handle = sup.spawn("w", work)
    wait_for(lambda: work.calls == 1, "first failure")
    sup.stop()
    handle.join(5)
    assert not handle.is_alive()
    assert work.calls == 1
    assert sup.restarts() == {"w": 0}


def test_two_running_threads_cannot_share_a_name() -> None:
    sup = fast()
    work = Flaky()
    sup.spawn("same", work)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sup.spawn("same", Flaky())
    finally:
        work.release.set()
        sup.join(5)
