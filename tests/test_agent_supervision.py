"""Every thread of the agent is supervised: an injected exception restarts it and counts.

The agent runs in this process (its HTTP server on 127.0.0.1, no interfaces:
the watcher's link listing is replaced by an empty list, so no ring is opened
on this machine). For each supervised thread an exception is injected once into
a call its loop makes (a monkeypatched method); the test then shows the restart
in ``k8spacket_thread_restarts_total{thread}`` (read through ``/metrics``, as
Prometheus would) and that the loop does its work again. A loop that keeps
failing is given up on and ``/healthz`` fails, naming it.
"""

from __future__ import annotations

import errno
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client
from prometheus_client.parser import text_string_to_metric_families
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from conftest import REPO, require
from k8spacket.agent import Agent
from k8spacket.config import load_settings
from k8spacket.enrich.external_cache import ExternalInfo
from k8spacket.enrich.k8s import K8sCache
from k8spacket.supervise import Supervisor
from kmockserver import FakeCluster, fast_backoff, pod, record, wait_for
from promserver import free_port

pytestmark = [pytest.mark.timeout(60)]

MAXMIND = REPO / "tests" / "fixtures" / "maxmind"


class Injected(RuntimeError):
    """The exception the tests inject (a stand-in for a bug)."""


def fail_once(target: Any, name: str, calls: list[int] | None = None) -> list[int]:
    """Make ``target.name`` raise :class:`Injected` on its first call; returns a call counter."""
    original = getattr(target, name)
    seen = calls if calls is not None else [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == 1:
            raise Injected(f"injected into {name}")
        return original(*args, **kwargs)

    setattr(target, name, patched)
    return seen


def new_agent(supervisor: Supervisor, k8s: K8sCache | None = None, external: bool = False) -> Agent:
    naming = (
        [f"enrichment.geoip.dbPath={MAXMIND / 'GeoLite2-City-Test.mmdb'}",
         "enrichment.whois.enabled=true"]
        if external
        else ["enrichment.geoip.enabled=false"]
    )  # fmt: skip
    settings = load_settings(
        sets=[*naming, "kubernetes.nodeName=lab-n1"]
        + ([] if k8s else ["kubernetes.enabled=false"]),
        listen=f"127.0.0.1:{free_port()}",
    )
    agent = Agent(settings, k8s=k8s, supervisor=supervisor)
    agent.watcher.list_links = list  # no interface of this machine is captured
    agent.watcher.list_pod_routes = None
    agent.reader.stats_interval = 0.05
    return agent


def get(agent: Agent, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{agent.server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def restarts(agent: Agent, thread: str) -> float:
    """``k8spacket_thread_restarts_total`` of ``thread`` (summed over ``name-*`` for
    ``name-*``), read from /metrics; -1 when there is no such series."""
    status, body = get(agent, "/metrics")
    assert status == 200
    values = [
        s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == "k8spacket_thread_restarts_total"
        and (
            s.labels["thread"] == thread
            or (thread.endswith("*") and s.labels["thread"].startswith(thread[:-1]))
        )
    ]
    return sum(values) if values else -1.0


@pytest.fixture
def supervisor() -> Supervisor:
    return Supervisor(backoff_initial=0.01, backoff_max=0.1)


@pytest.fixture
def running() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        agent.stop()
        agent.shutdown()


def start(agent: Agent, running: list[Agent]) -> Agent:
    agent.start()
    running.append(agent)
    wait_for(agent.ready, "agent ready")
    return agent


# thread → (inject the failure, show the loop works again)
Inject = Callable[[Agent], Callable[[], bool]]


def inject_capture(agent: Agent) -> Callable[[], bool]:
    calls = fail_once(agent.reader, "_read_kernel_stats")
    return lambda: calls[0] >= 3 and agent.reader.running.is_set()


def inject_interfaces(agent: Agent) -> Callable[[], bool]:
    before = agent.watcher.syncs
    fail_once(agent.watcher, "list_links")
    agent.watcher.request_sync()
    return lambda: agent.watcher.syncs > before + 1


def inject_pod_sync(agent: Agent) -> Callable[[], bool]:
    calls = fail_once(agent, "sync_pods")
    return lambda: calls[0] >= 2


def inject_k8s_watch(agent: Agent) -> Callable[[], bool]:
    cache = agent.naming.k8s
    assert cache is not None
    lists = cache.stats()["pods"]["lists"]
    fail_once(cache.index, "apply")  # the next watch event breaks the loop
    return lambda: cache.stats()["pods"]["lists"] > lists  # restarted with a fresh list


def inject_geoip(agent: Agent) -> Callable[[], bool]:
    external = agent.naming.external
    assert external is not None
    calls = fail_once(external.geoip_stage, "batch")
    return lambda: calls[0] >= 2


def inject_registry(agent: Agent) -> Callable[[], bool]:
    external = agent.naming.external
    assert external is not None and external.registry_stage is not None
    stage = external.registry_stage
    calls = [0]

    def lookup(ip: str, info: ExternalInfo) -> ExternalInfo:  # never a real registry
        calls[0] += 1
        if calls[0] == 1:
            raise Injected("injected into the registry lookup")
        return info

    stage.lookup = lookup  # type: ignore[method-assign]
    for ip in ("203.0.113.7", "203.0.113.8"):
        stage.queue.put((ip, ExternalInfo()))
    return lambda: calls[0] >= 2


def inject_publisher(agent: Agent) -> Callable[[], bool]:
    calls = fail_once(agent.publisher, "publish")
    agent.publisher.settle = 0.0
    for port in (1, 2):
        agent.publisher.offer(record("10.244.1.5", "10.244.2.7", port))
    return lambda: len(agent.store) == 1 and agent.publisher.dropped == 1 and calls[0] == 2


LOCAL: dict[str, Inject] = {
    "capture": inject_capture,
    "interfaces": inject_interfaces,
    "publisher": inject_publisher,
}
EXTERNAL: dict[str, Inject] = {
    "k8spacket-geoip": inject_geoip,
    "k8spacket-whois-*": inject_registry,
}
WITH_K8S: dict[str, Inject] = {"k8s-pods": inject_pod_sync, "k8s-watch-pods": inject_k8s_watch}


@pytest.mark.parametrize("thread", sorted(LOCAL))
def test_injected_exception_restarts_the_thread_and_counts(
    thread: str, supervisor: Supervisor, running: list[Agent]
) -> None:
    agent = start(new_agent(supervisor), running)
    assert restarts(agent, thread) == 0  # the series exists before anything failed
    works_again = LOCAL[thread](agent)
    wait_for(lambda: restarts(agent, thread) == 1, f"{thread} restarted")
    wait_for(works_again, f"{thread} working again")
    assert get(agent, "/healthz") == (200, "ok\n")
    wait_for(agent.ready, "ready again")
    assert sum(supervisor.restarts().values()) == 1  # only the injected thread restarted


@pytest.mark.parametrize("thread", sorted(EXTERNAL))
def test_injected_exception_restarts_the_external_naming_stages(
    thread: str, supervisor: Supervisor, running: list[Agent]
) -> None:
    require(
        (MAXMIND / "GeoLite2-City-Test.mmdb").is_file(),
        "MaxMind test databases missing: run tests/fixtures/fetch_maxmind_test_dbs.sh",
    )
    agent = start(new_agent(supervisor, external=True), running)
    assert restarts(agent, thread) == 0
    works_again = EXTERNAL[thread](agent)
    wait_for(lambda: restarts(agent, thread) == 1, f"{thread} restarted")
    wait_for(works_again, f"{thread} working again")
    assert get(agent, "/healthz") == (200, "ok\n")
    assert sum(supervisor.restarts().values()) == 1


@pytest.mark.kmock
@pytest.mark.parametrize("thread", sorted(WITH_K8S))
def test_injected_exception_restarts_the_kubernetes_threads(
    thread: str, supervisor: Supervisor, running: list[Agent], cluster: FakeCluster
) -> None:
    cluster.create("pods", pod("a-1", ("10.244.1.5",), ns="shop", node="lab-n1"))
    cfg = k8s_client.Configuration(host=cluster.url)
    cfg.retries = False
    cache = K8sCache(
        k8s_client.ApiClient(cfg),
        resources=("pods",),
        watch_timeout=2.0,
        connect_timeout=2.0,
        backoff=fast_backoff,
        owns_client=True,
    )
    agent = start(new_agent(supervisor, cache), running)
    assert restarts(agent, thread) == 0
    works_again = WITH_K8S[thread](agent)
    cluster.create("pods", pod("a-2", ("10.244.1.6",), ns="shop", node="lab-n1"))  # an event
    wait_for(lambda: restarts(agent, thread) == 1, f"{thread} restarted")
    wait_for(works_again, f"{thread} working again")
    wait_for(lambda: agent.local.is_local("10.244.1.6"), "the new pod known as local")
    assert get(agent, "/healthz") == (200, "ok\n")
    assert sum(supervisor.restarts().values()) == 1


def test_netlink_errors_are_handled_by_the_watcher_without_a_restart(
    supervisor: Supervisor, running: list[Agent]
) -> None:
    agent = start(new_agent(supervisor), running)
    agent.watcher.retry_delay = 0.01
    original = agent.watcher.list_links
    calls = [0]

    def interrupted() -> list[Any]:
        calls[0] += 1
        if calls[0] <= 2:
            raise NetlinkDumpInterrupted()
        return original()

    agent.watcher.list_links = interrupted
    agent.watcher.request_sync()
    wait_for(lambda: calls[0] >= 3, "resynced after the interrupted dumps")
    assert agent.watcher.sync_errors == 2
    assert restarts(agent, "interfaces") == 0


def test_healthz_fails_when_restarts_are_exhausted(running: list[Agent]) -> None:
    supervisor = Supervisor(max_failures=2, window=60.0, backoff_initial=0.01, backoff_max=0.02)
    agent = start(new_agent(supervisor), running)
    assert get(agent, "/healthz") == (200, "ok\n")

    def always(*args: Any) -> None:
        raise Injected("capture is broken for good")

    agent.reader._read_kernel_stats = always  # type: ignore[method-assign]
    wait_for(lambda: get(agent, "/healthz")[0] == 503, "/healthz failing")
    status, body = get(agent, "/healthz")
    assert body.startswith("unhealthy: thread capture failed 3 times within 60s")
    assert "Injected: capture is broken for good" in body
    assert restarts(agent, "capture") == 2
    status, body = get(agent, "/readyz")
    assert (status, body) == (503, "not ready: capture thread not running\n")


class _Events:
    """A stand-in RTNL event socket: readable through a pipe, counts closes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closed = True


class _NoRings:
    def attach(self, ring: Any) -> None: ...
    def detach(self, name: str) -> None: ...
    def learn(self, pairs: Any) -> None: ...


def test_a_failing_event_socket_is_reopened_and_the_links_resynced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from k8spacket.capture import interfaces

    r, w = os.pipe()
    os.write(w, b"event")
    opened: list[_Events] = []
    drains = [0]

    def open_events() -> _Events:
        opened.append(_Events(r))
        return opened[-1]

    def drain(events: _Events) -> None:
        drains[0] += 1
        if drains[0] == 1:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        os.read(events.fd, 100)  # the event is consumed: nothing more to read

    monkeypatch.setattr(interfaces, "_open_link_events", open_events)
    monkeypatch.setattr(interfaces, "_drain_events", drain)
    watcher = interfaces.InterfaceWatcher(
        _NoRings(), lambda name: None, list_links=list, list_pod_routes=None, event_delay=0.01
    )
    t = threading.Thread(target=watcher.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: watcher.event_errors == 1 and watcher.syncs >= 2, "reopened, resynced")
        assert len(opened) == 2 and opened[0].closed and not opened[1].closed
    finally:
        watcher.stop()
        t.join(5)
        os.close(r)
        os.close(w)
    assert not t.is_alive() and opened[1].closed


def test_shutdown_never_publishes_on_two_threads(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher still busy when the shutdown budget runs out is left to it alone.

    Draining the queue on the main thread beside it shared the conntrack socket
    (each thread read the other's answers: a 1 s timeout per lookup, a shutdown
    of minutes at 500,000 connections).
    """
    import k8spacket.agent as agent_module

    monkeypatch.setattr(agent_module, "SHUTDOWN_SECONDS", 0.5)
    agent = new_agent(supervisor)
    release, entered = threading.Event(), threading.Event()
    original_publish = agent.publisher.publish
    publishing: list[str] = []

    def slow_publish(r: Any) -> None:
        publishing.append(threading.current_thread().name)
        entered.set()
        release.wait(20)
        original_publish(r)

    agent.publisher.publish = slow_publish  # type: ignore[method-assign]
    agent.publisher.settle = 0.0
    agent.start()
    try:
        wait_for(agent.ready, "agent ready")
        for port in range(3):
            agent.publisher.offer(record("10.244.1.5", "10.244.1.6", 6000 + port))
        assert entered.wait(10)
        with caplog.at_level("WARNING", logger="k8spacket.agent"):
            agent.stop()
            agent.shutdown()  # returns after the budget; must not raise nor drain
    finally:
        release.set()
    assert "records not published within" in caplog.text
    assert agent.publisher.finished.wait(20)  # the thread published the rest alone
    assert set(publishing) == {"publisher"}  # never the test's (main) thread
    if agent.conntrack is not None:  # closed once the publisher no longer needs it
        wait_for(lambda: agent.conntrack is None or agent.conntrack._sock is None, "closed")


def test_full_collections_are_off_while_the_agent_runs(supervisor: Supervisor) -> None:
    """A full collection walks every long-lived object with the interpreter lock held
    (88 ms at 500,000 connections, in whichever thread allocated: often the capture
    thread); the agent's gc thread turns them off and freezes survivors instead."""
    import gc

    import k8spacket.agent as agent_module

    before = gc.get_threshold()
    agent = new_agent(supervisor)
    agent.start()
    try:
        wait_for(lambda: gc.get_threshold()[2] == agent_module.NO_FULL_COLLECTIONS, "gc thread")
        assert gc.get_threshold()[:2] == before[:2]  # young collections as before
        wait_for(lambda: gc.get_freeze_count() > 0, "survivors frozen")
    finally:
        agent.stop()
        agent.shutdown()
        gc.unfreeze()
    assert gc.get_threshold() == before
