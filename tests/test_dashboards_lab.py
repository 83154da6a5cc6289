"""The dashboards' queries against a real agent and a real Prometheus, with real traffic.

One lab (tests/netlab) for the module: pods in a node namespace make TCP
connections with known byte counts, the agent (``k8spacket run``) captures them,
and a real Prometheus scrapes it every second with the ``node`` label the chart's
scrape configs add. Then:

* every PromQL expression of every dashboard (panel targets and variable
  queries), with Grafana's variables substituted, is evaluated the way Grafana
  evaluates it (range query for time series, instant for tables and the node
  graph), must be accepted, and must return data; an expression may come back
  empty only when a metric it reads is not exposed by the agent at all, and
  then only for the names listed in ``NOT_IN_THE_LAB`` with the reason;
* the Prometheus-only topology's instant results are turned into data frames
  by Grafana's rules (:func:`prometheus_table_frames`, :func:`organize`,
  :func:`node_graph`) and checked as a Node Graph answer: node ids, every
  edge's ends, and the workload pairs and byte and connection totals the TCP
  clients reported;
* the Node Graph API and Infinity panels' queries are sent to the agent as the
  plugins send them and must answer 200 with nodes and edges.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agentproc import AGENT_PORT, AgentProc, connect
from conftest import REPO, require_tool
from k8spacket import dashboards as gen
from netlab import NetLab, tcptool_argv
from promserver import PrometheusServer

RATE_INTERVAL = "4s"  # Grafana: max(4 x scrape interval, step + scrape interval)
#: metric names the dashboards read that this lab's agent does not expose, and why;
#: any other name that is not exposed is a mistake in a dashboard
NOT_IN_THE_LAB = {
    "k8spacket_k8s_watch_events_total": "the lab runs without Kubernetes (kubernetes.enabled: false)",
    "k8spacket_enrichment_lookups_total": "external naming needs public addresses (the lab has none)",
}
INVENTORY = """\
endpoints:
  - {cidr: 10.213.1.2, namespace: shop, name: cart-5d8f9-a, workload: cart, kind: pod}
  - {cidr: 10.213.1.3, namespace: shop, name: redis-0, workload: redis, kind: pod}
  - {cidr: 10.213.1.4, namespace: shop, name: web-7c6b5-b, workload: web, kind: pod}
  - {cidr: 10.213.1.9, name: example-org, workload: Example Org, kind: external}
"""
#: node ids of the topologies (the Node Graph API's workload level): <kind>:<namespace>/<workload>
CART, REDIS, WEB, EXT = "pod:shop/cart", "pod:shop/redis", "pod:shop/web", "external:/Example Org"


# ---------------------------------------------------------------- Grafana's rules
Frame = dict[str, Any]  # {"refId": str, "fields": {name: [values]}}


def prometheus_table_frames(results: dict[str, list[dict[str, Any]]]) -> list[Frame]:
    """Instant vector results → Grafana's table frames, one per refId.

    Grafana's ``transformDFToTable`` (packages/grafana-prometheus/src/
    result_transformer.ts): per refId a Time column, then one string column per
    label name (each series' label names sorted, new names appended in order of
    appearance; a series without a label gets ''), then the value column, named
    ``Value #<refId>`` when several refIds are in the response, else ``Value``.
    """
    frames = []
    for ref, series in results.items():
        labels: list[str] = []
        for s in series:
            for name in sorted(s["metric"]):
                if name not in labels:
                    labels.append(name)
        value_name = f"Value #{ref}" if len(results) > 1 else "Value"
        fields: dict[str, list[Any]] = {"Time": [float(s["value"][0]) * 1000 for s in series]}
        for name in labels:
            fields[name] = [s["metric"].get(name, "") for s in series]
        fields[value_name] = [float(s["value"][1]) for s in series]
        frames.append({"refId": ref, "fields": fields})
    return frames


def organize(frames: list[Frame], options: dict[str, Any]) -> list[Frame]:
    """Grafana's ``organize`` transformation: drop ``excludeByName``, rename ``renameByName``."""
    exclude = {k for k, v in options.get("excludeByName", {}).items() if v}
    rename = options.get("renameByName", {})
    return [
        {
            "refId": f["refId"],
            "fields": {rename.get(k, k): v for k, v in f["fields"].items() if k not in exclude},
        }
        for f in frames
    ]


@dataclass
class Graph:
    nodes: dict[str, dict[str, Any]]  # id → {field: value}
    edges: list[dict[str, Any]]


def node_graph(frames: list[Frame]) -> Graph:
    """What Grafana's Node Graph panel makes of ``frames``.

    public/app/plugins/panel/nodeGraph/utils.ts: ``getNodeGraphDataFrames``
    keeps frames whose refId or name is ``nodes``/``edges`` (or that have an
    ``id`` field); ``getGraphFrame`` puts frames with a ``source`` field among the
    edges, the rest among the nodes; ``processNodes`` finds fields by lower-cased
    name, requires ``id`` on nodes and on edges ("id field is required ...") and
    looks every edge's ``source`` and ``target`` up among the nodes (a missing one
    breaks the panel).
    """
    kept = [f for f in frames if f["refId"] in ("nodes", "edges") or "id" in f["fields"]]
    if all(not any(f["fields"].values()) for f in kept):
        return Graph({}, [])  # no rows at all: the panel says "No data"
    edge_frames = [f for f in kept if "source" in f["fields"]]
    node_frames = [f for f in kept if "source" not in f["fields"]]
    assert len(node_frames) == 1 and len(edge_frames) == 1, kept

    def rows(frame: Frame) -> list[dict[str, Any]]:
        fields = {k.lower(): v for k, v in frame["fields"].items()}
        assert "id" in fields, f"id field is required for {frame['refId']} data frame"
        n = len(fields["id"])
        return [{k: v[i] for k, v in fields.items()} for i in range(n)]

    nodes: dict[str, dict[str, Any]] = {}
    for row in rows(node_frames[0]):
        assert row["id"] not in nodes, f"duplicate node id {row['id']!r}"
        nodes[row["id"]] = row
    edges = rows(edge_frames[0])
    for e in edges:
        assert e["source"] in nodes and e["target"] in nodes, (e, sorted(nodes))
    assert len({e["id"] for e in edges}) == len(edges)
    return Graph(nodes, edges)


def test_table_frames_follow_grafanas_naming() -> None:
    one = prometheus_table_frames(
        {
            "A": [
                {"metric": {"b": "2", "a": "1"}, "value": [10, "3.5"]},
                {"metric": {"c": "x"}, "value": [10, "+Inf"]},
            ]
        }
    )
    assert list(one[0]["fields"]) == ["Time", "a", "b", "c", "Value"]
    assert one[0]["fields"]["c"] == ["", "x"] and one[0]["fields"]["Value"] == [3.5, float("inf")]
    two = prometheus_table_frames({"nodes": [], "edges": []})
    assert [list(f["fields"]) for f in two] == [["Time", "Value #nodes"], ["Time", "Value #edges"]]


def test_node_graph_rules_reject_a_dangling_edge() -> None:
    frames = [
        {"refId": "nodes", "fields": {"id": ["a"], "title": ["a"]}},
        {"refId": "edges", "fields": {"id": ["a->b"], "source": ["a"], "target": ["b"]}},
    ]
    with pytest.raises(AssertionError):
        node_graph(frames)
    frames[0]["fields"] = {"ID": ["a", "b"]}  # field names are matched case-insensitively
    assert set(node_graph(frames).nodes) == {"a", "b"}


# ------------------------------------------------------------------ the lab
@dataclass
class Lab:
    agent: AgentProc
    prometheus: PrometheusServer
    t0: float
    t1: float
    exposed: set[str]
    #: (source id, target id) → {"sent", "received", "connections"} as the TCP clients saw them
    truth: dict[tuple[str, str], dict[str, float]]
    #: a later start, after the first batch was scraped, and what the traffic made after it
    t_mid: float
    truth_late: dict[tuple[str, str], dict[str, float]]


def substitute(text: str, lab: Lab, start: float | None = None, **values: str) -> str:
    """Grafana's variable substitution for a time range from ``start`` to ``lab.t1``."""
    start = lab.t0 if start is None else start
    range_s = math.ceil(lab.t1 - start)  # the window starts at or before `start`
    variables = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": "1s",
        "__range_s": str(range_s),
        "__range": f"{range_s}s",
        "__from": str(int(start * 1000)),
        "__to": str(int(lab.t1 * 1000)),
        "namespace": ".*",
        "workload": ".*",
        "node": ".*",
        "include": "",
        "exclude": "",
        "statstype": "connection",
        "level": "workload",
        **values,
    }

    def one(m: re.Match[str]) -> str:
        name = m["braced"] or m["plain"]
        assert name in variables, f"unknown variable {name} in {text}"
        return variables[name]

    # ${name} and ${name:format} (regex format of a single/All value is the value itself)
    out = re.sub(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<plain>[A-Za-z_]\w*)", one, text)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    binary = require_tool("prometheus")
    tmp_path = tmp_path_factory.mktemp("dashlab")
    with NetLab() as netlab:
        cart = netlab.add_pod("cart", "10.213.1.2/24")
        redis = netlab.add_pod("redis", "10.213.1.3/24")
        web = netlab.add_pod("web", "10.213.1.4/24")
        ext = netlab.add_pod("ext", "10.213.1.9/24")
        netlab.popen_in(redis, tcptool_argv("serve", "--port", "6379", "--reply", "5000"))
        netlab.popen_in(cart, tcptool_argv("serve", "--port", "8080", "--reply", "700"))
        netlab.popen_in(ext, tcptool_argv("serve", "--port", "443", "--reply", "200"))
        for pod, port in ((redis, 6379), (cart, 8080), (ext, 443)):
            netlab.wait_listening(pod, port)
        (tmp_path / "inventory.yaml").write_text(INVENTORY)
        agent = AgentProc(
            netlab,
            tmp_path,
            f"inventory: {{path: '{tmp_path / 'inventory.yaml'}'}}\nkubernetes: {{enabled: false}}\n",
        )
        prom_dir = tmp_path / "prom"
        prom_dir.mkdir()
        prometheus = PrometheusServer(
            binary, f"127.0.0.1:{AGENT_PORT}", prom_dir, netlab.nodes["n1"].netns
        )
        try:
            agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
            agent.wait(
                "4 interfaces", lambda: agent.metric_sum("k8spacket_capture_interfaces") == 4
            )
            prometheus.wait_target_up()  # and so its SIGHUP handler is installed
            # the chart's scrape configs add the node label: same here, by a config reload
            config = prom_dir / "prometheus.yml"
            config.write_text(
                config.read_text().replace(
                    f"- targets: ['127.0.0.1:{AGENT_PORT}']",
                    f"- targets: ['127.0.0.1:{AGENT_PORT}']\n        labels: {{node: n1}}",
                )
            )
            os.kill(prometheus.proc.pid, signal.SIGHUP)
            prometheus.wait_until(
                "the node label", lambda: prometheus.query('k8spacket_build_info{node="n1"}')
            )
            t0 = time.time() - 1
            truth: dict[tuple[str, str], dict[str, float]] = {}
            truth_late: dict[tuple[str, str], dict[str, float]] = {}

            def made(src: str, dst: str, results: list[dict[str, Any]]) -> None:
                for book in (truth, truth_late):
                    t = book.setdefault((src, dst), {"sent": 0, "received": 0, "connections": 0})
                    t["sent"] += sum(r["sent"] for r in results)
                    t["received"] += sum(r["received"] for r in results)
                    t["connections"] += len(results)

            made(
                CART,
                REDIS,
                connect(netlab, cart, "10.213.1.3", "6379", "--send", "1000", "--count", "3"),
            )
            # a second window starts after this first batch was scraped: its series
            # exist before the window, so only what follows may count in it
            prometheus.wait_until(
                "the first batch scraped",
                lambda: prometheus.value("sum(k8spacket_tcp_sent_bytes_total)") == 3000,
            )
            time.sleep(1.5)
            t_mid = time.time()
            truth_late.clear()
            made(
                WEB,
                CART,
                connect(netlab, web, "10.213.1.2", "8080", "--send", "70", "--count", "2"),
            )
            made(CART, REDIS, connect(netlab, cart, "10.213.1.3", "1"))  # refused
            made(CART, EXT, connect(netlab, cart, "10.213.1.9", "443", "--send", "300"))
            # open longer than the flush period: the open-connections gauge sees it
            made(
                CART,
                REDIS,
                connect(netlab, cart, "10.213.1.3", "6379", "--send", "500", "--hold", "3"),
            )
            sent = sum(t["sent"] for t in truth.values())
            conns = sum(t["connections"] for t in truth.values())
            prometheus.wait_until(
                "all traffic scraped",
                lambda: (
                    prometheus.value("sum(k8spacket_tcp_sent_bytes_total)") == sent
                    and prometheus.value("sum(k8spacket_tcp_connections_total)") == conns
                    and prometheus.value("sum(k8spacket_tcp_connections_closed_total)") == conns
                ),
            )
            time.sleep(2)  # two more scrapes: rates over the last samples
            t1 = time.time()
            exposed = {name for name, _ in agent.metrics()}
            yield Lab(agent, prometheus, t0, t1, exposed, truth, t_mid, truth_late)
        finally:
            prometheus.stop()
            agent.close()


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        s.name: json.loads((REPO / gen.DASHBOARD_DIR / f"{s.name}.json").read_text())
        for s in gen.load_specs(REPO)
    }


def prometheus_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard, panel title, target) of every Prometheus query of every dashboard."""
    return [
        (name, p["title"], t)
        for name, d in dashboards().items()
        for p in d["panels"]
        for t in p.get("targets", [])
        if t["datasource"]["type"] == "prometheus"
    ]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bk8spacket_\w+", expr))


pytestmark = [pytest.mark.netns, pytest.mark.prometheus, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_every_panel_query_returns_data(lab: Lab) -> None:
    empty_ok: list[str] = []
    for dash, title, target in prometheus_targets():
        expr = substitute(target["expr"], lab)
        where = f"{dash} / {title} / {target['refId']}"
        if target["instant"]:
            result = lab.prometheus.query(expr, at=lab.t1)
        else:
            result = lab.prometheus.api(
                "query_range",
                query=expr,
                start=f"{lab.t0:.3f}",
                end=f"{lab.t1:.3f}",
                step="1",
            )["result"]
        if result:
            continue
        missing = metric_names(expr) - lab.exposed
        unexplained = missing - set(NOT_IN_THE_LAB)
        assert missing and not unexplained, f"{where}: no data\n{expr}\nnot exposed: {missing}"
        empty_ok.append(f"{where}: {sorted(missing)}")
    print("empty because the lab's agent does not expose:", *empty_ok, sep="\n  ")


@pytest.mark.timeout(120)
def test_per_node_panels_split_by_the_node_label(lab: Lab) -> None:
    d = dashboards()["agent-health"]
    checked = 0
    for p in d["panels"]:
        for t in p.get("targets", []):
            if "by (node" not in t["expr"]:
                continue
            result = lab.prometheus.query(substitute(t["expr"], lab, node="n1"), at=lab.t1)
            assert all(r["metric"].get("node") == "n1" for r in result), (p["title"], result)
            checked += bool(result)
            other = lab.prometheus.query(substitute(t["expr"], lab, node="n2"), at=lab.t1)
            assert other == [], p["title"]
    assert checked >= 8


@pytest.mark.timeout(120)
def test_variable_queries_list_what_the_traffic_made(lab: Lab) -> None:
    found: dict[str, set[str]] = {}
    for d in dashboards().values():
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            query = substitute(v["query"], lab)
            if m := re.fullmatch(r"label_values\((\w+), (\w+)\)", query):
                series = lab.prometheus.api("series", **{"match[]": m[1]})
                values = {s[m[2]] for s in series if m[2] in s}
            else:
                m = re.fullmatch(r"query_result\((.*)\)", query)
                assert m, query
                # Grafana formats each result as `name{l="v",...} value timestamp`, then the regex
                rx = re.compile(v["regex"].strip("/"))
                lines = [
                    "{"
                    + ",".join(f'{k}="{x}"' for k, x in r["metric"].items())
                    + "} "
                    + r["value"][1]
                    for r in lab.prometheus.query(m[1], at=lab.t1)
                ]
                values = {mm[1] for line in lines if (mm := rx.search(line))}
            found.setdefault(v["name"], set()).update(values)
    assert found == {
        "namespace": {"shop"},
        "workload": {"cart", "redis", "web", "Example Org"},
        "node": {"n1"},
    }


def prom_graph(lab: Lab, panel: dict[str, Any], start: float | None = None, **values: str) -> Graph:
    results = {
        t["refId"]: lab.prometheus.query(substitute(t["expr"], lab, start, **values), at=lab.t1)
        for t in panel["targets"]
    }
    frames = prometheus_table_frames(results)
    for tr in panel["transformations"]:
        assert tr["id"] == "organize"
        frames = organize(frames, tr["options"])
    return node_graph(frames)


@pytest.mark.timeout(120)
def test_prometheus_only_topology_is_the_traffic_the_pods_made(lab: Lab) -> None:
    range_s = math.ceil(lab.t1 - lab.t0)
    graphs = [p for p in dashboards()["topology-prometheus"]["panels"] if p["type"] == "nodeGraph"]
    stat_of = {
        "k8spacket_tcp_sent_bytes_total": "sent",
        "k8spacket_tcp_connections_total": "connections",
    }
    for panel in graphs:
        (metric,) = metric_names(panel["targets"][1]["expr"])
        stat = stat_of[metric]
        graph = prom_graph(lab, panel)
        assert set(graph.nodes) == {CART, REDIS, WEB, EXT}
        assert graph.nodes[CART]["title"] == "cart" and graph.nodes[CART]["subtitle"] == "shop"
        ext = graph.nodes[EXT]
        assert (ext["title"], ext["subtitle"], ext["detail__kind"]) == (
            "Example Org",
            "external",
            "external",
        )
        assert graph.nodes[CART]["color"] == "#5794f2" and ext["color"] == "#ff9830"
        assert {e["color"] for e in graph.edges} == {"#5794f2"}
        edges = {(e["source"], e["target"]): e["mainstat"] * range_s for e in graph.edges}
        expected = {pair: t[stat] for pair, t in lab.truth.items()}
        assert edges == pytest.approx(expected), (panel["title"], edges, expected)
        # nodes as servers: what their clients sent them; only-clients show 0
        as_server = {n: sum(v for (_, dst), v in expected.items() if dst == n) for n in graph.nodes}
        got = {n: row["mainstat"] * range_s for n, row in graph.nodes.items()}
        assert got == pytest.approx(as_server), (panel["title"], got)
        # the namespace filter: edges with either end in shop (all of them); none in "other"
        assert len(prom_graph(lab, panel, namespace="shop").edges) == len(expected)
        assert prom_graph(lab, panel, namespace="other").edges == []
        assert set(prom_graph(lab, panel, workload="web").nodes) == {WEB, CART}
        # a window starting after the first batch: the change inside it, not the totals
        late_s = math.ceil(lab.t1 - lab.t_mid)
        late = prom_graph(lab, panel, start=lab.t_mid)
        got_late = {(e["source"], e["target"]): e["mainstat"] * late_s for e in late.edges}
        want_late = {pair: t[stat] for pair, t in lab.truth_late.items()}
        assert got_late == pytest.approx(want_late), (panel["title"], got_late, want_late)


# ------------------------------------------------- the Node Graph API and Infinity panels
def api_query(dash: str) -> str:
    """The query string the dashboard's graph panel sends (the same for every target)."""
    (query,) = {
        t.get("queryText") or t["url"].removeprefix("/api/graph/data?")
        for p in dashboards()[dash]["panels"]
        for t in p.get("targets", [])
    }
    return query


def plugin_frames(fields: dict[str, Any], data: dict[str, Any]) -> list[Frame]:
    """What the Node Graph API datasource makes of its two answers.

    hamedkarbasi93-nodegraphapi-datasource, src/datasource.ts: a frame per side
    with exactly the declared fields (``type: number`` a number, anything else a
    string), each data row added by field name, so undeclared keys are dropped
    and undeclared-but-missing ones are null.
    """
    frames = []
    for side in ("nodes", "edges"):
        declared = fields[f"{side}_fields"]
        assert isinstance(data[side], list), f"{side} must be a list, never null"
        frames.append(
            {
                "refId": "A",
                "fields": {
                    f["field_name"]: [row.get(f["field_name"]) for row in data[side]]
                    for f in declared
                },
            }
        )
    return frames


def infinity_frames(data: dict[str, Any]) -> list[Frame]:
    """Infinity's node-graph formats with no columns given: every key of the rows under
    the root selector (``nodes`` / ``edges``) becomes a field of the frame of that refId."""
    frames = []
    for side in ("nodes", "edges"):
        rows = data[side]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        frames.append({"refId": side, "fields": {k: [r.get(k) for r in rows] for k in keys}})
    return frames


def get_json(lab: Lab, path: str) -> Any:
    status, body = lab.agent.get(path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix", ["", "/nodegraph"])
def test_node_graph_api_panel_queries_answer_with_the_graph(lab: Lab, prefix: str) -> None:
    assert lab.agent.get(f"{prefix}/api/health")[0] == 200
    query = api_query("topology")
    for stats in ("connection", "bytes", "duration"):
        for level in ("workload", "pod", "namespace"):
            for namespace in (".*", "(shop|other)"):  # All, and ${namespace:regex} of two values
                q = substitute(query, lab, statstype=stats, level=level, namespace=namespace)
                fields = get_json(lab, f"{prefix}/api/graph/fields?{q}")
                data = get_json(lab, f"{prefix}/api/graph/data?{q}")
                graph = node_graph(plugin_frames(fields, data))
                assert graph.nodes and graph.edges, (q, data)
                assert all(n["title"] for n in graph.nodes.values()), q


@pytest.mark.timeout(120)
def test_infinity_panel_queries_answer_with_the_graph(lab: Lab) -> None:
    query = api_query("topology-infinity")
    for stats in ("connection", "bytes", "duration"):
        q = substitute(query, lab, statstype=stats)
        graph = node_graph(infinity_frames(get_json(lab, f"/api/graph/data?{q}")))
        assert graph.nodes and graph.edges, q


@pytest.mark.timeout(120)
def test_prometheus_only_topology_equals_the_api(lab: Lab) -> None:
    """Same window, same traffic: the same node ids, titles, subtitles, colours, pairs and bytes."""
    q = substitute(api_query("topology"), lab, statstype="bytes")
    api = node_graph(
        plugin_frames(
            get_json(lab, f"/api/graph/fields?{q}"), get_json(lab, f"/api/graph/data?{q}")
        )
    )
    (panel,) = [
        p
        for p in dashboards()["topology-prometheus"]["panels"]
        if p["type"] == "nodeGraph" and "sent_bytes" in p["targets"][1]["expr"]
    ]
    prom = prom_graph(lab, panel)
    range_s = math.ceil(lab.t1 - lab.t0)
    assert set(prom.nodes) == set(api.nodes)
    for nid, node in prom.nodes.items():
        want = api.nodes[nid]
        for key in ("title", "subtitle", "color", "detail__kind"):
            assert node[key] == want[key], (nid, key, node[key], want[key])
    api_bytes = {(e["source"], e["target"]): e["detail__sent_bytes"] for e in api.edges}
    prom_bytes = {(e["source"], e["target"]): e["mainstat"] * range_s for e in prom.edges}
    assert prom_bytes == pytest.approx(api_bytes)
    assert api_bytes == {pair: t["sent"] for pair, t in lab.truth.items()}
    assert {e["id"] for e in prom.edges} == {e["id"] for e in api.edges}
    assert {e["color"] for e in prom.edges} == {e["color"] for e in api.edges}
