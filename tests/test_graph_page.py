"""The /graph topology page: DOT from a Node Graph answer, the route, the real server, Chromium.

The graph answers here are fixtures in the documented Node Graph API shape
(DESIGN.md "HTTP"); the page is drawn by the real Graphviz and served by the
real AgentHTTPServer. tests/test_demo.py opens the page of a running demo.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from browser import artifacts_dir, dump_dom, ink, png_pixels, reddish, screenshot
from conftest import require_tool
from k8spacket.nodegraph import render
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer


def _fields(stats: str) -> dict[str, Any]:
    if stats == "connection":
        node_stats = [
            {"field_name": "mainStat", "type": "number", "displayName": "Connections in /s"}
        ]
        edge_stats = [
            {"field_name": "mainStat", "type": "number", "displayName": "Connections /s"},
            {"field_name": "secondaryStat", "type": "number", "displayName": "Failed %"},
        ]
    else:
        node_stats = [{"field_name": "mainStat", "type": "number", "displayName": "Received B/s"}]
        edge_stats = [
            {"field_name": "mainStat", "type": "number", "displayName": "Sent B/s"},
            {"field_name": "secondaryStat", "type": "number", "displayName": "Received B/s"},
        ]
    return {"nodes_fields": [{"field_name": "id", "type": "string"}, *node_stats],
            "edges_fields": [{"field_name": "id", "type": "string"}, *edge_stats]}  # fmt: skip


def graph_answer(stats: str = "connection") -> render.View:
    """A small cluster: web → api (fine), web → cache (refused), api → GITHUB (external)."""
    conn = stats == "connection"
    data = {
        "nodes": [
            {"id": "pod:shop/web", "title": "web", "subTitle": "shop", "mainStat": 0,
             "detail__kind": "pod", "detail__country": ""},
            {"id": "pod:shop/api", "title": "api", "subTitle": "shop",
             "mainStat": 2.5 if conn else 12_000, "detail__kind": "pod"},
            {"id": "pod:shop/cache", "title": "cache", "subTitle": "shop", "mainStat": 0.3,
             "detail__kind": "pod"},
            {"id": "external:/GITHUB", "title": "GITHUB", "subTitle": "external",
             "mainStat": 0.5 if conn else 300, "detail__kind": "external",
             "detail__country": "US"},
        ],
        "edges": [
            {"id": "pod:shop/web->pod:shop/api", "source": "pod:shop/web",
             "target": "pod:shop/api", "mainStat": 2 if conn else 1500,
             "secondaryStat": 0 if conn else 12_000, "color": "#73bf69" if conn else "#5794f2",
             "detail__failed": 0, "detail__reset": 0},
            {"id": "pod:shop/web->pod:shop/cache", "source": "pod:shop/web",
             "target": "pod:shop/cache", "mainStat": 0.3 if conn else 0,
             "secondaryStat": 100 if conn else 0, "color": "#f2495c" if conn else "#5794f2",
             "detail__failed": 9, "detail__reset": 0},
            {"id": "pod:shop/api->external:/GITHUB", "source": "pod:shop/api",
             "target": "external:/GITHUB", "mainStat": 0.5 if conn else 100,
             "secondaryStat": 0 if conn else 300, "color": "#73bf69" if conn else "#5794f2"},
        ],
    }  # fmt: skip
    return _fields(stats), data


def builder(calls: list[str] | None = None) -> render.GraphBuilder:
    def build(raw: str) -> render.View:
        if calls is not None:
            calls.append(raw)
        parts = dict(render.split_raw(raw))
        if parts.get("namespace") == "(bad":
            raise ValueError("namespace: bad regexp '(bad'")
        if parts.get("source") == "prometheus":
            raise OSError("prometheus: connection refused")
        return graph_answer(parts.get("stats-type") or "connection")

    return build


@pytest.mark.parametrize(
    ("edge", "failing"),
    [
        ({"color": "red"}, True),
        ({"color": "#d62728"}, True),
        ({"color": "green"}, False),
        ({"color": "#2ca02c"}, False),
        ({"detail__failed": 3}, True),
        ({"detail__refused": "2"}, True),
        ({"detail__reset_connections": 0}, False),
        ({"arc__failed": 0.25}, True),
        ({"detail__namespace": "failing-ns"}, False),
        ({}, False),
    ],
    ids=["red", "red-hex", "green", "green-hex", "failed-detail", "refused-text", "zero-resets",
         "failed-arc", "name-not-count", "nothing"],
)  # fmt: skip
def test_edge_failing(edge: dict[str, Any], failing: bool) -> None:
    assert render.edge_failing(edge) is failing


@pytest.mark.parametrize(
    ("value", "display", "text"),
    [
        (2.5, "Connections /s", "2.5 conn/s"),
        (12_000, "Sent B/s", "↑ 12.0 kB/s"),
        (300, "Received B/s", "↓ 300 B/s"),
        (25, "Failed %", "25% failed"),
        (0.004, "Avg duration s", "0.004 s"),
        (None, "Connections /s", ""),
        ("7 conn/s", "", "7 conn/s"),
    ],
    ids=["conn-rate", "sent", "received", "failed", "seconds", "none", "preformatted"],
)
def test_stat_text(value: Any, display: str, text: str) -> None:
    assert render.stat_text(value, display) == text


def test_dot_names_workloads_labels_rates_and_colours_failing_edges_red() -> None:
    dot = render.to_dot(graph_answer("connection"), graph_answer("bytes"))
    for name in ("web", "api", "cache", "GITHUB"):
        assert f"<B>{name}</B>" in dot
    edge_lines = [ln for ln in dot.splitlines() if "->" in ln]
    assert len(edge_lines) == 3
    assert "2 conn/s" in dot and "↑ 1.5 kB/s" in dot and "↓ 12.0 kB/s" in dot
    red = [ln for ln in edge_lines if render.RED in ln]
    assert len(red) == 1 and "100% failed" in red[0] and "0.3 conn/s" in red[0]
    assert not re.search(r"[^0-9]0% failed", dot)  # a healthy edge does not say so
    assert "shape=ellipse" in dot and "external · US" in dot  # the organisation and its country
    web = next(ln for ln in dot.splitlines() if "<B>web</B>" in ln)
    assert "conn/s" not in web  # a client-only node has no server stats to show


def test_dot_never_dangles_and_says_when_empty() -> None:
    dot = render.to_dot(({}, {"nodes": [], "edges": [{"id": "e", "source": "a", "target": "b"}]}))
    assert len([ln for ln in dot.splitlines() if "label=<<B>a</B>>" in ln]) == 1
    assert "no traffic" in render.to_dot(({}, {"nodes": [], "edges": []}))


def test_svg_has_the_names() -> None:
    require_tool("dot")
    svg = render.render(render.to_dot(graph_answer()), "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for name in ("web", "api", "GITHUB"):
        assert f">{name}</text>" in svg
    assert render.RED in svg


@pytest.mark.parametrize(
    ("raw", "status", "ctype"),
    [
        ("", 200, "text/html; charset=utf-8"),
        ("format=svg", 200, "image/svg+xml"),
        ("format=png", 200, "image/png"),
        ("format=dot&level=pod", 200, "text/vnd.graphviz; charset=utf-8"),
        ("format=gif", 400, "application/json"),
        ("refresh=soon", 400, "application/json"),
        ("refresh=-1", 400, "application/json"),
        ("window=0", 400, "application/json"),
        ("namespace=(bad", 400, "application/json"),
        ("source=prometheus", 503, "application/json"),
    ],
    ids=["html", "svg", "png", "dot", "bad-format", "bad-refresh", "negative-refresh",
         "no-window", "builder-rejects", "source-down"],
)  # fmt: skip
def test_route_answers(raw: str, status: int, ctype: str) -> None:
    require_tool("dot")
    got_status, got_ctype, body = render.graph_page_route(builder())(raw)
    assert (got_status, got_ctype) == (status, ctype), body[:300]
    if status >= 400:
        assert json.loads(body)["error"]
    if ctype == "image/png":
        assert body[:8] == b"\x89PNG\r\n\x1a\n"


def test_route_asks_for_both_views_and_passes_the_raw_query_on() -> None:
    require_tool("dot")
    calls: list[str] = []
    route = render.graph_page_route(builder(calls), clock=lambda: 1_800_000_000.0)
    status, _, body = route("include=a+b&refresh=7&window=60")
    assert status == 200
    assert calls == [
        f"include=a+b&from={1_800_000_000_000 - 60_000}&to=1800000000000&stats-type=connection",
        f"include=a+b&from={1_800_000_000_000 - 60_000}&to=1800000000000&stats-type=bytes",
    ]  # the + of the regexp is kept, the page's own parameters are not passed on
    assert b'<meta http-equiv="refresh" content="7">' in body
    calls.clear()
    route("stats-type=duration&refresh=0&from=1&to=2")
    assert calls == ["stats-type=duration&from=1&to=2"]


@pytest.fixture
def page_server() -> Iterator[AgentHTTPServer]:
    server = AgentHTTPServer("127.0.0.1", 0, CollectorRegistry(), ConnectionStore(10),
                             lambda: [], raw_routes={"/graph": render.graph_page_route(builder())})  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_server_serves_graph(page_server: AgentHTTPServer) -> None:
    require_tool("dot")
    base = f"http://127.0.0.1:{page_server.port}"
    with urllib.request.urlopen(base + "/graph?refresh=3&include=a+b") as answer:
        assert answer.headers["Content-Type"].startswith("text/html")
        assert b'content="3"' in answer.read()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/graph?format=jpeg")
    assert err.value.code == 400
    err.value.close()


def test_chromium_draws_the_page(page_server: AgentHTTPServer) -> None:
    """A real browser renders the page: names in the DOM's SVG, ink and red on the screenshot."""
    require_tool("dot")
    url = f"http://127.0.0.1:{page_server.port}/graph?refresh=0"
    dom = dump_dom(url)
    svg = dom[dom.index("<svg") :]
    for name in ("web", "api", "GITHUB"):
        assert f">{name}</text>" in svg
    shot = screenshot(url, artifacts_dir() / "graph-page-fixture.png", size="900,600")
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (900, 600)
    assert ink(pixels) > 0.01  # not blank
    assert reddish(pixels) > 20  # the refused edge is red
