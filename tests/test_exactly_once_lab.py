"""Counted once, cluster-wide: two nodes, an agent on each, one real Prometheus scraping both.

The lab (tests/netlab) has two nodes with pods ``a``, ``b`` on n1 and ``c`` on
n2, an "internet" host (81.2.69.142, behind a third node namespace that runs
no agent) and kube-proxy-style DNAT rules for two Service addresses on both
nodes (iptables in the node namespaces, as kube-proxy installs them on every
node). Both agents read the same inventory (pods, nodes, Services, the
internet host) and opt in the ``dst_service`` label. Each kind of connection
uses its own server port, so ``sum by (src_workload, dst_workload, dst_port)``
over both agents in Prometheus can be compared with what the TCP clients did,
exactly, scenario by scenario: same-node, cross-node both ways, pod→node,
node→pod, internet→pod, pod→internet, refused (same-node and cross-node) and
Service connections through DNAT (same-node, cross-node both ways). The open
connections gauge sums to 0 once everything has closed. A second test: a pooled
connection idle past ``closeOlderThan`` and reused (the tracker's dormant rule,
``tracker.forgetAfter``) is one connection, and counts as open while it idles.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProc
from conftest import require_tool
from netlab import NetLab, Node, Pod, tcptool_argv
from promserver import PrometheusServer

pytestmark = [pytest.mark.netns, pytest.mark.prometheus, pytest.mark.slow]

A, B, C, INET = "10.213.1.2", "10.213.1.3", "10.213.2.2", "81.2.69.142"
SVC_B, SVC_C = "10.96.0.10", "10.96.0.11"  # ClusterIPs: port 80 → b:8084, c:9091
N1_NODE = "10.213.1.1"  # n1's bridge address: a process on node n1 serves there

INVENTORY = f"""
endpoints:
  - {{cidr: {A}/32, namespace: shop, name: a-1, workload: a, kind: pod}}
  - {{cidr: {B}/32, namespace: shop, name: b-1, workload: b, kind: pod}}
  - {{cidr: {C}/32, namespace: shop, name: c-1, workload: c, kind: pod}}
  - {{cidr: {SVC_B}/32, namespace: shop, name: svc-b, workload: svc-b, kind: service}}
  - {{cidr: {SVC_C}/32, namespace: shop, name: svc-c, workload: svc-c, kind: service}}
  - {{cidr: 10.213.0.0/24, name: uplinks, workload: uplinks, kind: node}}
  - {{cidr: {N1_NODE}/32, name: n1, workload: n1, kind: node}}
  - {{cidr: 10.213.2.1/32, name: n2, workload: n2, kind: node}}
  - {{cidr: {INET}/32, name: internet, workload: internet, kind: external}}
"""


def dnat(lab: NetLab, node: Node, vip: str, backend: str, port: int) -> None:
    lab.run_in(node, ["iptables", "-t", "nat", "-A", "PREROUTING", "-d", vip, "-p", "tcp",
                      "--dport", "80", "-j", "DNAT", "--to-destination", f"{backend}:{port}"])  # fmt: skip


def run_client(lab: NetLab, where: Pod | Node, *args: str) -> list[dict[str, Any]]:
    r = lab.run_in(where, tcptool_argv("connect", *args))
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        yield lab


def start_agents(lab: NetLab, tmp_path: Path, tracker: str = "") -> dict[str, AgentProc]:
    """An agent on n1 and n2; ``tracker``: more indented ``tracker:`` keys (agentproc's tree)."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    config = tracker + f"inventory:\n  path: {inventory}\nmetrics:\n  labels: [dst_service]\n"
    agents: dict[str, AgentProc] = {}
    for node in ("n1", "n2"):
        work = tmp_path / node
        work.mkdir()
        agents[node] = AgentProc(lab, work, config, node=node, listen="0.0.0.0")
    for agent in agents.values():
        agent.wait("readiness", lambda agent=agent: agent.get("/readyz")[0] == 200)
    return agents


def test_sum_over_agents_counts_every_connection_once(lab: NetLab, tmp_path: Path) -> None:
    prometheus_bin = require_tool("prometheus")
    require_tool("iptables")
    a = lab.add_pod("a", f"{A}/24")
    b = lab.add_pod("b", f"{B}/24")
    c = lab.add_pod("c", f"{C}/24", node="n2")
    inet = lab.add_pod("inet", f"{INET}/24", node="n3")  # the internet: a node without agent
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
    for node in (n1, n2):  # kube-proxy programs every node
        dnat(lab, node, SVC_B, B, 8084)
        dnat(lab, node, SVC_C, C, 9091)
    servers = [(b, 8080, 1000), (b, 8081, 700), (b, 8082, 30), (b, 8083, 55), (b, 8084, 400),
               (c, 9090, 7), (c, 9091, 90), (inet, 443, 1234), (n1, 7070, 11)]  # fmt: skip
    for where, port, reply in servers:
        lab.popen_in(where, tcptool_argv("serve", "--port", str(port), "--reply", str(reply)))
    for where, port, _ in servers:
        if isinstance(where, Pod):
            lab.wait_listening(where, port)
    time.sleep(0.3)  # the node's server (ss in a node namespace sees its own sockets only)
    agents = start_agents(lab, tmp_path)
    agents["n1"].wait(
        "n1's pods", lambda: agents["n1"].metric_sum("k8spacket_capture_interfaces") == 2
    )
    agents["n2"].wait(
        "n2's pod", lambda: agents["n2"].metric_sum("k8spacket_capture_interfaces") == 1
    )
    prom = PrometheusServer(prometheus_bin, ["127.0.0.1:6676", "10.213.0.6:6676"], tmp_path,
                            netns=n1.netns)  # fmt: skip
    try:
        prom.wait_target_up()
        # (src workload, dst workload, dst port) → [sent, received, connections]
        want: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        want_service: Counter[str] = Counter()

        def made(src: str, dst: str, port: int, results: list[dict[str, Any]]) -> None:
            w = want[(src, dst, str(port))]
            for r in results:
                w[0] += r["sent"]
                w[1] += r["received"]
                w[2] += 1

        made("a", "b", 8080, run_client(lab, a, B, "8080", "--send", "500", "--count", "3"))
        made("a", "c", 9090, run_client(lab, a, C, "9090", "--send", "3000", "--hold", "2.5"))
        made("c", "b", 8081, run_client(lab, c, B, "8081", "--send", "77", "--count", "2"))
        made("c", "n1", 7070, run_client(lab, c, N1_NODE, "7070", "--send", "13"))  # pod → node
        made("uplinks", "b", 8082, run_client(lab, n2, B, "8082", "--send", "21"))  # node → pod
        made("internet", "b", 8083, run_client(lab, inet, B, "8083", "--send", "99"))
        made("c", "internet", 443, run_client(lab, c, INET, "443", "--send", "4321"))
        made("a", "b", 1, run_client(lab, a, B, "1"))  # refused, same node
        made("c", "b", 2, run_client(lab, c, B, "2"))  # refused, across nodes
        for client, vip, dst, port, n in ((a, SVC_B, "b", 8084, 2), (c, SVC_B, "b", 8084, 1),
                                          (a, SVC_C, "c", 9091, 1)):  # fmt: skip
            results = run_client(lab, client, vip, "80", "--send", "250", "--count", str(n))
            assert all(r["error"] is None for r in results), results
            made(client.name, dst, port, results)
            want_service["svc-b" if vip == SVC_B else "svc-c"] += n
        # a Service connection that lives across flushes (interim records, the open gauge)
        made("a", "b", 8084, run_client(lab, a, SVC_B, "80", "--send", "900", "--hold", "2.5"))
        want_service["svc-b"] += 1
        total_connections = sum(w[2] for w in want.values())

        # every agent published its final records (the rest is Prometheus' business)
        def finals(agent: AgentProc) -> int:
            return sum(1 for r in agent.records() if r["close"] is not None)

        for agent in agents.values():
            agent.wait("final records", lambda agent=agent: finals(agent) > 0)
        # every connection counted has ended (a double count would pass this point too)
        prom.wait_until(
            "every connection closed",
            lambda: (
                (prom.value("sum(k8spacket_tcp_connections_closed_total)") or 0)
                >= total_connections
            ),
        )
        time.sleep(1.5)  # the settle delay and one flush period: nothing is left in flight
        settled = time.time()
        prom.wait_until("a scrape of both agents after the last record",
                        lambda: (prom.value("min(timestamp(up))") or 0) > settled + 0.5)  # fmt: skip

        got = prom.by_labels(
            "sum by (src_workload, dst_workload, dst_port) (k8spacket_tcp_sent_bytes_total)",
            "src_workload", "dst_workload", "dst_port",
        )  # fmt: skip
        got_rx = prom.by_labels(
            "sum by (src_workload, dst_workload, dst_port) (k8spacket_tcp_received_bytes_total)",
            "src_workload", "dst_workload", "dst_port",
        )  # fmt: skip
        got_conns = prom.by_labels(
            "sum by (src_workload, dst_workload, dst_port) (k8spacket_tcp_connections_total)",
            "src_workload", "dst_workload", "dst_port",
        )  # fmt: skip
        expected_sent = {k: float(v[0]) for k, v in want.items() if v[0]}
        assert {k: v for k, v in got.items() if v} == expected_sent
        assert {k: v for k, v in got_rx.items() if v} == {
            k: float(v[1]) for k, v in want.items() if v[1]
        }
        assert got_conns == {k: float(v[2]) for k, v in want.items()}
        assert prom.value("sum(k8spacket_tcp_connections_total)") == total_connections
        refused = prom.by_labels(
            'sum by (dst_port) (k8spacket_tcp_connections_total{outcome="refused"})', "dst_port"
        )
        assert refused == {"1": 1.0, "2": 1.0}
        services = prom.by_labels(
            'sum by (dst_service) (k8spacket_tcp_connections_total{dst_service!=""})',
            "dst_service",
        )
        assert services == {k: float(v) for k, v in want_service.items()}
        assert prom.value("sum(k8spacket_tcp_open_connections)") in (0.0, None)
        # the graph built from the records counts them once too: each agent's local
        # edges, summed over both agents (what the `agents` graph source does)
        graph_connections = graph_sent = 0.0
        for agent in agents.values():
            status, body = agent.get("/nodegraph/api/graph/data?source=local&stats-type=connection")
            assert status == 200, body
            for edge in json.loads(body)["edges"]:
                graph_connections += edge["detail__connections"]
                graph_sent += edge["detail__sent_bytes"]
        assert graph_connections == total_connections
        assert graph_sent == sum(w[0] for w in want.values())
        # each agent says what it left out, and why
        n1_left_out = prom.by_labels(
            'sum by (reason) (k8spacket_records_not_reported_total{instance="127.0.0.1:6676"})',
            "reason",
        )
        assert n1_left_out["remote_client_pod"] > 0  # c → b (direct, refused, via svc-b)
        assert n1_left_out["service_backend_view"] > 0  # a → svc-b → b, seen on b's veth
        assert prom.value("sum(k8spacket_publish_dropped_total)") == 0
        assert prom.value("sum(k8spacket_capture_drops_total)") == 0
        # the left-out records are still in each agent's store, with their reporter
        n1_records = agents["n1"].records()
        assert {r["reporter"] for r in n1_records if r["src"] == C} == {"server"}
    finally:
        prom.stop()
        for agent in agents.values():
            agent.close()


def test_a_pooled_connection_idle_past_close_older_than_is_one_connection(
    lab: NetLab, tmp_path: Path
) -> None:
    """Idle past ``closeOlderThan`` and reused: one connection, open while it idles."""
    prometheus_bin = require_tool("prometheus")
    a = lab.add_pod("a", f"{A}/24")
    b = lab.add_pod("b", f"{B}/24")
    lab.add_pod("c", f"{C}/24", node="n2")
    lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "10"))
    lab.wait_listening(b, 8080)
    agents = start_agents(lab, tmp_path, "  forgetAfter: 60s\n")
    prom = PrometheusServer(prometheus_bin, ["127.0.0.1:6676", "10.213.0.6:6676"], tmp_path,
                            netns=lab.nodes["n1"].netns)  # fmt: skip
    try:
        prom.wait_target_up()
        # 3 writes, 5 s apart: two silences past closeOlderThan (4 s, see agentproc)
        t0 = time.time()
        (res,) = run_client(lab, a, B, "8080", "--send", "3", "--hold", "15", "--chunks", "3")
        assert res["error"] is None
        n1 = agents["n1"]
        n1.wait("the final record", lambda: any(r["close"] for r in n1.records()))
        time.sleep(1.5)
        settled = time.time()
        prom.wait_until("a scrape after the close",
                        lambda: (prom.value("min(timestamp(up))") or 0) > settled + 0.5)  # fmt: skip
        assert prom.value("sum(k8spacket_tcp_connections_total)") == 1
        assert prom.value('sum(k8spacket_tcp_connections_total{outcome="midstream"})') in (
            0.0,
            None,
        )
        assert prom.value("sum(k8spacket_tcp_sent_bytes_total)") == res["sent"]
        assert prom.value("sum(k8spacket_tcp_received_bytes_total)") == res["received"]
        # while it idled past closeOlderThan, it was open
        for quiet in (4.6, 9.6):
            assert prom.value("sum(k8spacket_tcp_open_connections)", at=t0 + quiet) == 1
        assert prom.value("sum(k8spacket_tcp_open_connections)") in (0.0, None)
    finally:
        prom.stop()
        for agent in agents.values():
            agent.close()
