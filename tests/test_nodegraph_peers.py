"""The agents source finds its peers through the Kubernetes API (kmock, the real client).

The peers are the DaemonSet's running pods (label selector, namespace); each is
asked on its own address and the agent's port. An API that cannot be reached
makes the ``agents`` source answer 503 with the reason, never a crash.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s_client

from k8spacket.agent import graph_peers
from k8spacket.config import load_settings
from k8spacket.enrich.k8s import K8sCache, list_agent_addresses
from k8spacket.nodegraph.api import graph_api_from_settings
from k8spacket.nodegraph.local import LocalGraphStore
from kmockserver import FakeCluster, pod

pytestmark = [pytest.mark.kmock, pytest.mark.timeout(60)]
AGENT = {"app.kubernetes.io/name": "k8spacket"}


def api_client(c: FakeCluster) -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration(host=c.url)
    cfg.retries = False
    return k8s_client.ApiClient(cfg)


def test_peers_are_the_running_agent_pods(cluster: FakeCluster) -> None:
    cluster.create("pods", pod("k8spacket-a", ("10.0.0.1",), ns="monitoring", labels=AGENT))
    cluster.create("pods", pod("k8spacket-b", ("10.0.0.2",), ns="monitoring", labels=AGENT))
    cluster.create("pods", pod("k8spacket-c", ("10.0.0.3",), ns="monitoring", labels=AGENT,
                               phase="Pending"))  # fmt: skip
    cluster.create("pods", pod("k8spacket-x", ("10.0.0.4",), ns="other", labels=AGENT))
    cluster.create("pods", pod("cart-1", ("10.244.0.5",), ns="monitoring"))
    api = api_client(cluster)
    try:
        selector = "app.kubernetes.io/name=k8spacket"
        assert list_agent_addresses(api, "monitoring", selector) == ["10.0.0.1", "10.0.0.2"]
        assert list_agent_addresses(api, "", selector) == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
        settings = load_settings(env={"POD_NAMESPACE": "monitoring"}, sets=["http.port=7000"])
        peers = graph_peers(settings, K8sCache(api))
        assert peers is not None and peers() == ["10.0.0.1:7000", "10.0.0.2:7000"]
    finally:
        api.close()


def test_unreachable_api_is_a_503(cluster: FakeCluster) -> None:
    api = api_client(cluster)
    try:
        settings = load_settings(sets=["graph.peerTimeout=500ms"])
        peers = graph_peers(settings, K8sCache(api))
        graph = graph_api_from_settings(settings, LocalGraphStore(), peers=peers, in_cluster=True)
        assert graph.default == "agents"
        cluster.unreachable()
        status, _, body = graph.data("")
        assert status == 503 and "cannot list the agents" in json.loads(body)["error"]
        status, _, body = graph.health("")
        assert status == 503 and "cannot list the agents" in json.loads(body)["message"]
    finally:
        cluster.reachable()
        api.close()
