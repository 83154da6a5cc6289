"""The /graph topology page: DOT from a Node Graph answer, the route, the real server, Chromium.

The graph answers here are fixtures in the documented Node Graph API shape
(DESIGN.md "HTTP"); the page is drawn by the real Graphviz and served by the
real AgentHTTPServer. tests/test_demo.py opens the page of a running demo.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from browser import artifacts_dir, dump_dom, ink, png_pixels, reddish, screenshot
from conftest import require_tool
from k8spacket.nodegraph import render
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.server import AgentHTTPServer


def graph_answer(stats: str = "connection") -> dict[str, Any]:
    """A small cluster: web → api (fine), web → api:8081 (refused), api → GITHUB (external)."""
    unit = "conn/s" if stats == "connection" else "B/s"
    return {
        "nodes": [
            {"id": "shop/web", "title": "web", "subTitle": "shop", "mainStat": f"0 {unit}",
             "detail__kind": "pod"},
            {"id": "shop/api", "title": "api", "subTitle": "shop", "mainStat": f"2.5 {unit}",
             "detail__kind": "pod"},
            {"id": "external/GITHUB", "title": "GITHUB", "subTitle": "US",
             "mainStat": f"0.5 {unit}", "detail__kind": "external"},
        ],
        "edges": [
            {"id": "shop/web>shop/api:8080", "source": "shop/web", "target": "shop/api",
             "mainStat": f"2 {unit}", "secondaryStat": "0% failed", "color": "green"},
            {"id": "shop/web>shop/api:8081", "source": "shop/web", "target": "shop/api",
             "mainStat": f"0.3 {unit}", "secondaryStat": "100% failed", "color": "red"},
            {"id": "shop/api>external/GITHUB:443", "source": "shop/api",
             "target": "external/GITHUB", "mainStat": f"0.5 {unit}", "color": "green"},
        ],
    }  # fmt: skip


def builder(calls: list[Mapping[str, list[str]]] | None = None) -> render.GraphBuilder:
    def build(query: Mapping[str, list[str]]) -> dict[str, Any]:
        if calls is not None:
            calls.append(query)
        if query.get("namespace") == ["(bad"]:
            raise ValueError("namespace: bad regexp '(bad'")
        return graph_answer((query.get("stats-type") or ["connection"])[0])

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


def test_dot_names_workloads_labels_rates_and_colours_failing_edges_red() -> None:
    dot = render.to_dot(graph_answer("connection"), graph_answer("bytes"))
    for name in ("web", "api", "GITHUB"):
        assert f"<B>{name}</B>" in dot
    assert "2 conn/s" in dot and "2 B/s" in dot  # both rates on the edge
    lines = {line.split("[")[0].strip(): line for line in dot.splitlines() if "->" in line}
    assert len(lines) == 2 or len([ln for ln in dot.splitlines() if "->" in ln]) == 3
    edge_lines = [ln for ln in dot.splitlines() if "->" in ln]
    red = [ln for ln in edge_lines if render.RED in ln]
    assert len(red) == 1 and "0.3 conn/s" in red[0]
    assert "shape=ellipse" in dot  # the external organisation


def test_dot_never_dangles_and_says_when_empty() -> None:
    dot = render.to_dot({"nodes": [], "edges": [{"id": "e", "source": "a", "target": "b"}]})
    assert '"a"' in dot or "\ta " in dot
    assert "no traffic" in render.to_dot({"nodes": [], "edges": []})


def test_svg_has_the_names() -> None:
    require_tool("dot")
    svg = render.render(render.to_dot(graph_answer()), "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for name in ("web", "api", "GITHUB"):
        assert f">{name}</text>" in svg
    assert render.RED in svg


@pytest.mark.parametrize(
    ("query", "status", "ctype"),
    [
        ({}, 200, "text/html; charset=utf-8"),
        ({"format": ["svg"]}, 200, "image/svg+xml"),
        ({"format": ["png"]}, 200, "image/png"),
        ({"format": ["dot"]}, 200, "text/vnd.graphviz; charset=utf-8"),
        ({"format": ["gif"]}, 400, "application/json"),
        ({"refresh": ["soon"]}, 400, "application/json"),
        ({"refresh": ["-1"]}, 400, "application/json"),
        ({"namespace": ["(bad"]}, 400, "application/json"),
    ],
    ids=["html", "svg", "png", "dot", "bad-format", "bad-refresh", "negative-refresh",
         "builder-rejects"],
)  # fmt: skip
def test_route_answers(query: dict[str, list[str]], status: int, ctype: str) -> None:
    require_tool("dot")
    got_status, got_ctype, body = render.graph_page_route(builder())(query)
    assert (got_status, got_ctype) == (status, ctype), body[:300]
    if status == 400:
        assert json.loads(body)["error"]
    if ctype == "image/png":
        assert body[:8] == b"\x89PNG\r\n\x1a\n"


def test_route_asks_for_both_views_unless_told_and_passes_the_query_on() -> None:
    require_tool("dot")
    calls: list[Mapping[str, list[str]]] = []
    route = render.graph_page_route(builder(calls))
    status, _, body = route({"namespace": ["shop"], "refresh": ["7"]})
    assert status == 200
    assert [c["stats-type"] for c in calls] == [["connection"], ["bytes"]]
    assert all(c["namespace"] == ["shop"] and "refresh" not in c for c in calls)
    assert b'<meta http-equiv="refresh" content="7">' in body
    calls.clear()
    route({"stats-type": ["duration"], "refresh": ["0"]})
    assert [c["stats-type"] for c in calls] == [["duration"]]


@pytest.fixture
def page_server() -> Iterator[AgentHTTPServer]:
    server = AgentHTTPServer("127.0.0.1", 0, CollectorRegistry(), ConnectionStore(10),
                             lambda: True, graph=builder())  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_server_serves_graph(page_server: AgentHTTPServer) -> None:
    require_tool("dot")
    base = f"http://127.0.0.1:{page_server.port}"
    with urllib.request.urlopen(base + "/graph?refresh=3") as answer:
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
