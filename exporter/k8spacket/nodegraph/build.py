"""The three views: an :class:`~.edges.EdgeSet` in, Node Graph API fields and data out.

:func:`build_graph` filters the edges (``namespace``, ``include``, ``exclude``),
groups their ends at the query's ``level`` and answers
``(fields, data)``: ``fields`` is ``{"nodes_fields": [...], "edges_fields":
[...]}`` and ``data`` is ``{"nodes": [...], "edges": [...]}``, every row
carrying exactly the declared field names (the datasource drops undeclared
keys, so nothing is sent that is not declared, and nothing declared is left
out). docs/nodegraph.md has the table of every field.

Views (``stats-type``); node numbers describe the node as a *server* (what
came in), as upstream's did:

* ``connection``: a health ring (arcs: ended well, i.e. FIN or still open /
  reset / failed, i.e. refused or unanswered), connections per second and the
  failed share; edges coloured by failed share, as thick as their rate;
* ``bytes``: bytes received from clients and answered back, per second, the
  arcs their split; edges sent/received per second, as thick as their volume;
* ``duration``: average and 95th percentile (from the duration histogram) of
  connection lifetime, arcs short (< 1 s) / medium (< 1 min) / long; edges with
  the average handshake time.

Every node has arcs summing to 1: a node with nothing to show (a client only,
or no connection ended) gets the grey ``arc__none`` = 1. Titles are never
empty (an unnamed end is ``unknown``, as in the metrics), ids are unique and
every edge's ends are nodes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from math import floor
from operator import add
from typing import Any

from k8spacket.flows.record import UNKNOWN
from k8spacket.nodegraph.edges import (
    BUCKETS0,
    CONNECTIONS,
    DURATION_SUM,
    FAILED,
    HS_COUNT,
    HS_SUM,
    RECEIVED,
    RESET,
    SENT,
    WIDTH,
    Detail,
    EdgeSet,
    End,
    Values,
    ended,
    quantile,
)
from k8spacket.nodegraph.query import STATS_TYPES, GraphQuery

Field = dict[str, str]
Fields = dict[str, list[Field]]
Data = dict[str, Any]

GREEN, YELLOW, ORANGE, RED, BLUE, PURPLE, GREY = (
    "#73bf69",
    "#fade2a",
    "#ff9830",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#8e8e8e",
)
KIND_COLORS = {
    "pod": BLUE,
    "service": PURPLE,
    "node": GREY,
    "host": GREY,
    "external": ORANGE,
    "unknown": GREY,
}
#: duration classes of the ``duration`` view's arcs: bucket index ranges (< 1 s, < 1 min)
_NOTHING = [0.0] * WIDTH
_SHORT = BUCKETS0 + 5  # the cumulative bucket le=1
_MEDIUM = BUCKETS0 + 8  # le=60


def _f(name: str, kind: str = "string", display: str = "", color: str = "") -> Field:
    field = {"field_name": name, "type": kind}
    if display:
        field["displayName"] = display
    if color:
        field["color"] = color
    return field


def _n(name: str, display: str, color: str = "") -> Field:
    return _f(name, "number", display, color)


_NODE_HEAD = [_f("id"), _f("title"), _f("subTitle")]
_NODE_DETAILS = [
    _f("detail__kind", display="Kind"),
    _f("detail__namespace", display="Namespace"),
    _f("detail__workload", display="Workload"),
    _f("detail__addresses", display="Addresses (a few)"),
    _f("detail__ports", display="Ports served"),
    _f("detail__organisation", display="Organisation"),
    _f("detail__country", display="Country"),
    _f("detail__source", display="Graph source"),
    _f("color"),
]
_EDGE_HEAD = [_f("id"), _f("source"), _f("target")]
_EDGE_TAIL = [
    _n("thickness", "Thickness"),
    _f("color"),
    _f("detail__ports", display="Server ports"),
    _n("detail__connections", "Connections (window)"),
    _n("detail__sent_bytes", "Sent bytes (window)"),
    _n("detail__received_bytes", "Received bytes (window)"),
]

NODE_FIELDS: dict[str, list[Field]] = {
    "connection": [
        *_NODE_HEAD,
        _n("mainStat", "Connections in /s"),
        _n("secondaryStat", "Failed in %"),
        _n("arc__ok", "Ended well (FIN or open)", "green"),
        _n("arc__reset", "Reset", "orange"),
        _n("arc__failed", "Failed (refused, unanswered)", "red"),
        _n("arc__none", "No connections in", "#8e8e8e"),
        _n("detail__connections_in", "Connections in (window)"),
        _n("detail__reset_in", "Reset in (window)"),
        _n("detail__failed_in", "Failed in (window)"),
        *_NODE_DETAILS,
    ],
    "bytes": [
        *_NODE_HEAD,
        _n("mainStat", "Received B/s"),
        _n("secondaryStat", "Answered B/s"),
        _n("arc__received", "Received from clients", "blue"),
        _n("arc__answered", "Answered to clients", "purple"),
        _n("arc__none", "No bytes in", "#8e8e8e"),
        _n("detail__received_bytes", "Received bytes (window)"),
        _n("detail__answered_bytes", "Answered bytes (window)"),
        *_NODE_DETAILS,
    ],
    "duration": [
        *_NODE_HEAD,
        _n("mainStat", "Avg duration s"),
        _n("secondaryStat", "p95 duration s"),
        _n("arc__short", "Ended in < 1 s", "green"),
        _n("arc__medium", "Ended in 1 s - 1 min", "yellow"),
        _n("arc__long", "Ended after > 1 min", "purple"),
        _n("arc__none", "No connection ended", "#8e8e8e"),
        _n("detail__ended", "Connections ended (window)"),
        _n("detail__handshake_ms", "Avg handshake ms"),
        *_NODE_DETAILS,
    ],
}
EDGE_FIELDS: dict[str, list[Field]] = {
    "connection": [
        *_EDGE_HEAD,
        _n("mainStat", "Connections /s"),
        _n("secondaryStat", "Failed %"),
        _n("detail__failed", "Failed (window)"),
        _n("detail__reset", "Reset (window)"),
        *_EDGE_TAIL,
    ],
    "bytes": [
        *_EDGE_HEAD,
        _n("mainStat", "Sent B/s"),
        _n("secondaryStat", "Received B/s"),
        *_EDGE_TAIL,
    ],
    "duration": [
        *_EDGE_HEAD,
        _n("mainStat", "Avg duration s"),
        _n("secondaryStat", "Avg handshake ms"),
        _n("detail__p95_duration_s", "p95 duration s"),
        _n("detail__ended", "Connections ended (window)"),
        *_EDGE_TAIL,
    ],
}


def fields_for(stats_type: str) -> Fields:
    """The field declarations of one view (``/api/graph/fields``)."""
    return {"edges_fields": EDGE_FIELDS[stats_type], "nodes_fields": NODE_FIELDS[stats_type]}


# ---------------------------------------------------------------- grouping
class _Node:
    __slots__ = ("addresses", "countries", "end", "id", "incoming", "ports", "sub", "title")

    def __init__(self, node_id: str, title: str, sub: str, end: End) -> None:
        self.id = node_id
        self.title = title or UNKNOWN
        self.sub = sub
        self.end = end
        self.incoming: list[Values] = []
        self.addresses: set[str] = set()
        self.ports: set[str] = set()
        self.countries: set[str] = set()


def _group(level: str, e: End) -> tuple[str, str, str, End]:
    """(id, title, subTitle, the end as shown) of an end at ``level``."""
    kind, ns, wl, name = e
    if level == "namespace" and ns:
        return f"namespace:{ns}", ns, "namespace", End("namespace", ns, "", ns)
    if level == "pod" and kind == "pod":
        return f"pod:{ns}/{name}", name, ns or kind, e
    title = wl or UNKNOWN
    return f"{kind}:{ns}/{title}", title, ns or kind, End(kind, ns, title, title)


def _matcher(q: GraphQuery) -> Callable[[End, End, Detail, Detail], bool] | None:
    ns, inc, exc = q.namespace, q.include, q.exclude
    if ns is None and inc is None and exc is None:
        return None

    def texts(e: End, addrs: Detail) -> list[str]:
        return [e.name, e.workload, e.namespace, *addrs]

    def search(p: re.Pattern[str], e: End, addrs: Detail) -> bool:
        return any(p.search(t) for t in texts(e, addrs) if t)

    def keep(s: End, d: End, sa: Detail, da: Detail) -> bool:
        if ns is not None and not (ns.fullmatch(s.namespace) or ns.fullmatch(d.namespace)):
            return False
        if inc is not None and not (search(inc, s, sa) or search(inc, d, da)):
            return False
        return not (exc is not None and (search(exc, s, sa) or search(exc, d, da)))

    return keep


def _r(x: float | None) -> float | None:
    """A number for JSON: integral values as ints, others to 6 decimals; ``None`` if not finite."""
    if x is None or not -1e300 < x < 1e300:
        return None
    i = int(x)
    return i if i == x else decimals(x, 1e6)


def decimals(x: float, scale: float) -> float:
    """``x`` rounded to ``log10(scale)`` decimals, half up: ``round(x, 6)`` for 1e6, faster.

    Written as ``json`` writes floats (the shortest ``repr``), ``n / scale`` for a
    whole ``n`` is that decimal exactly (never ``0.30000000000000004``). Values
    so large that the scaled number is past 2**53 keep every digit a float
    has (nothing to round at that size).
    """
    y = x * scale
    return floor(y + 0.5) / scale if -9e15 < y < 9e15 else x


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _health_color(failed_share: float) -> str:
    if failed_share <= 0:
        return GREEN
    if failed_share < 0.05:
        return YELLOW
    if failed_share < 0.25:
        return ORANGE
    return RED


def _joined(values: set[str] | Detail) -> str:
    return ", ".join(sorted(values))


def _ports_text(ports: Detail) -> str:
    return ", ".join(sorted(ports)) if len(ports) > 1 else "".join(ports)


# ---------------------------------------------------------------- the views
# The arcs of a node, in field order (they sum to 1; ``arc__none`` last).
def _arcs_connection(v: Values) -> tuple[float, ...]:
    total = max(v[CONNECTIONS], v[FAILED] + v[RESET])
    if total <= 0:
        return (0, 0, 0, 1)
    failed, reset = v[FAILED] / total, v[RESET] / total
    return (max(0.0, 1 - failed - reset), reset, failed, 0)


def _arcs_bytes(v: Values) -> tuple[float, ...]:
    total = v[SENT] + v[RECEIVED]
    if total <= 0:
        return (0, 0, 1)
    return (v[SENT] / total, max(0.0, 1 - v[SENT] / total), 0)


def _arcs_duration(v: Values) -> tuple[float, ...]:
    total = ended(v)
    if total <= 0:
        return (0, 0, 0, 1)
    short = v[_SHORT] / total
    medium = (v[_MEDIUM] - v[_SHORT]) / total
    return (short, medium, max(0.0, 1 - short - medium), 0)


#: per view, the numbers its node rows read (the others are not summed; None: all of them)
_NODE_COLUMNS: dict[str, tuple[int, ...] | None] = {
    "connection": (CONNECTIONS, FAILED, RESET),
    "bytes": (SENT, RECEIVED),
    "duration": None,  # most of them: the histogram
}


def _incoming(stats_type: str, ins: list[Values]) -> Values:
    """The sum of a node's incoming edges' numbers, for the columns the view reads."""
    if len(ins) == 1:
        return ins[0]
    if not ins:
        return _NOTHING
    columns = _NODE_COLUMNS[stats_type]
    if columns is None:
        return [sum(c) for c in zip(*ins, strict=True)]
    v = [0.0] * WIDTH
    for i in columns:
        v[i] = sum([x[i] for x in ins])
    return v


def _node_values(stats_type: str, n: _Node, seconds: float, source: str) -> tuple[Any, ...]:
    """A node's row as its values in field order (``None``: no number).

    :func:`build_graph` zips them with the field names, :func:`graph_json`
    writes them through a template (:func:`_json_values`).
    """
    v = _incoming(stats_type, n.incoming)
    kind, ns, wl, _ = n.end
    if stats_type == "connection":
        total = max(v[CONNECTIONS], v[FAILED] + v[RESET])
        color = _health_color(_share(v[FAILED], total)) if total else KIND_COLORS.get(kind, GREY)
        stats: tuple[Any, ...] = (
            _r(v[CONNECTIONS] / seconds),
            _r(100 * _share(v[FAILED], total)),
            *_arcs_connection(v),
            _r(v[CONNECTIONS]),
            _r(v[RESET]),
            _r(v[FAILED]),
        )
    elif stats_type == "bytes":
        color = KIND_COLORS.get(kind, GREY)
        stats = (
            _r(v[SENT] / seconds),
            _r(v[RECEIVED] / seconds),
            *_arcs_bytes(v),
            _r(v[SENT]),
            _r(v[RECEIVED]),
        )
    else:
        count = ended(v)
        color = KIND_COLORS.get(kind, GREY)
        stats = (
            _r(v[DURATION_SUM] / count) if count else None,
            _r(quantile(0.95, v)),
            *_arcs_duration(v),
            _r(count),
            _r(1000 * v[HS_SUM] / v[HS_COUNT]) if v[HS_COUNT] else None,
        )
    return (
        n.id, n.title, n.sub, *stats,
        kind, ns, wl, _joined(n.addresses), _joined(n.ports),
        wl if kind == "external" else "", _joined(n.countries), source, color,
    )  # fmt: skip


# ---------------------------------------------------------------- edge values
# Per view, one function writes every link's edge row as a tuple in field order:
# the row's ``head`` (id, source, target, as the caller writes them) followed by
# the view's values. The same function serves both outputs: :func:`build_graph`
# zips the tuples with the field names, :func:`graph_json` writes them through a
# template. ``ports`` maps each link's server ports to their text as the caller
# writes it (plain, or JSON text), ``missing`` stands for "no number" (``None``,
# or ``"null"`` for the JSON text), ``rate`` is 1 / the window's seconds. An
# edge is as thick as its *weight* (the view's main number) relative to the
# thickest. A loop per view, no call per edge: this is most of an answer.

#: (source node, target node, summed numbers, server ports) of one edge of the view
Link = tuple[_Node, _Node, Values, Detail]
Head = tuple[str, ...]
EdgeRows = Callable[[list[Link], list[Head], dict[Detail, str], float, Any], list[tuple[Any, ...]]]


def _thicknesses(weights: list[float]) -> list[float]:
    """Each edge's thickness: 1 to 8, as the square root of its weight relative to the thickest.

    Computed once per distinct weight (weights are mostly small counts that repeat).
    """
    top = max(weights, default=0.0)
    scale = 7 / math.sqrt(top) if top > 0 else 0.0
    sqrt = math.sqrt
    of = {w: round(1 + scale * sqrt(w), 2) for w in set(weights)}
    return [of[w] for w in weights]


def _edges_connection(
    links: list[Link], heads: list[Head], ports: dict[Detail, str], rate: float, missing: Any
) -> list[tuple[Any, ...]]:
    weights = [v[CONNECTIONS] for _, _, v, _ in links]
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    thick = _thicknesses(weights)
    for head, (_, _, v, p), connections, t in zip(heads, links, weights, thick, strict=True):
        failed_n, reset = v[FAILED], v[RESET]
        total = max(connections, failed_n + reset)
        failed = failed_n / total if total > 0 else 0.0
        # most edges have no failure: round(x, 4) is x for a zero (of either sign)
        failed_pct = decimals(100 * failed, 1e4) if failed else 100 * failed
        append((
            *head,
            decimals(connections * rate, 1e6), failed_pct, failed_n, reset,
            t, _health_color(failed), ports[p],
            connections, v[SENT], v[RECEIVED],
        ))  # fmt: skip
    return rows


def _edges_bytes(
    links: list[Link], heads: list[Head], ports: dict[Detail, str], rate: float, missing: Any
) -> list[tuple[Any, ...]]:
    weights = [v[SENT] + v[RECEIVED] for _, _, v, _ in links]
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    thick = _thicknesses(weights)
    for head, (_, _, v, p), t in zip(heads, links, thick, strict=True):
        sent, received = v[SENT], v[RECEIVED]
        append((
            *head,
            decimals(sent * rate, 1e3), decimals(received * rate, 1e3),
            t, BLUE, ports[p], v[CONNECTIONS], sent, received,
        ))  # fmt: skip
    return rows


def _edges_duration(
    links: list[Link], heads: list[Head], ports: dict[Detail, str], rate: float, missing: Any
) -> list[tuple[Any, ...]]:
    weights = [v[-1] for _, _, v, _ in links]  # connections ended: ``ended(v)``
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    thick = _thicknesses(weights)
    for head, (_, _, v, p), count, t in zip(heads, links, weights, thick, strict=True):
        mean = _r(v[DURATION_SUM] / count) if count else None
        handshake = _r(1000 * v[HS_SUM] / v[HS_COUNT]) if v[HS_COUNT] else None
        p95 = _r(quantile(0.95, v))
        append((
            *head,
            missing if mean is None else mean,
            missing if handshake is None else handshake,
            missing if p95 is None else p95,
            count,
            t, PURPLE, ports[p],
            v[CONNECTIONS], v[SENT], v[RECEIVED],
        ))  # fmt: skip
    return rows


_EDGE_ROWS: dict[str, EdgeRows] = {
    "connection": _edges_connection,
    "bytes": _edges_bytes,
    "duration": _edges_duration,
}


def _edge_rows(
    links: list[Link],
    heads: list[Head],
    query: GraphQuery,
    ports_text: Callable[[Detail], str],
    missing: Any,
) -> list[tuple[Any, ...]]:
    """The view's edge rows (see :data:`_EDGE_ROWS`), ports texts made once per distinct set."""
    ports = {p: ports_text(p) for p in {link[3] for link in links}}
    rate = 1 / max(query.seconds, 1e-9)
    return _EDGE_ROWS[query.stats_type](links, heads, ports, rate, missing)


def _layout(edges: EdgeSet, query: GraphQuery) -> tuple[dict[str, _Node], list[Link]]:
    """The query's nodes (by id) and links: ``edges`` filtered and grouped at its level.

    One pass over the edges; each node's incoming numbers are kept for
    :func:`_node_values`, its details (addresses, ports, countries) collected here.
    The pass makes one link per edge. When no two ends share a node (e.g. the
    workload level with one pod per workload, or the pod level over pods), the
    links are the edges' and nothing is merged; otherwise a second pass over
    the links merges those between the same two nodes, in edge order (the sums
    and sets are those of merging as they come).
    """
    keep = _matcher(query)
    level = query.level
    nodes: dict[str, _Node] = {}
    by_end: dict[End, _Node] = {}
    shared = False  # some node has more than one end: links may need merging

    def node(e: End) -> _Node:
        nonlocal shared
        g = _group(level, e)
        n = nodes.get(g[0])
        if n is None:
            n = nodes[g[0]] = _Node(*g)
        else:
            shared = True
        by_end[e] = n
        return n

    get = by_end.get
    out: list[Link] = []
    append = out.append
    for (s, d), st in edges.edges.items():
        if keep is not None and not keep(s, d, st.src_addresses, st.dst_addresses):
            continue
        a = get(s) or node(s)
        b = get(d) or node(d)
        v = st.values
        ports = st.ports
        b.incoming.append(v)  # summed once per node in _node_values
        if len(b.addresses) < 4 and st.dst_addresses:
            b.addresses.update(st.dst_addresses)
        if len(a.addresses) < 4 and st.src_addresses:
            a.addresses.update(st.src_addresses)
        if ports and len(b.ports) < 8:
            b.ports.update(ports)
        if st.dst_countries:
            b.countries.update(st.dst_countries)
        if st.src_countries:
            a.countries.update(st.src_countries)
        append((a, b, v, ports))
    return nodes, (_merged(out) if shared else out)


def _merged(links: list[Link]) -> list[Link]:
    """``links`` with those between the same two nodes summed (first one's place, edge order)."""
    merged: dict[tuple[_Node, _Node], tuple[Values, Detail]] = {}
    for a, b, v, ports in links:
        link = merged.get((a, b))
        if link is None:
            merged[(a, b)] = (v, ports)
        else:
            union = link[1] if len(link[1]) >= 8 or not ports else link[1] | ports
            merged[(a, b)] = (list(map(add, link[0], v)), union)
    return [(a, b, v, ports) for (a, b), (v, ports) in merged.items()]


def _node_rows(nodes: dict[str, _Node], query: GraphQuery, source: str) -> list[tuple[Any, ...]]:
    """The nodes' rows (:func:`_node_values`), by id."""
    seconds = max(query.seconds, 1e-9)
    return [_node_values(query.stats_type, nodes[k], seconds, source) for k in sorted(nodes)]


def build_graph(edges: EdgeSet, query: GraphQuery, source: str = "") -> tuple[Fields, Data]:
    """Fields and data of ``query``'s view over ``edges`` (already limited to its window)."""
    nodes, links = _layout(edges, query)
    names = [f["field_name"] for f in EDGE_FIELDS[query.stats_type]]
    heads: list[Head] = [(f"{a.id}->{b.id}", a.id, b.id) for a, b, _, _ in links]
    edge_rows = [
        dict(zip(names, row, strict=True))
        for row in _edge_rows(links, heads, query, _ports_text, None)
    ]
    node_names = [f["field_name"] for f in NODE_FIELDS[query.stats_type]]
    return fields_for(query.stats_type), {
        "nodes": [
            dict(zip(node_names, row, strict=True)) for row in _node_rows(nodes, query, source)
        ],
        "edges": edge_rows,
    }


_COLOR = re.compile("#[0-9a-f]{6}")
assert all(_COLOR.fullmatch(c) for c in (GREEN, YELLOW, ORANGE, RED, BLUE, PURPLE, GREY))


def _templates() -> dict[str, str]:
    """Per view, the JSON text of one edge row with a ``%s`` per value.

    The id is written from the two ends' ids as JSON text without their quotes
    (``"id":"%s->%s"``), the source and target as JSON text. The colour is
    written between quotes as it is: every edge colour is one of the constants
    above (``#`` and hex digits, nothing JSON escapes).
    """
    head = '"id":"%s->%s","source":%s,"target":%s'
    return {
        view: "{"
        + ",".join(
            [head]
            + [
                f'"{name}":"%s"' if name == "color" else f'"{name}":%s'
                for name in (f["field_name"] for f in fields[3:])
            ]
        )
        + "}"
        for view, fields in EDGE_FIELDS.items()
    }


_EDGE_TEMPLATES = _templates()
#: per view, the JSON text of one node row with a ``%s`` per field (see :func:`_json_values`)
_NODE_TEMPLATES = {
    view: "{" + ",".join(f'"{f["field_name"]}":%s' for f in fields) + "}"
    for view, fields in NODE_FIELDS.items()
}
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
#: a string as JSON text, as ``_dumps`` writes it (``ensure_ascii=False``)
_quote = json.encoder.encode_basestring


def _json_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's values for a ``%s`` template: strings as JSON text, ``None`` as ``null``.

    Numbers stay as they are: ``%s`` writes them as ``json`` does (``repr``).
    """
    return tuple([_quote(x) if x.__class__ is str else "null" if x is None else x for x in row])


def _ports_json(ports: Detail) -> str:
    return _dumps(_ports_text(ports))


def graph_json(edges: EdgeSet, query: GraphQuery, source: str, detail: Any) -> bytes:
    """The data answer as JSON bytes, equal to ``json.dumps`` of :func:`build_graph`'s data.

    Node and edge rows are written from per-view templates instead of being
    built as dicts and serialised; ``tests/test_nodegraph_api`` holds the two
    equal and ``tests/test_nodegraph_golden`` the bytes. Numbers are written as
    ``json`` writes them (``repr``), a missing number as ``null``, strings
    escaped by ``json`` (in edge rows once per node id and ports text).
    """
    nodes, links = _layout(edges, query)
    quoted = {n: _dumps(n.id) for n in nodes.values()}
    bare = {n: q[1:-1] for n, q in quoted.items()}  # for the edge id
    heads: list[Head] = [(bare[a], bare[b], quoted[a], quoted[b]) for a, b, _, _ in links]
    template = _EDGE_TEMPLATES[query.stats_type]
    node_template = _NODE_TEMPLATES[query.stats_type]
    return (
        '{"nodes":['
        + ",".join([node_template % _json_values(row) for row in _node_rows(nodes, query, source)])
        + '],"edges":['
        + ",".join([template % row for row in _edge_rows(links, heads, query, _ports_json, "null")])
        + '],"detail":'
        + _dumps(detail)
        + "}"
    ).encode()


def fields_markdown() -> str:
    """The field tables of docs/nodegraph.md (``python -m k8spacket.nodegraph.build``)."""
    out = []
    for frame, table in (("nodes", NODE_FIELDS), ("edges", EDGE_FIELDS)):
        names: list[str] = []
        for view in STATS_TYPES:
            names += [f["field_name"] for f in table[view] if f["field_name"] not in names]
        out.append(f"**{frame}**\n")
        out.append("| field | type | " + " | ".join(f"`{v}`" for v in STATS_TYPES) + " |")
        out.append("|---|---|" + "---|" * len(STATS_TYPES))
        for name in names:
            cells, kind = [], ""
            for view in STATS_TYPES:
                f = next((f for f in table[view] if f["field_name"] == name), None)
                if f is None:
                    cells.append("")
                    continue
                kind = f["type"]
                text = f.get("displayName", "")
                if f.get("color"):
                    text += f" ({f['color']})"
                cells.append(text or "✓")
            out.append(f"| `{name}` | {kind} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(fields_markdown(), end="")
