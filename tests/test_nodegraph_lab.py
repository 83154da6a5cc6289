"""End to end: two lab nodes, an agent on each, one real Prometheus scraping both.

Pods on both nodes talk to each other (same node and across nodes). Every graph
source is asked on *either* agent, through its HTTP API, the way Grafana asks:

* ``prometheus`` and ``agents`` return the whole cluster with exactly the
  connections and bytes the TCP clients made inside the window, including
  edges born inside it (every batch-B edge but two is new, and the two old ones
  carry batch-A traffic from before the window that must not show);
* ``local`` returns the node's own part (the exactly-once rule: a connection
  is reported by the client's node when the client is a pod there);
* with one agent stopped, ``agents`` answers with the other's part and names
  the missing peer;
* an address nothing names is titled ``unknown``.

Names come from one inventory file (``kind: pod``), so each agent knows which
clients are pods on another node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AGENT_PORT, AgentProc, connect
from conftest import require_tool
from netlab import NetLab, tcptool_argv
from promserver import PrometheusServer

pytestmark = [pytest.mark.netns, pytest.mark.prometheus, pytest.mark.slow]

INVENTORY = """\
endpoints:
  - {cidr: 10.213.1.2, namespace: shop, name: web-1, workload: web, kind: pod}
  - {cidr: 10.213.1.3, namespace: shop, name: cart-1, workload: cart, kind: pod}
  - {cidr: 10.213.2.2, namespace: db, name: redis-0, workload: redis, kind: pod}
  - {cidr: 10.213.2.3, namespace: shop, name: api-1, workload: api, kind: pod}
"""
N1, N2 = "10.213.1.1", "10.213.2.1"  # the node addresses (bridges) the agents listen on
PEERS = [f"{N1}:{AGENT_PORT}", f"{N2}:{AGENT_PORT}"]
Edges = dict[tuple[str, str], tuple[int, int, int]]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        yield lab


def agent_config(tmp: Path, prometheus: str) -> str:
    return (
        f"inventory: {{path: '{tmp / 'inventory.yaml'}'}}\n"
        "kubernetes: {enabled: false}\n"
        f"http: {{prometheusURL: '{prometheus}', graphSource: agents}}\n"
        f"graph: {{bucket: 1s, window: 10m, peerTimeout: 2s, peers: {json.dumps(PEERS)}}}\n"
    )


def graph(agent: AgentProc, query: str) -> dict[str, Any]:
    status, body = agent.get(f"/api/graph/data?stats-type=bytes&{query}")
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def edges_of(data: dict[str, Any]) -> Edges:
    """(client title, server title) → (connections, sent bytes, received bytes)."""
    titles = {n["id"]: n["title"] for n in data["nodes"]}
    return {
        (titles[e["source"]], titles[e["target"]]): (
            e["detail__connections"],
            e["detail__sent_bytes"],
            e["detail__received_bytes"],
        )
        for e in data["edges"]
    }


def made(results: list[dict[str, Any]]) -> tuple[int, int, int]:
    return len(results), sum(r["sent"] for r in results), sum(r["received"] for r in results)


def add(into: Edges, key: tuple[str, str], results: list[dict[str, Any]]) -> None:
    c, s, r = made(results)
    c0, s0, r0 = into.get(key, (0, 0, 0))
    into[key] = (c0 + c, s0 + s, r0 + r)


def settled(ask: Any, want: Edges, timeout: float = 20) -> dict[str, Any]:
    """Ask until the edges equal ``want`` (records settle, scrapes land) or ``timeout`` passes.

    Returns the last answer either way: the caller asserts on it (a deadline to
    fail on, never a timing assertion).
    """
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = ask()
        if edges_of(got) == want or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


@pytest.mark.timeout(150)
def test_every_source_on_either_agent(lab: NetLab, tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    web = lab.add_pod("web", "10.213.1.2/24")
    cart = lab.add_pod("cart", "10.213.1.3/24")
    stray = lab.add_pod("stray", "10.213.1.9/24")  # in no inventory: "unknown"
    redis = lab.add_pod("redis", "10.213.2.2/24", node="n2")
    api = lab.add_pod("api", "10.213.2.3/24", node="n2")
    lab.popen_in(cart, tcptool_argv("serve", "--port", "8080", "--reply", "700"))
    lab.popen_in(redis, tcptool_argv("serve", "--port", "6379", "--reply", "5000"))
    lab.wait_listening(cart, 8080)
    lab.wait_listening(redis, 6379)
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    agents = []
    for node, prom_url in (("n1", "http://127.0.0.1:9090"), ("n2", f"http://{N1}:9090")):
        work = tmp_path / node
        work.mkdir()
        agents.append(
            AgentProc(
                lab,
                work,
                agent_config(tmp_path, prom_url),
                node=node,
                listen="0.0.0.0",
            )
        )
    a1, a2 = agents
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    prometheus = PrometheusServer(
        binary, PEERS, prom_dir, lab.nodes["n1"].netns, listen_host="0.0.0.0"
    )
    try:
        for agent, interfaces in ((a1, 3), (a2, 2)):
            agent.wait("readiness", lambda a=agent: a.get("/readyz")[0] == 200)
            agent.wait(
                "pod interfaces",
                lambda a=agent, n=interfaces: a.metric_sum("k8spacket_capture_interfaces") == n,
            )
        prometheus.wait_target_up()

        # batch A, before the window: web→cart and cart→redis exist before it
        connect(lab, web, "10.213.1.3", "8080", "--send", "111", "--count", "2")
        connect(lab, cart, "10.213.2.2", "6379", "--send", "222")
        total = "k8spacket_tcp_connections_total"
        a1.wait("batch A published", lambda: a1.metric_sum(total) >= 3)
        prometheus.wait_until(
            "batch A scraped",
            lambda: (
                prometheus.value(f"sum({total})") == a1.metric_sum(total) + a2.metric_sum(total)
            ),
        )
        time.sleep(2.5)  # past batch A's buckets and its last scrape
        since_ms = int(time.time() * 1000)

        # batch B, inside the window
        want: Edges = {}
        add(
            want,
            ("web", "cart"),
            connect(lab, web, "10.213.1.3", "8080", "--send", "1000", "--count", "3"),
        )
        add(
            want,
            ("cart", "redis"),
            connect(lab, cart, "10.213.2.2", "6379", "--send", "1234", "--count", "2"),
        )
        add(want, ("api", "redis"), connect(lab, api, "10.213.2.2", "6379", "--send", "77"))
        add(
            want,
            ("api", "cart"),
            connect(lab, api, "10.213.1.3", "8080", "--send", "500", "--count", "2"),
        )
        add(want, ("unknown", "cart"), connect(lab, stray, "10.213.1.3", "8080", "--send", "9"))
        (refused,) = connect(lab, web, "10.213.1.3", "1")
        assert refused["error"] == "refused"
        add(want, ("web", "cart"), [refused])  # fmt: skip
        local_n1 = {k: v for k, v in want.items() if k[0] in ("web", "cart", "unknown")}
        local_n2 = {k: v for k, v in want.items() if k[0] == "api"}

        def window() -> str:
            return f"from={since_ms}&to={int(time.time() * 1000) + 1}"

        for agent in agents:
            for source in ("agents", "prometheus"):
                got = settled(lambda a=agent, s=source: graph(a, f"source={s}&{window()}"), want)
                assert edges_of(got) == want, (agent.proc.args, source)
                assert "unknown" in {n["title"] for n in got["nodes"]}
                assert all(n["title"] for n in got["nodes"])
        assert edges_of(graph(a1, f"source=local&{window()}")) == local_n1
        assert edges_of(graph(a2, f"source=local&{window()}")) == local_n2
        # the default source is the setting's (agents), the failed share counted
        status, body = a2.get(f"/nodegraph/api/graph/data?{window()}")
        conn = json.loads(body)
        assert status == 200 and conn["detail"]["source"] == "agents"
        (web_cart,) = [e for e in conn["edges"] if e["id"] == "pod:shop/web->pod:shop/cart"]
        assert web_cart["detail__failed"] == 1 and web_cart["detail__connections"] == 4

        # one agent stopped: the other's part, the missing peer named and counted
        assert a2.terminate() == 0
        data = graph(a1, f"source=agents&{window()}")
        assert edges_of(data) == local_n1
        assert data["detail"]["missing_count"] == 1
        assert [m["peer"] for m in data["detail"]["missing"]] == [PEERS[1]]
        assert all(PEERS[1] in n["detail__source"] for n in data["nodes"])
        # Prometheus still has both agents' counters
        assert edges_of(graph(a1, f"source=prometheus&{window()}")) == want
        assert a1.terminate() == 0
    finally:
        prometheus.stop()
        for agent in agents:
            agent.close()
