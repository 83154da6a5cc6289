"""The agent's naming, readiness and series clean-up, wired: kmock + the lab + GeoIP.

``k8spacket run`` runs in the lab's node namespace with a kubeconfig pointing at
kmock (the Kubernetes API emulator, real HTTP, the real ``kubernetes`` client).
kmock runs in this process (``kmockserver.FakeCluster``); its breakable proxy
listens on 127.0.0.1 *inside the node namespace* (the listening socket is made by
a thread that joined the namespace), so the agent reaches the API and nothing is
exposed outside the lab. Pods are created in kmock with the lab pods' addresses,
as the kubelet would report them.

Checked: ``/readyz`` stays 503 while the API is unreachable (capture running) and
turns 200 once the cache listed everything; records and ``/metrics`` carry pod
and workload names from the cache; an "internet" pod (81.2.69.142, on a second
node behind the routed uplink) is named by the MaxMind test database
(``dst_kind=external``, ``dst_country=GB``); a pod deleted in the API loses its
series (metrics level ``pod``). A second test drives :meth:`Agent.sync_pods`
in-process against kmock: this node's pod addresses become local, a deleted pod's
series go, another namespace's series with the same address stay.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from agentproc import AgentProc, connect
from conftest import REPO, require
from k8spacket.agent import Agent, Naming
from k8spacket.config import SEED_GEOIP_DB_PATH, ConfigError, load_settings
from k8spacket.enrich.k8s import K8sCache
from kmockserver import FakeCluster, fast_backoff, kubeconfig, pod, record, wait_for
from netlab import NetLab, tcptool_argv
from promserver import NetnsCaller, free_port

pytestmark = [pytest.mark.kmock, pytest.mark.timeout(60)]

MAXMIND = REPO / "tests" / "fixtures" / "maxmind"
NODE = "lab-n1"


class NodeCluster(FakeCluster):
    """kmock whose proxy listens on 127.0.0.1 inside network namespace ``netns``."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._caller = NetnsCaller(netns)
        super().__init__()

    async def _open(self) -> None:
        if self._listener is None:

            def listen() -> socket.socket:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", self.port))
                s.listen(64)
                s.setblocking(False)
                return s

            self._listener = await asyncio.start_server(self._pipe, sock=self._caller(listen))

    def shutdown(self) -> None:
        super().shutdown()
        self._caller.close()


def pod_series(agent: AgentProc, name: str) -> list[Any]:
    return [
        (n, ls)
        for (n, ls), _ in agent.metrics().items()
        if ("src_pod", name) in ls or ("dst_pod", name) in ls
    ]


@pytest.mark.netns
@pytest.mark.slow
def test_agent_names_from_kubernetes_and_geoip(tmp_path: Path) -> None:
    city = MAXMIND / "GeoLite2-City-Test.mmdb"
    require(city.is_file(), f"{city} missing: run tests/fixtures/fetch_maxmind_test_dbs.sh")
    with NetLab() as lab:
        cart = lab.add_pod("cart", "10.213.1.2/24")
        redis = lab.add_pod("redis", "10.213.1.3/24")
        inet = lab.add_pod("inet", "81.2.69.142/24", node="n2")  # "the internet"
        lab.popen_in(redis, tcptool_argv("serve", "--port", "6379", "--reply", "300"))
        lab.popen_in(inet, tcptool_argv("serve", "--port", "443", "--reply", "900"))
        lab.wait_listening(redis, 6379)
        lab.wait_listening(inet, 443)
        cluster = NodeCluster(lab.nodes["n1"].netns)
        agent: AgentProc | None = None
        try:
            cluster.create("pods", pod("cart-5d8f9-abcde", ("10.213.1.2",), node=NODE,
                                       owner=("ReplicaSet", "cart-5d8f9"),
                                       labels={"pod-template-hash": "5d8f9"}))  # fmt: skip
            cluster.create(
                "pods", pod("redis-0", ("10.213.1.3",), node=NODE, owner=("StatefulSet", "redis"))
            )
            cluster.unreachable()
            agent = AgentProc(
                lab,
                tmp_path,
                f"metrics: {{level: pod}}\nenrichment: {{geoip: {{dbPath: '{city}'}}}}\n",
                env={
                    "KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", cluster.url)),
                    "NODE_NAME": NODE,
                },
            )
            # capture runs, the cache cannot list: not ready
            agent.wait("capture running", lambda: agent.get("/healthz")[0] == 200)
            agent.wait(
                "two pod interfaces", lambda: agent.metric_sum("k8spacket_capture_interfaces") == 2
            )
            assert agent.get("/readyz")[0] == 503
            cluster.reachable()
            agent.wait("readiness after the cache synced", lambda: agent.get("/readyz")[0] == 200)

            # pod to pod: names from the cache, in records and in metrics
            (res,) = connect(lab, cart, "10.213.1.3", "6379", "--send", "700")
            recs = agent.wait(
                "the named record",
                lambda: [r for r in agent.records() if r["src_port"] == res["local_port"]],
            )
            named = {k: recs[0][k] for k in ("src_name", "src_namespace", "src_workload",
                                             "src_kind", "dst_name", "dst_workload", "dst_kind")}  # fmt: skip
            assert named == {
                "src_name": "cart-5d8f9-abcde",
                "src_namespace": "shop",
                "src_workload": "cart",
                "src_kind": "pod",
                "dst_name": "redis-0",
                "dst_workload": "redis",
                "dst_kind": "pod",
            }
            assert (
                agent.metric_sum(
                    "k8spacket_tcp_sent_bytes_total",
                    src_workload="cart",
                    src_pod="cart-5d8f9-abcde",
                    dst_workload="redis",
                    dst_pod="redis-0",
                    dst_namespace="shop",
                )
                == 700
            )

            # an external destination: the first record queues the lookup, later ones are named
            def geo_named() -> list[dict[str, Any]]:
                connect(lab, cart, "81.2.69.142", "443", "--send", "10")
                return [r for r in agent.records() if r["dst_country"] == "GB"]

            (ext, *_) = agent.wait("a GeoIP-named record", geo_named)
            assert (ext["dst_kind"], ext["dst_namespace"], ext["src_workload"]) == (
                "external",
                "",
                "cart",
            )
            assert (
                agent.metric_sum(
                    "k8spacket_tcp_connections_total", dst_kind="external", src_workload="cart"
                )
                >= 2
            )
            assert agent.metric_sum("k8spacket_enrichment_lookups_total", source="geoip",
                                    result="ok") >= 1  # fmt: skip

            # the pod goes from the API: its series go from /metrics
            assert pod_series(agent, "cart-5d8f9-abcde")
            cluster.delete("pods", "shop", "cart-5d8f9-abcde")
            agent.wait(
                "the deleted pod's series gone", lambda: not pod_series(agent, "cart-5d8f9-abcde")
            )
            assert pod_series(agent, "redis-0") == []  # all of redis-0's series had cart as client
            assert agent.metric_sum("k8spacket_k8s_watch_events_total", resource="pods") >= 1
            assert agent.terminate() == 0
        finally:
            if agent is not None:
                agent.close()
            cluster.shutdown()


def test_sync_pods_feeds_local_addresses_and_forgets_deleted_pods(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("a-1", ("10.244.1.5",), ns="shop", node=NODE))
    cluster.create("pods", pod("b-1", ("10.244.2.7",), ns="shop", node="other-node"))
    cluster.create("pods", pod("h-1", ("192.168.0.10",), ns="kube-system", node=NODE,
                               host_network=True))  # fmt: skip
    cfg = k8s_client.Configuration(host=cluster.url)
    cfg.retries = False
    api = k8s_client.ApiClient(cfg)
    cache = K8sCache(api, watch_timeout=2.0, connect_timeout=2.0, backoff=fast_backoff)
    settings = load_settings(
        sets=["kubernetes.nodeName=" + NODE, "metrics.level=pod", "metrics.labels=[src_ip,dst_ip]",
              "enrichment.geoip.enabled=false"],
        listen=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    agent = Agent(settings, k8s=cache)
    cache.start()
    try:
        wait_for(cache.synced.is_set, "cache synced")
        assert agent.ready_checks and all(check() for check in agent.ready_checks.values())
        agent.sync_pods()
        assert agent.local.is_local("10.244.1.5")
        assert not agent.local.is_local("10.244.2.7")  # another node's pod
        assert not agent.local.is_local("192.168.0.10")  # hostNetwork: the node's address

        a = record("10.244.1.5", "10.244.2.7")
        for namer in agent.namers:
            namer(a)
        assert (a.src_name, a.src_workload, a.dst_name, a.dst_kind) == ("a-1", "a-1", "b-1", "pod")
        agent.traffic.record(a)
        assert agent.traffic.series_count()["k8spacket_tcp_sent_bytes_total"] == 1

        cluster.delete("pods", "shop", "a-1")
        wait_for(lambda: ("pods", "shop", "a-1") not in cache.index.objects["pods"], "delete seen")
        agent.sync_pods()
        assert not agent.local.is_local("10.244.1.5")
        assert agent.traffic.series_count()["k8spacket_tcp_sent_bytes_total"] == 0
    finally:
        cache.stop()
        api.close()
        agent.server.httpd.server_close()  # never started: nothing to shut down
        agent.naming.stop()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["enrichment.geoip.dbPath=/nonexistent/City.mmdb"],
            "--set enrichment.geoip.dbPath: GeoIP database '/nonexistent/City.mmdb' does not exist",
        ),
        (
            ["kubernetes.kubeconfig=/nonexistent/kubeconfig"],
            "--set kubernetes.kubeconfig: '/nonexistent/kubeconfig' does not exist",
        ),
    ],
    ids=["geoip-path-missing", "kubeconfig-missing"],
)
def test_naming_settings_errors_are_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Naming.from_settings(load_settings(sets=sets))
    assert str(err.value) == message


def test_seed_default_geoip_path_falls_back_to_the_packaged_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(sets=[f"enrichment.geoip.dbPath={SEED_GEOIP_DB_PATH}"], env={})
    settings.kubernetes.enabled = "false"
    require(not Path(SEED_GEOIP_DB_PATH).exists(), "the seed's default path exists here")
    naming = Naming.from_settings(settings)
    try:
        assert naming.external is not None and naming.external.geoip is not None
        assert naming.external.geoip.city_path != SEED_GEOIP_DB_PATH
        assert "does not exist; using the packaged GeoLite2-City" in caplog.text
    finally:
        naming.stop()
