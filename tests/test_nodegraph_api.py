"""Contract tests of the Node Graph API, over real HTTP on loopback.

The agent's own :class:`~k8spacket.server.AgentHTTPServer` serves a
:class:`~k8spacket.nodegraph.api.GraphAPI` over a local store fed with
connection records. Every answer is read the way the Node Graph API datasource
reads it (:func:`plugin_frames`: ``type: number`` makes a number, anything else
a string, undeclared keys dropped) and checked against the contract of
DESIGN.md: fields match the data rows exactly, ids unique, every edge's ends
are nodes, arcs sum to 1, lists never null, titles never empty, CORS on data
answers, on both path families, for every stats type and level. Bad input is
answered with a 400 naming the parameter.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from k8spacket.flows.record import ConnectionRecord
from k8spacket.nodegraph.api import GraphAPI
from k8spacket.nodegraph.build import build_graph, graph_json
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.query import LEVELS, STATS_TYPES, parse_query
from k8spacket.nodegraph.sources import LocalSource
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer

NOW = 1_760_000_000.0
FROM_MS, TO_MS = int((NOW - 600) * 1000), int((NOW + 60) * 1000)
WINDOW = f"from={FROM_MS}&to={TO_MS}"
PREFIXES = ("", "/nodegraph")


def rec(src: str, dst: str, **kw: Any) -> ConnectionRecord:
    """A connection record between two ends named ``ns/workload/pod`` (or an address)."""
    fields: dict[str, Any] = dict(
        src="10.244.1.1", src_port=40000, dst="10.244.2.1", dst_port=8080,
        bytes_sent=100, bytes_received=1000, handshake_seconds=0.002, duration_seconds=0.3,
        outcome="established", close="fin", start=NOW - 1, end=NOW,
    )  # fmt: skip
    for side, spec in (("src", src), ("dst", dst)):
        if spec.count("/") == 2:
            ns, wl, pod = spec.split("/")
            fields.update({f"{side}_namespace": ns, f"{side}_workload": wl,
                           f"{side}_name": pod, f"{side}_kind": "pod"})  # fmt: skip
        else:
            fields[side] = spec
    fields.update(kw)
    return ConnectionRecord(**fields)


def traffic() -> list[ConnectionRecord]:
    """Pods in two namespaces, an external organisation, an unnamed address, failures."""
    return [
        rec("shop/web/web-1", "shop/cart/cart-1"),
        rec("shop/web/web-2", "shop/cart/cart-1", bytes_sent=50),
        rec("shop/cart/cart-1", "db/redis/redis-0", dst_port=6379),
        rec(
            "shop/cart/cart-1",
            "db/redis/redis-0",
            dst_port=6379,
            outcome="refused",
            close="rst",
            bytes_sent=0,
            bytes_received=0,
        ),
        rec("shop/web/web-1", "db/redis/redis-0", close="rst", duration_seconds=90.0),
        rec(
            "shop/web/web-1",
            "142.250.1.1",
            dst_port=443,
            dst_org="Google",
            dst_country="US",
            dst_kind="external",
        ),
        rec("10.9.9.9", "shop/web/web-1", dst_port=80),  # nothing named the client
        rec("shop/cart/cart-1", "10.244.3.3", outcome="unanswered", close="idle"),
        rec("shop/web/web-1", "shop/cart/cart-1", close=None, first=True),  # still open
    ]


def plugin_frames(fields: dict[str, Any], data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What the Node Graph API datasource makes of an answer (its conversion rules)."""
    out = {}
    for kind in ("nodes", "edges"):
        declared = fields[f"{kind}_fields"]
        rows = []
        for row in data[kind]:
            frame_row = {}
            for f in declared:
                value = row.get(f["field_name"])
                if f["type"] == "number":
                    assert value is None or isinstance(value, int | float), (f, value)
                    frame_row[f["field_name"]] = value
                else:
                    assert isinstance(value, str), (f, value)
                    frame_row[f["field_name"]] = value
            rows.append(frame_row)
        out[kind] = rows
    return out


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    store = LocalGraphStore(window=3600, bucket=60)
    for r in traffic():
        store.add(r)
    api = GraphAPI({"local": LocalSource(store, "n1")}, "local", store, clock=lambda: NOW + 30)
    server = AgentHTTPServer(
        "127.0.0.1", 0, CollectorRegistry(), ConnectionStore(), lambda: True,
        raw_routes=api.routes(),
    )  # fmt: skip
    server.start()
    try:
        yield Client(server.port)
    finally:
        server.stop()


def check_graph(fields: dict[str, Any], data: dict[str, Any]) -> None:
    """The contract every data answer keeps."""
    assert isinstance(data["nodes"], list) and isinstance(data["edges"], list)
    for kind in ("nodes", "edges"):
        names = [f["field_name"] for f in fields[f"{kind}_fields"]]
        assert len(names) == len(set(names)), names
        for row in data[kind]:
            assert list(row) == names, (kind, row)  # exactly the declared keys, in order
    frames = plugin_frames(fields, data)
    ids = [n["id"] for n in frames["nodes"]]
    assert len(ids) == len(set(ids))
    assert len({e["id"] for e in frames["edges"]}) == len(frames["edges"])
    for e in frames["edges"]:
        assert e["source"] in ids and e["target"] in ids, e
        assert e["thickness"] >= 1
    for n in frames["nodes"]:
        assert n["title"], n
        arcs = [v for k, v in n.items() if k.startswith("arc__")]
        assert arcs and math.isclose(sum(arcs), 1.0, abs_tol=1e-9), n
        assert all(0 <= a <= 1 for a in arcs), n
    for f in fields["nodes_fields"] + fields["edges_fields"]:
        assert set(f) <= {"field_name", "type", "color", "displayName"}, f


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api", "nodegraph-api"])
@pytest.mark.parametrize("stats_type", [*STATS_TYPES, ""], ids=[*STATS_TYPES, "empty"])
@pytest.mark.parametrize("level", LEVELS)
def test_every_view_keeps_the_contract(
    client: Client, prefix: str, stats_type: str, level: str
) -> None:
    q = f"?stats-type={stats_type}&level={level}&{WINDOW}"
    status, headers, fields = client.get(f"{prefix}/api/graph/fields{q}")
    assert status == 200
    status, headers, data = client.get(f"{prefix}/api/graph/data{q}")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert data["nodes"] and data["edges"]
    check_graph(fields, data)
    titles = {n["title"] for n in data["nodes"]}
    assert "unknown" in titles  # 10.9.9.9 and 10.244.3.3: named by nothing
    assert "Google" in titles  # an external organisation is one node
    if level == "namespace":
        assert {"shop", "db"} <= titles and "cart" not in titles
    elif level == "pod":
        assert {"web-1", "web-2", "cart-1", "redis-0"} <= titles
    else:
        assert {"web", "cart", "redis"} <= titles and "web-1" not in titles


def by_title(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["title"]: n for n in data["nodes"]}


def edge(data: dict[str, Any], src: str, dst: str) -> dict[str, Any]:
    titles = {n["id"]: n["title"] for n in data["nodes"]}
    (e,) = [e for e in data["edges"] if (titles[e["source"]], titles[e["target"]]) == (src, dst)]
    return e


def test_connection_view_numbers(client: Client) -> None:
    _, _, data = client.get(f"/api/graph/data?{WINDOW}")
    seconds = (TO_MS - FROM_MS) / 1000
    redis = by_title(data)["redis"]
    # three connections in: one ended well, one reset, one refused
    assert redis["detail__connections_in"] == 3
    assert (redis["arc__ok"], redis["arc__reset"], redis["arc__failed"]) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3)
    )
    assert redis["mainStat"] == pytest.approx(3 / seconds, rel=1e-3)
    assert redis["secondaryStat"] == pytest.approx(100 / 3, rel=1e-3)
    assert redis["detail__ports"] == "6379, 8080"
    cart = by_title(data)["cart"]
    assert cart["detail__connections_in"] == 3 and cart["arc__ok"] == 1  # one still open
    web_cart = edge(data, "web", "cart")
    assert web_cart["detail__connections"] == 3
    assert web_cart["detail__sent_bytes"] == 250 and web_cart["color"] == "#73bf69"
    assert edge(data, "cart", "redis")["color"] == "#f2495c"  # half failed
    google = by_title(data)["Google"]
    assert (google["detail__kind"], google["detail__country"]) == ("external", "US")
    assert google["detail__organisation"] == "Google"
    assert google["detail__addresses"] == "142.250.1.1"
    web = by_title(data)["web"]  # a client as well: its arcs say what came in
    assert web["detail__connections_in"] == 1


def test_bytes_and_duration_views(client: Client) -> None:
    _, _, data = client.get(f"/api/graph/data?stats-type=bytes&{WINDOW}")
    cart = by_title(data)["cart"]
    assert (cart["detail__received_bytes"], cart["detail__answered_bytes"]) == (250, 3000)
    assert cart["arc__received"] == pytest.approx(250 / 3250)
    e = edge(data, "web", "cart")
    assert e["thickness"] == max(x["thickness"] for x in data["edges"])
    _, _, data = client.get(f"/api/graph/data?stats-type=duration&{WINDOW}")
    redis = by_title(data)["redis"]
    # ended: 0.3 s (fin), 90 s (rst), 0.3 s (refused)
    assert redis["detail__ended"] == 3
    assert redis["mainStat"] == pytest.approx((0.3 + 90 + 0.3) / 3, rel=1e-3)
    assert (redis["arc__short"], redis["arc__long"]) == pytest.approx((2 / 3, 1 / 3))
    assert redis["secondaryStat"] == pytest.approx(60 + 240 * (0.95 * 3 - 2), rel=1e-3)
    assert by_title(data)["Google"]["detail__handshake_ms"] == 2


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        # Grafana's ${namespace:regex}: multi-value joined, metacharacters escaped
        ("namespace=(db|kube\\-system)", {"cart", "web", "redis"}),
        ("namespace=.*", None),  # a custom All value
        ("namespace=sho", set()),  # anchored
        ("include=car+t", {"web", "cart", "redis", "unknown"}),  # '+' stays a '+'
        ("include=web%26x|redis", {"web", "cart", "redis"}),  # %26 is a literal '&'
        ("exclude=^unknown$|Google", {"web", "cart", "redis"}),
        ("include=142%2E250", {"web", "Google"}),  # addresses are searched too
        ("include=&exclude=", None),  # empty variables
    ],
    ids=["ns-regex", "ns-all", "ns-anchored", "plus", "amp", "exclude", "address", "empty"],
)
def test_filters(client: Client, query: str, kept: set[str] | None) -> None:
    _, _, everything = client.get(f"/api/graph/data?{WINDOW}")
    status, _, data = client.get(f"/api/graph/data?{query}&{WINDOW}")
    assert status == 200
    titles = {n["title"] for n in data["nodes"]}
    assert titles == (kept if kept is not None else {n["title"] for n in everything["nodes"]})


def test_grafana_dashboard_query_form(client: Client) -> None:
    """The dashboards' exact panel query, All = a custom ``.*`` and multi-value."""
    base = "include=&exclude=&stats-type=connection&level=workload"
    for ns in (".*", "(db|shop)", "shop"):
        status, _headers, data = client.get(
            f"/api/graph/data?namespace={ns}&{base}&from={FROM_MS}&to={TO_MS}"
        )
        assert status == 200 and data["nodes"], (ns, data)


def test_empty_answer_is_lists(client: Client) -> None:
    status, _, data = client.get("/api/graph/data?from=1500000000000&to=1500000900000")
    assert status == 200
    assert data["nodes"] == [] and data["edges"] == []


BAD = [
    ("stats-type=latency", "stats-type"),
    ("level=cluster", "level"),
    ("source=nowhere", "source"),
    ("source=prometheus", "source"),  # not configured here
    ("namespace=(", "namespace"),
    ("include=[a", "include"),
    ("exclude=*x", "exclude"),
    ("from=abc", "from"),
    ("to=1e400", "to"),
    ("from=1700000000", "from"),  # seconds, not milliseconds
    ("from=1700000900000&to=1700000000000", "from"),
    ("from=1600000000000&to=1700000000000", "to"),  # more than 31 days
    ("stats-type=bytes&stats-type=duration", "stats-type"),
    ("stat-type=bytes", "stat-type"),
]


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api", "nodegraph-api"])
@pytest.mark.parametrize("endpoint", ["data", "fields"])
@pytest.mark.parametrize(("query", "parameter"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_parameter(
    client: Client, prefix: str, endpoint: str, query: str, parameter: str
) -> None:
    status, _, body = client.get(f"{prefix}/api/graph/{endpoint}?{query}")
    assert status == 400, body
    assert body["parameter"] == parameter and body["error"].startswith(parameter + ":")


@pytest.mark.parametrize("path", ["/", "/nodegraph", "/nodegraph/"])
def test_index_lists_the_endpoints(client: Client, path: str) -> None:
    status, _, body = client.get(path)
    assert status == 200
    paths = {e["path"] for e in body["endpoints"]}
    assert {"/api/graph/data", "/nodegraph/api/graph/data", "/api/health", "/metrics"} <= paths


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api", "nodegraph-api"])
def test_health_and_edges(client: Client, prefix: str) -> None:
    status, _, body = client.get(f"{prefix}/api/health")
    assert status == 200 and body["source"] == "local"
    status, _, body = client.get(f"{prefix}/api/graph/edges?{WINDOW}")
    assert status == 200 and len(body["edges"]) == 7  # pod-level (client, server) pairs


@pytest.mark.parametrize("stats_type", STATS_TYPES)
@pytest.mark.parametrize("level", LEVELS)
def test_written_json_equals_the_built_rows(stats_type: str, level: str) -> None:
    """The HTTP answer's JSON (edge rows from templates) is ``build_graph``'s data exactly."""
    store = LocalGraphStore()
    for r in [*traffic(), rec('ns"q/w\\x/p\u00e9', "shop/cart/cart-1", dst_port=1)]:
        store.add(r)
    q = parse_query(f"stats-type={stats_type}&level={level}&{WINDOW}", now=NOW)
    edges = store.edges(q.since, q.until)
    _, data = build_graph(edges, q, "local")
    written = json.loads(graph_json(edges, q, "local", {"x": 1}))
    assert written == {**data, "detail": {"x": 1}}


def dashboard_queries() -> list[str]:
    """Every Node Graph API / Infinity graph query of the shipped dashboards."""
    root = Path(__file__).resolve().parent.parent / "grafana-provisioning" / "dashboards"
    found: set[str] = set()

    def walk(panel: dict[str, Any]) -> None:
        for t in panel.get("targets", []):
            text = t.get("queryText") or t.get("url", "")
            if "stats-type" in text:
                found.add(text.split("?", 1)[-1])
        for p in panel.get("panels", []):
            walk(p)

    for f in sorted(root.glob("*.json")):
        for panel in json.loads(f.read_text())["panels"]:
            walk(panel)
    return sorted(found)


@pytest.mark.parametrize("namespace", [".*", "(db|shop)", "shop", "kube\\-system"])
def test_the_dashboards_queries_answer(client: Client, namespace: str) -> None:
    """The dashboards' own query strings, substituted as Grafana does (not URL-encoded)."""
    queries = dashboard_queries()
    assert queries, "no graph query found in the dashboards"
    for text in queries:
        for stats_type in STATS_TYPES:
            for level in LEVELS:
                q = (
                    text.replace("${namespace:regex}", namespace)
                    .replace("$include", "")
                    .replace("$exclude", "")
                    .replace("$statstype", stats_type)
                    .replace("$level", level)
                    .replace("${__from}", str(FROM_MS))
                    .replace("${__to}", str(TO_MS))
                )
                for path in ("/api/graph/fields", "/api/graph/data"):
                    status, _, body = client.get(f"{path}?{q}")
                    assert status == 200, (q, body)
                if namespace != "kube\\-system":
                    assert body["nodes"], q


@pytest.mark.parametrize("seed", range(5))
def test_contract_holds_for_random_traffic(seed: int) -> None:
    """Random ends, outcomes, closes and sizes: every view and level keeps the contract."""
    import random

    rnd = random.Random(seed)
    store = LocalGraphStore(window=3600, bucket=10)
    outcomes = [("established", "fin"), ("established", "rst"), ("refused", "rst"),
                ("unanswered", "idle"), ("midstream", "fin"), ("established", None)]  # fmt: skip
    for _ in range(400):
        ends = []
        for _side in range(2):
            pick = rnd.random()
            if pick < 0.6:
                ends.append(f"ns{rnd.randrange(3)}/w{rnd.randrange(8)}/p{rnd.randrange(20)}")
            else:
                ends.append(f"10.9.{rnd.randrange(4)}.{rnd.randrange(9)}")
        outcome, close = rnd.choice(outcomes)
        extra: dict[str, Any] = {}
        if rnd.random() < 0.2:
            extra = {"dst_org": rnd.choice(["Google", "Telstra"]), "dst_country": "US"}
        store.add(rec(*ends, outcome=outcome, close=close, first=rnd.random() < 0.9,
                      bytes_sent=rnd.randrange(10_000), end=NOW - rnd.randrange(600),
                      duration_seconds=rnd.choice([0.001, 0.7, 30.0, 4000.0]), **extra))  # fmt: skip
    for stats_type in STATS_TYPES:
        for level in LEVELS:
            q = parse_query(f"stats-type={stats_type}&level={level}&{WINDOW}", now=NOW)
            fields, data = build_graph(store.edges(q.since, q.until), q, "local")
            assert data["nodes"] and data["edges"]
            check_graph(fields, data)
