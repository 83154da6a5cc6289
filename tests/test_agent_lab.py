"""The node agent in the network lab: real pods, real kernel TCP, records and metrics.

The agent runs as ``python -m k8spacket.cli run`` inside the lab's node
namespace (as a DaemonSet pod with hostNetwork would); the test reads its HTTP
API from inside that namespace and compares what it reports with what the TCP
clients and servers did, byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentproc import AgentProc, connect
from netlab import NetLab, tcptool_argv

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_agents: list[AgentProc] = []


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        try:
            yield lab
        finally:
            while _agents:
                _agents.pop().close()


def start_agent(lab: NetLab, tmp_path: Path, extra: str = "", mode: str = "") -> AgentProc:
    """The agent in node n1; ``mode`` sets ``capture.mode`` (lean: no warm-up)."""
    command = None
    if mode:
        command = [sys.executable, "-m", "k8spacket.cli", "run", "--set", f"capture.mode={mode}",
                   "--set", "capture.leanWarmup=0"]  # fmt: skip
    agent = AgentProc(lab, tmp_path, extra, command=command)
    _agents.append(agent)
    agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
    return agent


def by_connection(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[(r["src"], r["src_port"], r["dst"], r["dst_port"])].append(r)
    return out


@pytest.mark.parametrize("mode", ["full", "lean"])
def test_agent_reports_exactly_what_pods_did(lab: NetLab, tmp_path: Path, mode: str) -> None:
    a = lab.add_pod("a", "10.213.1.2/24")
    b = lab.add_pod("b", "10.213.1.3/24")
    c = lab.add_pod("c", "10.213.2.2/24", node="n2")
    lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "1000"))
    lab.popen_in(b, tcptool_argv("serve", "--port", "8081", "--reply", "400",
                                 "--reply-after", "300"))  # fmt: skip
    lab.popen_in(c, tcptool_argv("serve", "--port", "9090", "--reply", "7"))
    for pod, port in ((b, 8080), (b, 8081), (c, 9090)):
        lab.wait_listening(pod, port)
    agent = start_agent(lab, tmp_path, mode=mode)
    agent.wait("two pod interfaces", lambda: agent.metric_sum("k8spacket_capture_interfaces") == 2)

    # (src ip, result, expected outcome, expected close, expected reporter)
    done: list[tuple[str, str, dict[str, Any], str, str, str]] = []
    for res in connect(lab, a, "10.213.1.3", "8080", "--send", "500", "--count", "3"):
        done.append(("10.213.1.2", "10.213.1.3", res, "established", "fin", "client"))
    for res in connect(lab, a, "10.213.2.2", "9090", "--send", "3"):
        done.append(("10.213.1.2", "10.213.2.2", res, "established", "fin", "client"))
    for res in connect(lab, c, "10.213.1.3", "8080", "--send", "11"):
        done.append(("10.213.2.2", "10.213.1.3", res, "established", "fin", "server"))
    for res in connect(lab, a, "10.213.1.3", "8081", "--send", "300", "--rst", "--expect", "400"):
        done.append(("10.213.1.2", "10.213.1.3", res, "established", "rst", "client"))
    for res in connect(lab, a, "10.213.1.3", "8080", "--send", "2000", "--hold", "2.5"):
        done.append(("10.213.1.2", "10.213.1.3", res, "established", "fin", "client"))
    refused_before = len(done)
    connect(lab, a, "10.213.1.3", "1")  # refused: its port is only known from the records
    assert all(d[2]["error"] is None for d in done)

    def all_final() -> bool:
        conns = by_connection(agent.records())
        finals = sum(1 for recs in conns.values() for r in recs if r["close"] is not None)
        return finals == refused_before + 1

    agent.wait("final records", all_final)
    records = agent.records()
    conns = by_connection(records)
    # exactly one connection per client connection, plus the refused one: nothing twice
    assert len(conns) == refused_before + 1, json.dumps(records, indent=1)
    for src, dst, res, outcome, close, reporter in done:
        dport = {"10.213.2.2": 9090}.get(dst, 8081 if close == "rst" else 8080)
        recs = conns[(src, res["local_port"], dst, dport)]
        assert sum(r["bytes_sent"] for r in recs) == res["sent"], recs
        assert sum(r["bytes_received"] for r in recs) == res["received"], recs
        finals = [r for r in recs if r["close"] is not None]
        assert [(r["outcome"], r["close"]) for r in finals] == [(outcome, close)], recs
        assert sum(r["first"] for r in recs) == 1
        assert {r["reporter"] for r in recs} == {reporter}, recs
    held = [recs for recs in conns.values() if sum(r["bytes_sent"] for r in recs) == 2000]
    assert len(held) == 1 and len(held[0]) >= 2, "the long-lived connection had interim records"
    (refused,) = [recs for k, recs in conns.items() if k[3] == 1]
    assert [(r["outcome"], r["close"], r["reporter"]) for r in refused] == [
        ("refused", "rst", "client")
    ]

    # metrics say the same
    sent = sum(d[2]["sent"] for d in done)
    received = sum(d[2]["received"] for d in done)
    assert agent.metric_sum("k8spacket_tcp_sent_bytes_total") == sent
    assert agent.metric_sum("k8spacket_tcp_received_bytes_total") == received
    assert agent.metric_sum("k8spacket_tcp_connections_total") == len(done) + 1
    assert agent.metric_sum("k8spacket_tcp_connections_total", outcome="refused") == 1
    assert agent.metric_sum("k8spacket_tcp_connections_closed_total", close="rst") == 2
    assert agent.metric_sum("k8spacket_capture_drops_total") == 0
    # pod-to-pod packets were seen on both veths and counted from one
    assert agent.metric_sum("k8spacket_capture_not_owner_total") > 0
    assert agent.terminate() == 0


HOLDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"h" * int(sys.argv[3]))
print("sent", flush=True)
time.sleep(60)
"""


def test_open_connection_is_flushed_on_sigterm(lab: NetLab, tmp_path: Path) -> None:
    """SIGTERM publishes an open connection's bytes: the flushed record itself is checked."""
    a = lab.add_pod("a", "10.213.1.2/24")
    b = lab.add_pod("b", "10.213.1.3/24")
    lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "5"))
    lab.wait_listening(b, 8080)
    dump = tmp_path / "published.json"
    # no interim record before the signal: whatever is published comes from the flush
    agent = AgentProc(
        lab,
        tmp_path,
        "  flushPeriod: 60s\n  closeOlderThan: 120s\nhttp:\n  connectionStore: 100\n",
        command=[
            sys.executable,
            str(Path(__file__).with_name("agentdump.py")),
            "--dump",
            str(dump),
        ],
    )
    _agents.append(agent)
    agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
    agent.wait("two pod interfaces", lambda: agent.metric_sum("k8spacket_capture_interfaces") == 2)
    client = lab.popen_in(a, [sys.executable, "-c", HOLDER, "10.213.1.3", "8080", "40000"],
                          stdout=subprocess.PIPE)  # fmt: skip
    assert client.stdout is not None and client.stdout.readline().strip() == b"sent"
    agent.wait("the connection tracked", lambda: agent.metric_sum("k8spacket_flows_tracked") >= 1)
    assert agent.metric_sum("k8spacket_tcp_sent_bytes_total") == 0  # nothing published yet
    signalled = time.time()
    assert agent.terminate() == 0
    client.kill()
    published = json.loads(dump.read_text())
    mine = [r for r in published["records"] if r["src"] == "10.213.1.2" and r["dst_port"] == 8080]
    assert [(r["bytes_sent"], r["bytes_received"], r["close"], r["first"]) for r in mine] == [
        (40000, 0, None, True)
    ], published["records"]
    assert mine[0]["end"] >= signalled and mine[0]["outcome"] == "established"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(published["metrics"])
        for s in fam.samples
    }
    total = lambda name: sum(v for (n, _), v in samples.items() if n == name)  # noqa: E731
    assert total("k8spacket_tcp_sent_bytes_total") == 40000
    assert total("k8spacket_tcp_connections_total") == 1
    assert total("k8spacket_tcp_open_connections") == 1  # flushed open, not closed


def test_interfaces_come_and_go_without_harm(lab: NetLab, tmp_path: Path) -> None:
    node = lab.nodes["n1"]
    a = lab.add_pod("a", "10.213.1.2/24")
    b = lab.add_pod("b", "10.213.1.3/24")
    lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "9"))
    lab.wait_listening(b, 8080)
    agent = start_agent(lab, tmp_path)
    ifaces = lambda: agent.metric_sum("k8spacket_capture_interfaces")  # noqa: E731
    skipped = lambda reason: agent.metric_sum(  # noqa: E731
        "k8spacket_capture_interfaces_skipped", reason=reason
    )
    agent.wait("two pod interfaces", lambda: ifaces() == 2)
    # a tunl0 and a DOWN veth whose peers are in pod namespaces: skipped, never fatal
    lab.add_pod("t", "10.213.1.9/24", up=False)  # host side left DOWN
    lab.ip("link", "add", "tunl0", "type", "veth", "peer", "name", "eth1", "netns",
           lab.pods["t"].netns, netns=node.netns)  # fmt: skip
    lab.ip("link", "set", "tunl0", "up", netns=node.netns)
    agent.wait("a skipped DOWN interface", lambda: skipped("down") == 1)
    agent.wait("a skipped tunl0", lambda: skipped("ignored_name") == 1)
    # a new pod is captured (the seconds it took are printed, not asserted)
    c = lab.add_pod("c", "10.213.1.4/24")
    t0 = time.monotonic()
    agent.wait("the new pod's interface", lambda: ifaces() == 3)
    took = time.monotonic() - t0
    print(f"new interface captured after {took:.2f}s (including the metrics round trip)")
    (res,) = connect(lab, c, "10.213.1.3", "8080", "--send", "21")
    assert res["received"] == 9
    agent.wait(
        "the new pod's connection",
        lambda: any(r["src"] == "10.213.1.4" and r["close"] for r in agent.records()),
    )
    # pods deleted mid-capture (one with a connection open): the agent carries on
    hold = lab.popen_in(a, tcptool_argv("connect", "10.213.1.3", "8080", "--send", "100000",
                                        "--hold", "20"))  # fmt: skip
    agent.wait("bytes flowing", lambda: any(r["src"] == "10.213.1.2" for r in agent.records()))
    lab.remove_pod(a)
    lab.remove_pod(c)
    agent.wait("interfaces removed", lambda: ifaces() == 1)
    hold.kill()
    (res,) = connect(lab, lab.add_pod("d", "10.213.1.5/24"), "10.213.1.3", "8080", "--send", "5")
    assert res["received"] == 9
    agent.wait(
        "a later pod's connection",
        lambda: any(r["src"] == "10.213.1.5" and r["close"] for r in agent.records()),
    )
    assert agent.metric_sum("k8spacket_capture_drops_total") == 0
    assert agent.terminate() == 0
