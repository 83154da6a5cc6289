"""The topology page (``/graph``): the Node Graph answer drawn by Graphviz.

For people without Grafana, on the demo and on a real node alike. The page is
drawn from the same answer as ``/api/graph/data`` and ``/api/graph/fields``
(the Node Graph API shape, docs/design.md "HTTP"; the builder is
:meth:`k8spacket.nodegraph.api.GraphAPI.graph`), laid out by Graphviz's ``dot``
(Debian package ``graphviz``; the PyPI ``graphviz`` package writes the DOT text):

* a node is a box with its ``title`` (the workload), ``subTitle`` (namespace or
  kind; the country for an organisation) and its stats; internet organisations
  are ellipses, ends nothing named are grey;
* an edge is labelled with its rates: connections per second (and the failed
  share when not 0) from the ``connection`` view, bytes per second each way
  from the ``bytes`` view; units come from the fields' ``displayName``. An edge
  with refused, unanswered or reset connections (:func:`edge_failing`) is red;
* the HTML page inlines the SVG and reloads itself every ``refresh`` seconds (a
  ``<meta http-equiv="refresh">``: no script).

Query: every Node Graph API parameter (``stats-type``, ``namespace``,
``include``, ``exclude``, ``from``, ``to``, ``level``, ``source``) goes to the
builder unchanged (the raw string: a ``+`` in a regexp stays a ``+``); without
``stats-type`` the page asks for both the ``connection`` and the ``bytes`` view.
The page's own: ``format`` (``html`` default, ``svg``, ``png``, ``dot``),
``refresh`` (seconds, 0 = never; default 5), ``window`` (seconds of traffic when
``from``/``to`` are not given; default 300, so rates are "over the last five
minutes"). A query the builder rejects is a 400 with its message; a source that
cannot answer, or Graphviz missing, a 503 that says so.

Limits: ``dot`` runs once per request (tens of milliseconds for a graph a
person can read; past a few hundred nodes use ``level=namespace``).
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

Graph = Mapping[str, Any]
#: ``{"nodes_fields": [...], "edges_fields": [...]}`` of ``/api/graph/fields``
Fields = Mapping[str, Any]
View = tuple[Fields, Graph]
#: the graph builder: a raw Node Graph query string → (fields, data), as
#: :meth:`k8spacket.nodegraph.api.GraphAPI.graph`; raises ``ValueError`` (the
#: message is for the user) for a bad query, :data:`UNAVAILABLE` when the source
#: cannot answer now
GraphBuilder = Callable[[str], View]
Answer = tuple[int, str, bytes]

FORMATS = {"html": "text/html; charset=utf-8", "svg": "image/svg+xml", "png": "image/png",
           "dot": "text/vnd.graphviz; charset=utf-8"}  # fmt: skip
PAGE_PARAMETERS = ("format", "refresh", "window")
DEFAULT_REFRESH = 5
DEFAULT_WINDOW = 300
RED = "#d62728"
GREY = "#8c8c8c"
_KIND_FILL = {"pod": "#e8f1fb", "service": "#eef7e8", "node": "#f3eefa", "host": "#f3eefa",
              "external": "#fff4e0", "unknown": "#eeeeee"}  # fmt: skip
_FAIL_KEY = re.compile(r"(fail|refused|unanswered|reset|rst)", re.I)


class GraphvizMissing(RuntimeError):
    """The ``dot`` program is not installed."""


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else 0.0
    if isinstance(value, str):
        m = re.match(r"\s*([0-9]*\.?[0-9]+)", value)
        return float(m.group(1)) if m else 0.0
    return 0.0


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns at GB


def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def stat_text(value: Any, display: str = "") -> str:
    """A stat as people read it, with the unit its field's ``displayName`` names."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value  # already formatted by whoever built the answer
    x = _number(value)
    d = display.lower()
    if "b/s" in d:
        arrow = (
            "↑ " if d.startswith("sent") else "↓ " if d.startswith(("received", "answered")) else ""
        )
        return f"{arrow}{human_bytes(x)}/s"
    if "connections" in d and "/s" in d:
        return f"{_g(x)} conn/s in" if " in " in d else f"{_g(x)} conn/s"
    if "%" in d:
        return f"{_g(x)}% failed" if "fail" in d else f"{_g(x)}%"
    if d.endswith(" ms"):
        return f"{_g(x)} ms"
    if d.endswith(" s"):
        return f"{_g(x)} s"
    return f"{_g(x)} {display}".strip()


def _displays(fields: Fields | None, kind: str) -> dict[str, str]:
    """field name → displayName for ``nodes`` or ``edges``."""
    out: dict[str, str] = {}
    for f in (fields or {}).get(f"{kind}_fields") or []:
        if isinstance(f, Mapping) and f.get("field_name"):
            out[str(f["field_name"])] = str(f.get("displayName") or "")
    return out


def _is_red(color: Any) -> bool:
    """True for red colours (named or ``#rrggbb``) as Node Graph answers give them."""
    if not isinstance(color, str):
        return False
    c = color.strip().lower()
    if c in ("red", "dark-red", "semi-dark-red", "light-red", "super-light-red"):
        return True
    m = re.fullmatch(r"#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})", c)
    if m:
        r, g, b = (int(x, 16) for x in m.groups())
        return r >= 160 and r > 2 * g and r > 2 * b
    return False


def edge_failing(edge: Mapping[str, Any]) -> bool:
    """An edge whose connections fail or are reset: a red ``color``, or such a count > 0."""
    if _is_red(edge.get("color")):
        return True
    for key, value in edge.items():
        if key.startswith(("detail__", "arc__")) and _FAIL_KEY.search(key) and _number(value) > 0:
            return True
    return False


def _node_kind(node: Mapping[str, Any]) -> str:
    kind = node.get("detail__kind")
    if isinstance(kind, str) and kind:
        return kind
    return "unknown" if node.get("title") in ("unknown", "", None) else "pod"


def _html_label(lines: Sequence[tuple[str, str]], color: str = "") -> str:
    """A Graphviz HTML-like label from (text, style) lines; style ``b`` bold, ``s`` small."""
    out = []
    for text, style in lines:
        if not text:
            continue
        t = html.escape(text)
        if style == "b":
            t = f"<B>{t}</B>"
        elif style == "s":
            t = f'<FONT POINT-SIZE="9" COLOR="{color or "#555555"}">{t}</FONT>'
        elif color:
            t = f'<FONT COLOR="{color}">{t}</FONT>'
        out.append(t)
    return "<" + "<BR/>".join(out or ["&nbsp;"]) + ">"


def _rows(view: View | None, kind: str) -> dict[str, Mapping[str, Any]]:
    if view is None:
        return {}
    return {str(r.get("id")): r for r in view[1].get(kind) or [] if isinstance(r, Mapping)}


def to_dot(view: View, extra: View | None = None, title: str = "") -> str:
    """DOT text for a Node Graph answer; ``extra`` (another view, same ids) adds its stats."""
    import graphviz

    fields, graph = view
    nd, ed = _displays(fields, "nodes"), _displays(fields, "edges")
    xnd, xed = (
        _displays(extra[0] if extra else None, "nodes"),
        _displays(extra[0] if extra else None, "edges"),
    )
    more_nodes, more_edges = _rows(extra, "nodes"), _rows(extra, "edges")
    g = graphviz.Digraph("k8spacket", graph_attr={"rankdir": "LR", "bgcolor": "white",
                         "fontname": "Helvetica", "label": title, "labelloc": "t",
                         "fontsize": "16", "pad": "0.3", "nodesep": "0.5", "ranksep": "1.3"},
                         node_attr={"fontname": "Helvetica", "fontsize": "11", "style": "filled",
                                    "color": "#4a6785", "penwidth": "1.2"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9",
                                    "color": "#4a6785", "fontcolor": "#333333"})  # fmt: skip
    nodes = [n for n in graph.get("nodes") or [] if isinstance(n, Mapping)]
    # Graphviz reads "a:b" in an edge as node a, port b: every node gets a plain id
    known: dict[str, str] = {}

    def dot_id(api_id: str) -> str:
        return known.setdefault(api_id, f"n{len(known)}")

    for n in nodes:
        nid = str(n.get("id"))
        if nid in known:
            continue
        kind = _node_kind(n)
        other = more_nodes.get(nid, {})
        sub = str(n.get("subTitle") or "")
        country = str(n.get("detail__country") or "")
        if country and country not in sub:
            sub = f"{sub} · {country}" if sub else country
        # a node's stats describe it as a server: a client-only node shows none
        lines = [
            (str(n.get("title") or "unknown"), "b"),
            (sub, "s"),
            (stat_text(n.get("mainStat"), nd.get("mainStat", "")) if n.get("mainStat") else "", ""),
            (
                stat_text(other.get("mainStat"), xnd.get("mainStat", ""))
                if other.get("mainStat")
                else "",
                "s",
            ),
        ]
        g.node(dot_id(nid), label=_html_label(lines),
               shape="ellipse" if kind == "external" else "box",
               fillcolor=_KIND_FILL.get(kind, _KIND_FILL["unknown"]),
               color=GREY if kind == "unknown" else "#4a6785",
               tooltip=str(n.get("title") or ""))  # fmt: skip
    for e in graph.get("edges") or []:
        if not isinstance(e, Mapping):
            continue
        src, dst = str(e.get("source")), str(e.get("target"))
        for end in (src, dst):
            if end not in known:  # never a dangling edge (the API promises ends exist)
                g.node(dot_id(end), label=_html_label([(end, "b")]), shape="box",
                       fillcolor=_KIND_FILL["unknown"], color=GREY)  # fmt: skip
        other = more_edges.get(str(e.get("id")), {})
        failing = edge_failing(e) or edge_failing(other)
        secondary = stat_text(e.get("secondaryStat"), ed.get("secondaryStat", ""))
        if secondary.startswith("0% failed"):
            secondary = ""
        parts = [
            stat_text(e.get("mainStat"), ed.get("mainStat", "")),
            secondary,
            " ".join(
                p
                for p in (
                    stat_text(other.get("mainStat"), xed.get("mainStat", "")),
                    stat_text(other.get("secondaryStat"), xed.get("secondaryStat", "")),
                )
                if p
            ),
        ]
        resets = _number(e.get("detail__reset"))
        if resets:
            parts.append(f"{resets:.0f} reset")
        thickness = max(_number(e.get("thickness")), _number(other.get("thickness")), 1.0)
        color = RED if failing else "#4a6785"
        g.edge(known[src], known[dst], label=_html_label([(p, "") for p in parts if p], RED if failing else ""),
               color=color, penwidth=f"{min(thickness, 6.0):.1f}")  # fmt: skip
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
</style></head>
<body><h1>{html.escape(title)}</h1>
<div class="meta">query: <code>{q}</code> &middot; {every}
 &middot; <a href="?{amp}format=svg">SVG</a> &middot; <a href="/api/graph/data?{html.escape(query)}">JSON</a>
 &middot; <span style="color:{RED}">red: refused, unanswered or reset connections</span></div>
<div class="graph">{svg_without_prolog(svg)}</div>
</body></html>
"""
    return body.encode()


def split_raw(raw: str) -> list[tuple[str, str]]:
    """(name, raw value) parts of a query string, split on ``&`` and the first ``=``."""
    out = []
    for part in raw.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.append((unquote(name), value))
    return out


def join_raw(parts: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{n}={v}" for n, v in parts)


def _error(status: int, message: str) -> Answer:
    return status, "application/json", json.dumps({"error": message}).encode()


def graph_page_route(
    build: GraphBuilder,
    title: str = "k8spacket topology",
    unavailable: tuple[type[Exception], ...] = (OSError,),
    clock: Callable[[], float] = time.time,
) -> Callable[[str], Answer]:
    """The ``/graph`` handler (raw query string → answer) for the agent's HTTP server."""

    def route(raw: str) -> Answer:
        parts = split_raw(raw)
        own = {n: unquote(v) for n, v in parts if n in PAGE_PARAMETERS}
        graph_parts = [(n, v) for n, v in parts if n not in PAGE_PARAMETERS]
        fmt = own.get("format") or "html"
        if fmt not in FORMATS:
            return _error(400, f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
        numbers: dict[str, int] = {}
        for name, default, top in (("refresh", DEFAULT_REFRESH, 3600),
                                   ("window", DEFAULT_WINDOW, 31 * 86400)):  # fmt: skip
            text = own.get(name, "")
            try:
                numbers[name] = int(text) if text else default
            except ValueError:
                return _error(400, f"{name}: expected whole seconds, got {text!r}")
            if not (0 if name == "refresh" else 1) <= numbers[name] <= top:
                return _error(400, f"{name}: {numbers[name]} is outside the allowed range")
        names = {n for n, _ in graph_parts}
        if "from" not in names and "to" not in names:
            now_ms = int(clock() * 1000)
            graph_parts += [("from", str(now_ms - 1000 * numbers["window"])), ("to", str(now_ms))]
        try:
            if "stats-type" in names and any(n == "stats-type" and v for n, v in graph_parts):
                view, extra = build(join_raw(graph_parts)), None
            else:
                rest = [(n, v) for n, v in graph_parts if n != "stats-type"]
                view = build(join_raw([*rest, ("stats-type", "connection")]))
                extra = build(join_raw([*rest, ("stats-type", "bytes")]))
        except ValueError as e:
            return _error(400, str(e))
        except unavailable as e:
            return _error(503, str(e))
        dot_source = to_dot(view, extra)
        if fmt == "dot":
            return 200, FORMATS[fmt], dot_source.encode()
        try:
            picture = render(dot_source, "svg" if fmt == "html" else fmt)
        except GraphvizMissing as e:
            return _error(503, str(e))
        if fmt != "html":
            return 200, FORMATS[fmt], picture
        shown = join_raw([(n, v) for n, v in parts if n not in ("format", "refresh")])
        return 200, FORMATS["html"], page(picture, numbers["refresh"], shown, title)

    return route
