"""The exactly-once rule in the wired agent, with names from the Kubernetes cache (kmock).

In process: the agent's own publisher, naming chain and local addresses, the
cache listing pods of this node and of another one from kmock over real HTTP.
The agent on the server's node stays silent when the client is a pod of
another node, and reports a node or the internet as client.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from k8spacket.agent import Agent
from k8spacket.config import load_settings
from k8spacket.enrich.k8s import K8sCache
from k8spacket.flows.record import ConnectionRecord
from kmockserver import FakeCluster, fast_backoff, node, pod, record, wait_for
from promserver import free_port

pytestmark = [pytest.mark.kmock, pytest.mark.timeout(60)]

NODE = "node-1"


def test_server_side_agent_is_silent_for_another_nodes_pod(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("web-1", ("10.244.1.5",), node=NODE))
    cluster.create("pods", pod("cart-1", ("10.244.2.7",), node="node-2"))
    cluster.create("nodes", node("node-2", ("192.168.0.12",)))
    cfg = k8s_client.Configuration(host=cluster.url)
    cfg.retries = False
    api = k8s_client.ApiClient(cfg)
    cache = K8sCache(api, watch_timeout=2.0, connect_timeout=2.0, backoff=fast_backoff)
    settings = load_settings(
        sets=["kubernetes.nodeName=" + NODE, "enrichment.geoip.enabled=false",
              "capture.conntrack=false"],
        listen=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    agent = Agent(settings, k8s=cache)
    counted: list[ConnectionRecord] = []
    agent.record_sinks.append(counted.append)
    cache.start()
    try:
        wait_for(cache.synced.is_set, "cache synced")
        agent.sync_pods()
        cases = {
            "from-other-nodes-pod": record("10.244.2.7", "10.244.1.5", bytes_sent=1),
            "to-other-nodes-pod": record("10.244.1.5", "10.244.2.7", bytes_sent=2),
            "from-a-node": record("192.168.0.12", "10.244.1.5", bytes_sent=4),
            "from-the-internet": record("81.2.69.142", "10.244.1.5", bytes_sent=8),
        }
        for r in cases.values():
            agent.publisher.publish(r)
        assert {r.bytes_sent for r in counted} == {2, 4, 8}
        assert [r.reporter for r in cases.values()] == ["server", "client", "server", "server"]
        assert agent.publisher.counters()["remote_client_pod"] == 1
        assert len(agent.store) == 4  # every record stays in the connection store
        assert agent.traffic.series_count()["k8spacket_tcp_sent_bytes_total"] == 3
    finally:
        cache.stop()
        api.close()
        agent.server.httpd.server_close()  # never started
        agent.naming.stop()
