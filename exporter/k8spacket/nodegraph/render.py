"""The topology page (``/graph``): the Node Graph answer drawn by Graphviz.

For people without Grafana, on the demo and on a real node alike. The page is
built from the same ``{"nodes": [...], "edges": [...]}`` answer as
``/api/graph/data`` (the Node Graph API shape, DESIGN.md "HTTP"), laid out by
Graphviz's ``dot`` (the Debian ``graphviz`` package; the PyPI ``graphviz``
package writes the DOT text and runs it):

* a node is a box with its ``title`` (the workload), ``subTitle`` (namespace or
  kind) and ``mainStat``; externals (internet organisations) are drawn as
  ellipses, nodes nothing named in grey;
* an edge is labelled with its ``mainStat`` and ``secondaryStat`` (rates such
  as connections per second and bytes per second); an edge whose connections
  fail (refused, unanswered, reset: :func:`edge_failing`) is drawn red;
* the HTML page embeds the SVG inline and reloads itself every ``refresh``
  seconds (a ``<meta http-equiv="refresh">``: no script needed).

Query: every Node Graph API parameter (``stats-type``, ``namespace``,
``include``, ``exclude``, ``from``, ``to``, ``level``, ``source``) is handed to
the graph builder unchanged; without ``stats-type`` the page asks for both the
``connection`` and the ``bytes`` view and labels each edge with both rates.
``refresh`` (seconds, 0 = never; default 5) and ``format`` (``html`` default,
``svg``, ``png``, ``dot``) are the page's own. A query the builder rejects is a
400 with its message; Graphviz missing is a 503 saying what to install.

Limits: ``dot`` runs once per request (tens of milliseconds for the graphs a
person can read; past a few hundred nodes, use ``level=namespace``).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Graph = Mapping[str, Any]
Query = Mapping[str, list[str]]
#: the graph builder: a parsed Node Graph query → the ``{"nodes", "edges"}`` answer;
#: raises ``ValueError`` (message for the user) for a bad query
GraphBuilder = Callable[[Query], Graph]
Answer = tuple[int, str, bytes]

FORMATS = {"html": "text/html; charset=utf-8", "svg": "image/svg+xml", "png": "image/png",
           "dot": "text/vnd.graphviz; charset=utf-8"}  # fmt: skip
DEFAULT_REFRESH = 5
RED = "#d62728"
GREY = "#8c8c8c"
_KIND_FILL = {"pod": "#e8f1fb", "service": "#eef7e8", "node": "#f3eefa", "host": "#f3eefa",
              "external": "#fff4e0", "unknown": "#eeeeee"}  # fmt: skip
_FAIL_KEY = re.compile(r"(fail|refused|unanswered|reset|rst)", re.I)


class GraphvizMissing(RuntimeError):
    """The ``dot`` program is not installed."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.match(r"\s*([0-9]*\.?[0-9]+)", value)
        return float(m.group(1)) if m else 0.0
    return 0.0


def _is_red(color: Any) -> bool:
    """True for ``red``-ish colours (named, ``#rrggbb``) as the Node Graph answer gives them."""
    if not isinstance(color, str):
        return False
    c = color.strip().lower()
    if c in ("red", "dark-red", "semi-dark-red", "light-red", "super-light-red", "orange-red"):
        return True
    m = re.fullmatch(r"#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})", c)
    if m:
        r, g, b = (int(x, 16) for x in m.groups())
        return r >= 160 and r > 2 * g and r > 2 * b
    return False


def edge_failing(edge: Mapping[str, Any]) -> bool:
    """An edge whose connections fail: a red ``color``, or a failure ``detail__*``/stat > 0."""
    if _is_red(edge.get("color")):
        return True
    for key, value in edge.items():
        if key.startswith(("detail__", "arc__")) and _FAIL_KEY.search(key) and _number(value) > 0:
            return True
    return False


def _node_kind(node: Mapping[str, Any]) -> str:
    for key in ("detail__kind", "detail__Kind", "kind"):
        if isinstance(node.get(key), str):
            return str(node[key])
    return "unknown" if node.get("title") in ("unknown", "") else "pod"


def _html_label(lines: Sequence[tuple[str, str]]) -> str:
    """A Graphviz HTML-like label from (text, style) lines; style ``b`` bold, ``s`` small."""
    out = []
    for text, style in lines:
        if not text:
            continue
        t = html.escape(text)
        if style == "b":
            t = f"<B>{t}</B>"
        elif style == "s":
            t = f'<FONT POINT-SIZE="9" COLOR="#555555">{t}</FONT>'
        out.append(t)
    return "<" + "<BR/>".join(out or ["&nbsp;"]) + ">"


def to_dot(graph: Graph, extra: Graph | None = None, title: str = "") -> str:
    """DOT text for a Node Graph answer; ``extra`` (same ids) adds its stats to the labels."""
    import graphviz

    more_nodes = {str(n.get("id")): n for n in (extra or {}).get("nodes", [])}
    more_edges = {str(e.get("id")): e for e in (extra or {}).get("edges", [])}
    g = graphviz.Digraph("k8spacket", graph_attr={"rankdir": "LR", "bgcolor": "white",
                         "fontname": "Helvetica", "label": title, "labelloc": "t",
                         "fontsize": "16", "pad": "0.3", "nodesep": "0.4", "ranksep": "1.1"},
                         node_attr={"fontname": "Helvetica", "fontsize": "11", "style": "filled",
                                    "color": "#4a6785", "penwidth": "1.2"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9",
                                    "color": "#4a6785", "fontcolor": "#333333"})  # fmt: skip
    nodes = list(graph.get("nodes") or [])
    known = set()
    for n in nodes:
        nid = str(n.get("id"))
        known.add(nid)
        kind = _node_kind(n)
        other = more_nodes.get(nid, {})
        lines = [
            (_text(n.get("title")) or "unknown", "b"),
            (_text(n.get("subTitle")), "s"),
            (_text(n.get("mainStat")), ""),
            (_text(other.get("mainStat")), "s"),
        ]
        g.node(nid, label=_html_label(lines),
               shape="ellipse" if kind == "external" else "box",
               fillcolor=_KIND_FILL.get(kind, _KIND_FILL["unknown"]),
               color=GREY if kind == "unknown" else "#4a6785",
               tooltip=_text(n.get("title")))  # fmt: skip
    for e in graph.get("edges") or []:
        src, dst = str(e.get("source")), str(e.get("target"))
        for end in (src, dst):
            if end not in known:  # never draw a dangling edge; the API guarantees ends exist
                known.add(end)
                g.node(end, label=_html_label([(end, "b")]), shape="box",
                       fillcolor=_KIND_FILL["unknown"], color=GREY)  # fmt: skip
        other = more_edges.get(str(e.get("id")), {})
        failing = edge_failing(e) or edge_failing(other)
        parts = [_text(e.get("mainStat")), _text(e.get("secondaryStat")),
                 _text(other.get("mainStat"))]  # fmt: skip
        label = "\n".join(p for p in parts if p)
        thickness = max(_number(e.get("thickness")), _number(other.get("thickness")), 1.0)
        g.edge(src, dst, label=_html_label([(p, "") for p in label.split("\n")]),
               color=RED if failing else "#4a6785", fontcolor=RED if failing else "#333333",
               penwidth=f"{min(thickness, 8.0):.1f}",
               style="bold" if failing else "solid")  # fmt: skip
    if not nodes:
        g.node("empty", label="no traffic in this window yet", shape="plaintext")
    return str(g.source)


def dot_program() -> str | None:
    return shutil.which("dot")


def render(dot_source: str, fmt: str = "svg", timeout: float = 20.0) -> bytes:
    """Run Graphviz's ``dot`` on DOT text; :class:`GraphvizMissing` when it is not installed."""
    dot = dot_program()
    if dot is None:
        raise GraphvizMissing("Graphviz is not installed (Debian: apt-get install graphviz)")
    r = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode(), capture_output=True,
                       timeout=timeout, check=False)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def svg_without_prolog(svg: bytes) -> str:
    """The ``<svg>`` element alone (for inlining into HTML)."""
    text = svg.decode()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def page(svg: bytes, refresh: int, query: str, title: str = "k8spacket topology") -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh > 0 else ""
    q = html.escape(query) or "(defaults)"
    every = f"refreshes every {refresh}s" if refresh > 0 else "does not refresh"
    amp = html.escape(query + "&") if query else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{meta}
<title>{html.escape(title)}</title>
<style>
 body {{ font-family: Helvetica, Arial, sans-serif; margin: 12px 18px; color: #222; }}
 h1 {{ font-size: 18px; margin: 0 0 4px 0; }}
 .meta {{ font-size: 12px; color: #666; margin-bottom: 8px; }}
 .graph svg {{ max-width: 100%; height: auto; }}
 .legend span {{ margin-right: 14px; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="meta">query: <code>{q}</code>
 &middot; {every} &middot; <a href="?{amp}format=svg">SVG</a>
 &middot; <a href="/api/graph/data?{html.escape(query)}">JSON</a>
 <span class="legend">&middot; <span style="color:{RED}">red edge: refused, unanswered or
 reset connections</span></span></div>
<div class="graph">{svg_without_prolog(svg)}</div>
</body></html>
"""
    return body.encode()


def _one(query: Query, name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


def _error(status: int, message: str) -> Answer:
    return status, "application/json", json.dumps({"error": message}).encode()


def graph_page_route(
    build: GraphBuilder, title: str = "k8spacket topology"
) -> Callable[[Query], Answer]:
    """The ``/graph`` handler for :class:`~k8spacket.server.AgentHTTPServer` routes."""

    def route(query: Query) -> Answer:
        fmt = _one(query, "format") or "html"
        if fmt not in FORMATS:
            return _error(400, f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
        refresh_text = _one(query, "refresh")
        try:
            refresh = int(refresh_text) if refresh_text else DEFAULT_REFRESH
        except ValueError:
            return _error(400, f"refresh: expected whole seconds, got {refresh_text!r}")
        if not 0 <= refresh <= 3600:
            return _error(400, f"refresh: {refresh} is outside 0..3600 seconds")
        graph_query = {k: v for k, v in query.items() if k not in ("format", "refresh")}
        try:
            if _one(graph_query, "stats-type"):
                graph, extra = build(graph_query), None
            else:
                graph = build({**graph_query, "stats-type": ["connection"]})
                extra = build({**graph_query, "stats-type": ["bytes"]})
        except ValueError as e:
            return _error(400, str(e))
        except OSError as e:  # e.g. an unreachable Prometheus for source=prometheus
            return _error(503, str(e))
        dot_source = to_dot(graph, extra)
        if fmt == "dot":
            return 200, FORMATS[fmt], dot_source.encode()
        try:
            picture = render(dot_source, "svg" if fmt == "html" else fmt)
        except GraphvizMissing as e:
            return _error(503, str(e))
        if fmt != "html":
            return 200, FORMATS[fmt], picture
        shown = "&".join(f"{k}={v[0]}" for k, v in graph_query.items() if v)
        return 200, FORMATS["html"], page(picture, refresh, shown, title)

    return route
