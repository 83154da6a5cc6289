"""The graph's sources and store, each alone: local buckets, the agents' fan-out, PromQL.

* the local store: buckets, the sliding window, late records, memory bounded
  by edges (not connections);
* the agents source over real HTTP on loopback: answers summed (never
  overwritten), a dead and a silent peer named and counted, the answer still
  served within the per-peer timeout;
* the Prometheus source's arithmetic against a scripted Prometheus API (the
  lab test ``test_nodegraph_lab`` runs the real one): a difference of samples,
  series born inside the window, resets; and faults: refused, silent, errors
  → a 503 with a message, within the timeout.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from k8spacket.config import ConfigError, Settings, load_settings, resolve_graph_source
from k8spacket.nodegraph import edges as E
from k8spacket.nodegraph.api import GraphAPI, graph_api_from_settings
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.query import QueryError, parse_query, split_query
from k8spacket.nodegraph.sources import (
    AgentsSource,
    LocalSource,
    PrometheusSource,
    SourceError,
    static_peers,
)
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer
from test_nodegraph_api import NOW, rec


# ------------------------------------------------------------------ query
def test_query_keeps_plus_and_decodes_percent() -> None:
    assert split_query("include=a+b&exclude=x%26y%23z&&level=") == {
        "include": ["a+b"],
        "exclude": ["x&y#z"],
        "level": [""],
    }
    q = parse_query("include=a+b&namespace=shop&namespace=db", now=NOW)
    assert q.include is not None and q.include.search("aab") and not q.include.search("a b")
    assert q.namespace is not None and q.namespace.fullmatch("db")  # repeated: ORed
    assert (q.since, q.until, q.stats_type, q.level) == (NOW - 900, NOW, "connection", "workload")


def test_query_error_names_the_parameter() -> None:
    with pytest.raises(QueryError) as e:
        parse_query("level=cluster", now=NOW)
    assert e.value.parameter == "level" and "workload" in str(e.value)


# ------------------------------------------------------------------ local store
def test_store_buckets_window_and_late_records() -> None:
    store = LocalGraphStore(window=300, bucket=60)
    t0 = 1_000_020.0  # bucket 16667 starts at 1000020
    for i in range(10):  # one record a minute for 10 minutes
        store.add(rec("a/a/a-1", "b/b/b-1", end=t0 + 60 * i))
    assert store.bucket_count() == 5  # only the window is kept
    got = store.edges(t0, t0 + 3600)
    assert [st.values[E.CONNECTIONS] for _, _, st in got] == [5]
    store.add(rec("a/a/a-1", "b/b/b-1", end=t0 + 60 * 7 + 1))  # late, inside the window
    store.add(rec("a/a/a-1", "b/b/b-1", end=t0))  # older than the window
    assert store.too_old == 1
    one = store.edges(t0 + 60 * 7, t0 + 60 * 7 + 59)
    assert [st.values[E.CONNECTIONS] for _, _, st in one] == [2]
    # late into a bucket this edge had no traffic in: inserted before its newest
    store.add(rec("c/c/c-1", "d/d/d-1", end=t0 + 60 * 9, bytes_sent=1))
    store.add(rec("c/c/c-1", "d/d/d-1", end=t0 + 60 * 7, bytes_sent=2))

    def cd(lo: int, hi: int) -> tuple[float, float]:
        got = store.edges(t0 + 60 * lo, t0 + 60 * hi + 59)
        (st,) = [st for s, _, st in got if s.workload == "c"]
        return st.values[E.CONNECTIONS], st.values[E.SENT]

    assert (cd(7, 7), cd(9, 9), cd(7, 9), cd(8, 9)) == ((1, 2), (1, 1), (2, 3), (1, 1))
    with pytest.raises(ValueError):
        LocalGraphStore(window=10, bucket=60)


def test_store_memory_is_per_edge_not_per_connection() -> None:
    import tracemalloc

    store = LocalGraphStore(window=600, bucket=60)
    records = [rec(f"a/a/a-{i}", "b/b/b-1", end=NOW) for i in range(50)]
    tracemalloc.start()
    for r in records:
        store.add(r)
    after_one = tracemalloc.get_traced_memory()[0]
    for _ in range(40):
        for r in records:
            store.add(r)
    after_many = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert store.records == 41 * 50
    assert after_many - after_one < 2048, (after_one, after_many)  # no growth per record


# ------------------------------------------------------------------ agents
def serve(api: GraphAPI) -> AgentHTTPServer:
    server = AgentHTTPServer(
        "127.0.0.1", 0, CollectorRegistry(), ConnectionStore(), lambda: True,
        raw_routes=api.routes(),
    )  # fmt: skip
    server.start()
    return server


def agent_with(records: list[Any], node: str) -> AgentHTTPServer:
    store = LocalGraphStore()
    for r in records:
        store.add(r)
    return serve(GraphAPI({"local": LocalSource(store, node)}, "local", store, node=node))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that accepts and never answers (a hung peer or Prometheus)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_agents_sum_and_name_missing_peers(silent_port: int) -> None:
    a = agent_with([rec("shop/web/web-1", "shop/cart/cart-1", bytes_sent=10)] * 2, "n1")
    b = agent_with([rec("shop/web/web-2", "shop/cart/cart-1", bytes_sent=1)] * 3, "n2")
    dead = f"127.0.0.1:{dead_port()}"
    silent = f"127.0.0.1:{silent_port}"
    try:
        peers = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}", dead, silent]
        source = AgentsSource(lambda: peers, timeout=0.5)
        started = time.monotonic()
        answer = source.edges(NOW - 60, NOW + 60)
        took = time.monotonic() - started
        assert len({d for _, d, _ in answer.edges}) == 1  # cart only
        ins = [0.0] * E.WIDTH
        for _, _d, st in answer.edges:
            ins = [x + y for x, y in zip(ins, st.values, strict=True)]
        assert (ins[E.CONNECTIONS], ins[E.SENT]) == (5, 23)  # summed, not overwritten
        assert answer.detail["missing_count"] == 2 and source.failures == 2
        assert source.error_counts() == {"timeout": 1, "unreachable": 1, "http": 0,
                                         "bad_answer": 0}  # fmt: skip
        assert {m["peer"] for m in answer.detail["missing"]} == {dead, silent}
        assert dead in answer.note and silent in answer.note and "2 of 4" in answer.note
        print(f"fan-out with a silent peer answered in {took:.2f}s (peer timeout 0.5s)")
        with pytest.raises(SourceError, match="no agent answered"):
            AgentsSource(lambda: [dead], timeout=0.5).edges(NOW - 60, NOW)
        with pytest.raises(SourceError, match="no agent found"):
            AgentsSource(lambda: [], timeout=0.5).edges(NOW - 60, NOW)
    finally:
        a.stop()
        b.stop()


def test_static_peers_get_the_port() -> None:
    assert static_peers(["10.0.0.1", "10.0.0.2:7000", "[fd00::1]:80", "[fd00::2]"], 6676)() == [
        "10.0.0.1:6676",
        "10.0.0.2:7000",
        "[fd00::1]:80",
        "[fd00::2]:6676",
    ]


# ------------------------------------------------------------------ prometheus
class ScriptedPrometheus:
    """Answers the three queries per family from per-series sample lists."""

    def __init__(self, series: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]]):
        self.series = series
        self.queries: list[str] = []

    def __call__(self, url: str, timeout: float) -> tuple[int, bytes]:
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        promql, at = params["query"][0], float(params["time"][0])
        self.queries.append(promql)
        if promql == "vector(1)":
            return 200, json.dumps({"status": "success", "data": {"result": []}}).encode()
        fn, _, rest = promql.partition("(")
        name = rest.split("[", 1)[0].split("{", 1)[0] if fn in ("last_over_time", "resets") else ""
        rng = float(promql.rsplit("[", 1)[1].split("]")[0].removesuffix("ms").removesuffix("m"))
        rng = rng / 1000 if "ms]" in promql else rng * 60
        result = []
        for labels, samples in self.series.get(name, []):
            inside = [(t, v) for t, v in samples if at - rng < t <= at]
            if not inside:
                continue
            if fn == "last_over_time":
                result.append({"metric": labels, "value": [at, str(inside[-1][1])]})
            elif fn == "resets":
                n = sum(1 for (_, x), (_, y) in itertools.pairwise(inside) if y < x)
                if n:
                    result.append({"metric": labels, "value": [at, str(n)]})
        if not fn.startswith(("last_over_time", "resets")):  # a raw range selector
            name, _, matchers = promql.partition("{")
            want = dict(re.findall(r'(\w+)="([^"]*)"', matchers.split("}")[0]))
            for labels, samples in self.series.get(name, []):
                if labels != want:
                    continue
                inside = [(t, str(v)) for t, v in samples if at - rng < t <= at]
                result.append({"metric": labels, "values": inside})
        return 200, json.dumps({"status": "success", "data": {"result": result}}).encode()


LABELS = {"src_namespace": "shop", "src_workload": "web", "src_kind": "pod",
          "dst_namespace": "shop", "dst_workload": "cart", "dst_kind": "pod", "dst_port": "8080"}  # fmt: skip


def sent_total(prom: PrometheusSource, since: float, until: float) -> float:
    return sum(st.values[E.SENT] for _, _, st in prom.edges(since, until).edges)


def test_prometheus_difference_birth_and_reset() -> None:
    other = {**LABELS, "dst_workload": "redis"}
    born = {**LABELS, "dst_workload": "new"}
    reset = {**LABELS, "dst_workload": "restarted"}
    t = 1000.0
    series = {
        "k8spacket_tcp_sent_bytes_total": [
            (LABELS, [(t + i, 100.0 * i) for i in range(0, 61)]),  # +100 a second
            (other, [(t + i, 5.0) for i in range(0, 61)]),  # no traffic
            (born, [(t + 30, 0.0), (t + 31, 40.0), (t + 40, 70.0)]),  # born in the window
            (reset, [(t + 10, 500.0), (t + 20, 550.0), (t + 25, 20.0), (t + 35, 60.0)]),
        ]
    }
    prom = PrometheusSource("http://prom:9090", get=ScriptedPrometheus(series))
    # window (t+10, t+50]: 40 steps of 100, 0, born 70 (from 0), restarted 50 + 20 + 40
    got = {d.workload: st.values[E.SENT] for _, d, st in prom.edges(t + 10, t + 50).edges}
    assert got == {"cart": 4000, "redis": 0, "new": 70, "restarted": 110}


def test_prometheus_outcomes_and_histogram() -> None:
    t = 1000.0
    conn = "k8spacket_tcp_connections_total"
    closed = "k8spacket_tcp_connections_closed_total"
    bucket = "k8spacket_tcp_connection_duration_seconds_bucket"
    series = {
        conn: [
            ({**LABELS, "outcome": "established"}, [(t, 0.0), (t + 10, 8.0)]),
            ({**LABELS, "outcome": "refused"}, [(t, 0.0), (t + 10, 2.0)]),
        ],
        closed: [({**LABELS, "close": "rst"}, [(t, 0.0), (t + 10, 3.0)])],
        bucket: [
            ({**LABELS, "le": le}, [(t, 0.0), (t + 10, n)])
            for le, n in [("0.5", 4.0), ("1.0", 6.0), ("60.0", 10.0), ("+Inf", 10.0)]
        ],
    }
    prom = PrometheusSource("http://prom:9090", get=ScriptedPrometheus(series))
    ((_, _, st),) = list(prom.edges(t + 1, t + 10).edges)
    v = st.values
    assert (v[E.CONNECTIONS], v[E.FAILED], v[E.RESET]) == (10, 2, 1)
    buckets = dict(zip(E.LAYOUT[E.BUCKETS0 :], v[E.BUCKETS0 :], strict=True))
    assert buckets["duration_le_0.5"] == 4 and buckets["duration_le_1"] == 6
    assert buckets["duration_le_60"] == 10 and E.ended(v) == 10


def test_prometheus_faults_are_503_within_the_timeout(silent_port: int) -> None:
    for url in (f"http://127.0.0.1:{dead_port()}", f"http://127.0.0.1:{silent_port}"):
        prom = PrometheusSource(url, timeout=0.5)
        api = GraphAPI({"prometheus": prom}, "prometheus")
        started = time.monotonic()
        status, _, body = api.data("")
        took = time.monotonic() - started
        assert status == 503 and url in json.loads(body)["error"], body
        assert took < 5  # failsafe: the answer comes, bounded by the timeout
        status, _, body = api.health("")
        assert status == 503 and json.loads(body)["status"] == "unavailable"

    def failing(url: str, timeout: float) -> tuple[int, bytes]:
        return 400, b'{"status":"error","error":"parse error"}'

    api = GraphAPI({"prometheus": PrometheusSource("http://p", get=failing)}, "prometheus")
    status, _, body = api.data("")
    assert status == 503 and "parse error" in json.loads(body)["error"]


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("sets", "in_cluster", "want"),
    [
        ([], False, "local"),
        ([], True, "agents"),
        (["graph.peers=[10.0.0.1]"], False, "agents"),
        (["http.prometheusURL=http://prom:9090"], True, "prometheus"),
        (["http.graphSource=local"], True, "local"),
    ],
    ids=["plain-host", "cluster", "static-peers", "prometheus-url", "explicit"],
)
def test_default_source(sets: list[str], in_cluster: bool, want: str) -> None:
    s = load_settings(sets=sets)
    assert resolve_graph_source(s, in_cluster) == want
    peers = (lambda: ["10.0.0.9:6676"]) if in_cluster else None
    api = graph_api_from_settings(s, LocalGraphStore(), peers=peers, in_cluster=in_cluster)
    assert api.default == want


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["graph.bucket=2h"], "graph.bucket"),
        (["graph.window=720h", "graph.bucket=1s"], "graph.bucket"),
        (["http.graphSource=cluster"], "http.graphSource"),
        (["http.prometheusURL=prom:9090"], "http.prometheusURL"),
        (["graph.peerTimeout=0"], "graph.peerTimeout"),
    ],
    ids=["bucket-gt-window", "too-many-buckets", "bad-source", "bad-url", "zero-timeout"],
)
def test_bad_graph_settings(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(sets=sets)


def test_agents_default_without_peers_is_a_config_error() -> None:
    s = Settings()
    s.http.graph_source = "agents"
    with pytest.raises(ConfigError, match=r"graph\.peers"):
        graph_api_from_settings(s, LocalGraphStore())


def test_fanout_is_parallel() -> None:
    """Ten peers, each taking 0.3 s, answer in about one peer's time (parallel asks)."""
    barrier = threading.Barrier(10, timeout=5)

    def slow(url: str, timeout: float) -> tuple[int, bytes]:
        barrier.wait()  # only passes when all ten are asked at once
        doc = {"layout": list(E.LAYOUT), "edges": []}
        return 200, json.dumps(doc).encode()

    source = AgentsSource(lambda: [f"10.0.0.{i}:6676" for i in range(10)], timeout=5, get=slow)
    assert source.edges(NOW - 60, NOW).detail["answered"] == 10


def test_peer_errors_are_counted_by_reason() -> None:
    def get(url: str, timeout: float) -> tuple[int, bytes]:
        if "10.0.0.1" in url:
            return 500, b"{}"
        if "10.0.0.2" in url:
            return 200, json.dumps({"layout": ["other"], "edges": []}).encode()
        if "10.0.0.3" in url:
            return 200, b"not json"
        return 200, json.dumps({"layout": list(E.LAYOUT), "edges": []}).encode()

    source = AgentsSource(lambda: [f"10.0.0.{i}:6676" for i in range(1, 5)], get=get)
    answer = source.edges(NOW - 60, NOW)
    assert answer.detail["answered"] == 1 and answer.detail["missing_count"] == 3
    assert source.error_counts() == {"timeout": 0, "unreachable": 0, "http": 1, "bad_answer": 2}
