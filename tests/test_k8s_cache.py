"""The Kubernetes watch cache against kmock: the real client over real HTTP.

kmock (a stateful Kubernetes API emulator, aiohttp) runs in a thread with its own
event loop (``kmockserver.FakeCluster``, the ``cluster`` fixture); the cache under
test talks to it through a TCP proxy that the tests can close (API unreachable),
reopen and use to sever open connections (a watch dropped mid-stream). Objects
are created, patched and deleted over HTTP, as kubectl would, so every change
reaches the cache as a real watch event.

kmock's limits shape a few choices (FACTS.md): it ignores ``timeoutSeconds``
(the cache's client read timeout ends quiet watches), treats ``resourceVersion``
as opaque and replays every object as ``ADDED`` when a watch starts.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from k8spacket.enrich.identity import Identity
from k8spacket.enrich.k8s import Backoff, K8sCache
from kmockserver import (
    FakeCluster,
    fast_backoff,
    kmock,
    node,
    owned,
    pod,
    record,
    service,
    wait_for,
)

pytestmark = [pytest.mark.kmock, pytest.mark.timeout(60)]


@contextlib.contextmanager
def running_cache(c: FakeCluster, wait_synced: bool = True) -> Iterator[K8sCache]:
    cfg = k8s_client.Configuration(host=c.url)
    cfg.retries = False
    api = k8s_client.ApiClient(cfg)
    cache = K8sCache(api, watch_timeout=2.0, connect_timeout=2.0, backoff=fast_backoff)
    cache.start()
    try:
        if wait_synced:
            wait_for(cache.synced.is_set, "cache synced")
        yield cache
    finally:
        cache.stop()
        api.close()


# -------------------------------------------------------- the initial sync
POD, SVC, NODE = "pod", "service", "node"
INITIAL: list[tuple[str, dict[str, Any]]] = [
    ("nodes", node("node-a", ("192.168.0.10", "fd00::10"), external=("203.0.113.10",))),
    ("replicasets", owned("ReplicaSet", "web-5d8f9", ("Deployment", "web"))),
    ("replicasets", owned("ReplicaSet", "solo-rs", None)),
    ("jobs", owned("Job", "nightly-28000", ("CronJob", "nightly"))),
    ("jobs", owned("Job", "migrate", None)),
    (
        "pods",
        pod("web-5d8f9-abcde", ("10.244.1.5", "fd00:244::5"), owner=("ReplicaSet", "web-5d8f9")),
    ),
    ("pods", pod("solo-rs-x1", ("10.244.1.6",), owner=("ReplicaSet", "solo-rs"))),
    (
        "pods",
        pod(
            "api-7c6b5-zzzzz",
            ("10.244.1.7",),
            owner=("ReplicaSet", "api-7c6b5"),  # that ReplicaSet is not in the cluster
            labels={"pod-template-hash": "7c6b5"},
        ),
    ),
    ("pods", pod("nightly-28000-q", ("10.244.1.8",), owner=("Job", "nightly-28000"))),
    ("pods", pod("migrate-q", ("10.244.1.9",), owner=("Job", "migrate"))),
    ("pods", pod("db-0", ("10.244.2.1",), owner=("StatefulSet", "db"))),
    ("pods", pod("agent-x", ("10.244.2.2",), owner=("DaemonSet", "agent"))),
    ("pods", pod("bare", ("10.244.2.3",))),
    ("pods", pod("done", ("10.244.2.4",), phase="Succeeded")),
    ("pods", pod("pending", ())),
    (
        "pods",
        pod(
            "exporter-h",
            ("192.168.0.10", "fd00::10"),
            ns="monitoring",
            owner=("DaemonSet", "node-exporter"),
            host_network=True,
            ports=(9100,),
        ),
    ),
    (
        "pods",
        pod(
            "ingress-h",
            ("192.168.0.10",),
            ns="ingress",
            owner=("DaemonSet", "ingress"),
            host_network=True,
            host_ports=(443,),
        ),
    ),
    # a hostNetwork pod on a node the cache has no Node object for
    (
        "pods",
        pod("kube-proxy-b", ("192.168.0.11",), ns="kube-system", host_network=True, node="node-b"),
    ),
    ("services", service("web", ("10.96.0.10", "fd00:96::10"))),
    ("services", service("headless", ())),
]

LOOKUPS = [
    # id, ip, port, expected
    ("pod-ipv4", "10.244.1.5", 8080, Identity("web-5d8f9-abcde", "shop", "web", POD)),
    ("pod-ipv6", "fd00:244::5", None, Identity("web-5d8f9-abcde", "shop", "web", POD)),
    ("rs-without-owner", "10.244.1.6", None, Identity("solo-rs-x1", "shop", "solo-rs", POD)),
    ("rs-unknown-hash", "10.244.1.7", None, Identity("api-7c6b5-zzzzz", "shop", "api", POD)),
    ("cronjob-job-pod", "10.244.1.8", None, Identity("nightly-28000-q", "shop", "nightly", POD)),
    ("job-pod", "10.244.1.9", None, Identity("migrate-q", "shop", "migrate", POD)),
    ("statefulset", "10.244.2.1", None, Identity("db-0", "shop", "db", POD)),
    ("daemonset", "10.244.2.2", None, Identity("agent-x", "shop", "agent", POD)),
    ("bare-pod", "10.244.2.3", None, Identity("bare", "shop", "bare", POD)),
    ("succeeded-pod", "10.244.2.4", None, None),
    ("service-ipv4", "10.96.0.10", 80, Identity("web", "shop", "web", SVC)),
    ("service-ipv6", "fd00:96::10", 80, Identity("web", "shop", "web", SVC)),
    ("node-internal", "192.168.0.10", 22, Identity("node-a", "", "node-a", NODE)),
    ("node-internal-v6", "fd00::10", None, Identity("node-a", "", "node-a", NODE)),
    ("node-external", "203.0.113.10", None, None),
    (
        "hostnet-port",
        "192.168.0.10",
        9100,
        Identity("exporter-h", "monitoring", "node-exporter", POD),
    ),
    (
        "hostnet-port-v6",
        "fd00::10",
        9100,
        Identity("exporter-h", "monitoring", "node-exporter", POD),
    ),
    ("hostnet-hostport", "192.168.0.10", 443, Identity("ingress-h", "ingress", "ingress", POD)),
    ("hostnet-client", "192.168.0.10", None, Identity("node-a", "", "node-a", NODE)),
    ("hostnet-no-node-obj", "192.168.0.11", 10249, Identity("node-b", "", "node-b", NODE)),
    ("unknown", "10.1.2.3", 80, None),
]


@pytest.fixture(scope="module")
def synced_cache() -> Iterator[K8sCache]:
    c = FakeCluster()
    try:
        for resource, obj in INITIAL:
            c.create(resource, obj)
        with running_cache(c) as cache:
            yield cache
    finally:
        c.shutdown()


@pytest.mark.parametrize(
    ("ip", "port", "expected"), [t[1:] for t in LOOKUPS], ids=[t[0] for t in LOOKUPS]
)
def test_initial_sync_names(
    synced_cache: K8sCache, ip: str, port: int | None, expected: Identity | None
) -> None:
    assert synced_cache.lookup(ip, port) == expected


def test_initial_sync_counts(synced_cache: K8sCache) -> None:
    counts = synced_cache.index.counts()
    assert {r: counts[r] for r in ("pods", "services", "nodes", "replicasets", "jobs")} == {
        "pods": 13,
        "services": 2,
        "nodes": 1,
        "replicasets": 2,
        "jobs": 2,
    }
    assert synced_cache.ready()
    assert set(synced_cache.watch_events_total()) == {
        "pods",
        "services",
        "nodes",
        "replicasets",
        "jobs",
    }
    assert all(s["lists"] >= 1 for s in synced_cache.stats().values())


def test_name_record(synced_cache: K8sCache) -> None:
    rec = record("10.244.1.5", "10.96.0.10", 80)
    synced_cache.name_record(rec)
    assert (rec.src_name, rec.src_namespace, rec.src_workload, rec.src_kind) == (
        "web-5d8f9-abcde",
        "shop",
        "web",
        "pod",
    )
    assert (rec.dst_name, rec.dst_workload, rec.dst_kind) == ("web", "web", "service")
    unknown = record("10.1.2.3", "192.168.0.10", 9100)
    synced_cache.name_record(unknown)
    assert (unknown.src_kind, unknown.src_name) == ("unknown", "")
    assert (unknown.dst_name, unknown.dst_kind) == ("exporter-h", "pod")


# ------------------------------------------------------- churn and reuse
def test_pod_churn(cluster: FakeCluster) -> None:
    with running_cache(cluster) as cache:
        for i in range(24):
            cluster.create("pods", pod(f"p{i}", (f"10.244.3.{i}",)))
        for i in range(0, 24, 2):
            cluster.delete("pods", "shop", f"p{i}")
        for i in range(1, 24, 4):  # moved to a new address
            cluster.patch(
                "pods",
                "shop",
                f"p{i}",
                {"status": {"podIPs": [{"ip": f"10.244.4.{i}"}], "podIP": f"10.244.4.{i}"}},
            )

        def expected(i: int) -> str | None:
            if i % 2 == 0:
                return None
            return f"10.244.4.{i}" if i % 4 == 1 else f"10.244.3.{i}"

        wait_for(lambda: cache.index.counts()["pods"] == 12, "12 pods left")
        wait_for(lambda: cache.lookup("10.244.4.21") is not None, "last move seen")
        for i in range(24):
            ip = expected(i)
            assert cache.lookup(f"10.244.3.{i}") == (
                Identity(f"p{i}", "shop", f"p{i}", "pod") if ip == f"10.244.3.{i}" else None
            ), i
            if ip is not None:
                assert cache.lookup(ip) == Identity(f"p{i}", "shop", f"p{i}", "pod")
        assert cache.watch_events_total()["pods"] >= 24 + 12 + 6


OLD = Identity("old", "shop", "old", "pod")
NEW = Identity("new", "shop", "new", "pod")
IP = "10.244.5.5"


def _reuse_delete_first(c: FakeCluster) -> None:
    c.delete("pods", "shop", "old")
    c.create("pods", pod("new", (IP,)))


def _reuse_create_first(c: FakeCluster) -> None:
    c.create("pods", pod("new", (IP,)))
    c.delete("pods", "shop", "old")


def _reuse_old_succeeded(c: FakeCluster) -> None:
    c.patch("pods", "shop", "old", {"status": {"phase": "Succeeded"}})
    c.create("pods", pod("new", (IP,)))


def _reuse_old_updated_late(c: FakeCluster) -> None:
    c.create("pods", pod("new", (IP,)))
    c.patch("pods", "shop", "old", {"metadata": {"labels": {"late": "update"}}})


@pytest.mark.parametrize(
    ("steps", "old_gone"),
    [
        (_reuse_delete_first, True),
        (_reuse_create_first, True),
        (_reuse_old_succeeded, False),
        (_reuse_old_updated_late, False),
    ],
    ids=["delete-then-create", "create-then-delete", "old-succeeded", "old-updated-late"],
)
def test_ip_reuse(
    cluster: FakeCluster, steps: Callable[[FakeCluster], None], old_gone: bool
) -> None:
    cluster.create("pods", pod("old", (IP,)))
    with running_cache(cluster) as cache:
        before = record(IP, "10.96.0.1")
        cache.name_record(before)
        assert before.src_name == "old"
        steps(cluster)
        cluster.create("pods", pod("marker", ("10.244.5.99",)))  # after every step above
        wait_for(lambda: cache.lookup("10.244.5.99") is not None, "marker pod seen")
        assert cache.lookup(IP) == NEW
        assert (("pods", "shop", "old") in cache.index.objects["pods"]) != old_gone
        after = record(IP, "10.96.0.1")
        cache.name_record(after)
        assert (before.src_name, after.src_name) == ("old", "new")


def test_deleted_pod_stops_matching(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("gone", ("10.244.6.1",)))
    with running_cache(cluster) as cache:
        assert cache.lookup("10.244.6.1") is not None
        cluster.delete("pods", "shop", "gone")
        wait_for(lambda: cache.lookup("10.244.6.1") is None, "deleted pod unnamed")


# ----------------------------------------------------------- owner chains
CHAINS = [
    # id, owner object resource, owner object, pod owner ref, workload before, after
    (
        "deployment",
        "replicasets",
        owned("ReplicaSet", "shop-web-abc", ("Deployment", "shop-web")),
        ("ReplicaSet", "shop-web-abc"),
        "shop-web-abc",
        "shop-web",
    ),
    (
        "cronjob",
        "jobs",
        owned("Job", "report-29001", ("CronJob", "report")),
        ("Job", "report-29001"),
        "report-29001",
        "report",
    ),
]


@pytest.mark.parametrize(
    ("resource", "owner_obj", "ref", "before", "after"),
    [c[1:] for c in CHAINS],
    ids=[c[0] for c in CHAINS],
)
@pytest.mark.parametrize("order", ["owner-first", "pod-first"])
def test_owner_chain(
    cluster: FakeCluster,
    order: str,
    resource: str,
    owner_obj: dict[str, Any],
    ref: tuple[str, str],
    before: str,
    after: str,
) -> None:
    ip = "10.244.7.1"
    if order == "owner-first":
        cluster.create(resource, owner_obj)
    cluster.create("pods", pod("worker", (ip,), owner=ref))  # no pod-template-hash label
    with running_cache(cluster) as cache:
        ident = cache.lookup(ip)
        assert ident is not None
        if order == "pod-first":
            assert ident.workload == before
            cluster.create(resource, owner_obj)
            wait_for(lambda: cache.lookup(ip) != ident, "workload renamed")
        assert cache.lookup(ip) == Identity("worker", "shop", after, "pod")
        # the owner goes away: the pod falls back to its direct owner's name
        cluster.delete(resource, "shop", owner_obj["metadata"]["name"])
        wait_for(lambda: cache.lookup(ip) == Identity("worker", "shop", before, "pod"), "fallback")


def test_hostnetwork_pod_churn(cluster: FakeCluster) -> None:
    cluster.create("nodes", node("node-a", ("192.168.0.10",)))
    cluster.create("pods", pod("exp", ("192.168.0.10",), host_network=True, ports=(9100,)))
    with running_cache(cluster) as cache:
        assert cache.lookup("192.168.0.10", 9100) == Identity("exp", "shop", "exp", "pod")
        cluster.delete("pods", "shop", "exp")
        node_a = Identity("node-a", "", "node-a", "node")
        wait_for(lambda: cache.lookup("192.168.0.10", 9100) == node_a, "port released")
        assert cache.index.counts()["host_ports"] == 0


# ---------------------------------------------------------- failure modes
def test_watch_dropped_mid_stream(cluster: FakeCluster) -> None:
    for i in range(3):
        cluster.create("pods", pod(f"d{i}", (f"10.244.8.{i}",)))
    with running_cache(cluster) as cache:
        lists_before = cache.stats()["pods"]["lists"]
        cluster.unreachable()  # cut every open watch, and stay away while things change
        cluster.delete("pods", "shop", "d0")
        cluster.create("pods", pod("d9", ("10.244.8.9",)))
        cluster.patch(
            "pods",
            "shop",
            "d1",
            {"status": {"podIPs": [{"ip": "10.244.8.101"}], "podIP": "10.244.8.101"}},
        )
        wait_for(lambda: cache.stats()["pods"]["errors"] >= 1, "pods watch saw the drop")
        cluster.reachable()
        wait_for(lambda: cache.stats()["pods"]["lists"] > lists_before, "pods relisted")
        wait_for(lambda: cache.lookup("10.244.8.9") is not None, "pod created while away")
        assert cache.lookup("10.244.8.0") is None  # deleted while away: only a relist tells
        assert cache.lookup("10.244.8.1") is None
        assert cache.lookup("10.244.8.101") == Identity("d1", "shop", "d1", "pod")
        assert cache.lookup("10.244.8.2") == Identity("d2", "shop", "d2", "pod")
        # and the new watch delivers live events again
        cluster.create("pods", pod("d10", ("10.244.8.10",)))
        wait_for(lambda: cache.lookup("10.244.8.10") is not None, "live event after recovery")


def test_connections_cut_without_outage(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("c0", ("10.244.9.1",)))
    with running_cache(cluster) as cache:
        cluster.drop_connections()
        wait_for(lambda: cache.stats()["pods"]["watches"] >= 2, "pods watch restarted")
        cluster.create("pods", pod("c1", ("10.244.9.2",)))
        wait_for(lambda: cache.lookup("10.244.9.2") is not None, "event after reconnect")


def test_api_unreachable_at_start(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("late", ("10.244.10.1",)))
    cluster.unreachable()
    with running_cache(cluster, wait_synced=False) as cache:
        wait_for(lambda: cache.stats()["pods"]["errors"] >= 3, "several failed attempts")
        assert not cache.synced.is_set()
        assert cache.lookup("10.244.10.1") is None
        cluster.reachable()
        wait_for(cache.synced.is_set, "synced once the API is back")
        assert cache.lookup("10.244.10.1") == Identity("late", "shop", "late", "pod")


GONE_STATUS = {
    "apiVersion": "v1",
    "kind": "Status",
    "metadata": {},
    "status": "Failure",
    "code": 410,
    "reason": "Expired",
    "message": "too old resource version",
}


def _gone_as_status(k: Any) -> None:
    k[kmock.action.WATCH, kmock.resource("v1/pods")][:1] << 410 << GONE_STATUS


def _gone_as_event(k: Any) -> None:
    event = json.dumps({"type": "ERROR", "object": GONE_STATUS}).encode() + b"\n"
    k[kmock.action.WATCH, kmock.resource("v1/pods")][:1] << event


@pytest.mark.parametrize(
    "install", [_gone_as_status, _gone_as_event], ids=["http-410", "error-event"]
)
def test_gone_relists(cluster: FakeCluster, install: Callable[[Any], None]) -> None:
    cluster.react(install)
    cluster.create("pods", pod("g0", ("10.244.11.1",)))
    with running_cache(cluster) as cache:
        wait_for(lambda: cache.stats()["pods"]["gone"] == 1, "410 seen")
        wait_for(lambda: cache.stats()["pods"]["lists"] == 2, "relisted after 410")
        assert cluster.requests(kmock.action.LIST, "v1/pods") == 2
        assert cache.stats()["pods"]["errors"] == 0
        cluster.create("pods", pod("g1", ("10.244.11.2",)))
        wait_for(lambda: cache.lookup("10.244.11.2") is not None, "watching after relist")
        assert cache.lookup("10.244.11.1") == Identity("g0", "shop", "g0", "pod")


def test_backoff_schedule() -> None:
    b = Backoff(initial=1.0, maximum=8.0, factor=2.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0
    half = Backoff(initial=1.0, maximum=8.0, rand=lambda: 0.0)
    assert half.next() == 0.5


class RecordingBackoff(Backoff):
    """A fast backoff that remembers how often it was asked."""

    def __init__(self) -> None:
        super().__init__(initial=0.02, maximum=0.05, rand=lambda: 1.0)
        self.waits = 0

    def next(self) -> float:
        self.waits += 1
        return super().next()


def test_a_watch_that_ends_at_once_without_events_backs_off(cluster: FakeCluster) -> None:
    cluster.react(lambda k: k[kmock.action.WATCH, kmock.resource("v1/pods")] << b"")
    backoffs: list[RecordingBackoff] = []

    def backoff() -> RecordingBackoff:
        backoffs.append(RecordingBackoff())
        return backoffs[-1]

    cfg = k8s_client.Configuration(host=cluster.url)
    cfg.retries = False
    api = k8s_client.ApiClient(cfg)
    cache = K8sCache(api, resources=("pods",), watch_timeout=2.0, backoff=backoff)
    cache.start()
    try:
        wait_for(lambda: cache.stats()["pods"]["short"] >= 3, "three short watches")
        cache.stop()
        stats = cache.stats()["pods"]
        # every short watch waited a backoff before the next one; none relisted
        assert backoffs[0].waits >= stats["short"] >= 3
        assert stats["watches"] <= stats["short"] + 1
        assert (stats["lists"], stats["relists"], stats["errors"]) == (1, 0, 0)
    finally:
        cache.stop()
        api.close()
