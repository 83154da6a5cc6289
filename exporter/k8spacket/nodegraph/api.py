"""The Node Graph API's HTTP answers: paths, status codes, bodies.

:class:`GraphAPI` turns (path, raw query string) into (status, content type,
body) for the agent's HTTP server, on both path families (docs/design.md, "HTTP"):

==================================  =============================================
``/``, ``/nodegraph``               index of every endpoint (JSON)
``…/api/health``                    200 when the configured source can serve now,
                                    else 503; the body says why
``…/api/graph/fields``              field declarations of the query's view
``…/api/graph/data``                ``{"nodes": [...], "edges": [...], "detail": {...}}``
``…/api/graph/edges``               this agent's local edges, raw (the ``agents``
                                    source reads it from every agent)
==================================  =============================================

(``…`` is empty or ``/nodegraph``.) A bad query is a 400 with
``{"error", "parameter"}``; a source that cannot answer is a 503 with
``{"error"}``. The data, fields and edges answers are plain functions too
(:meth:`GraphAPI.graph` and :func:`build_graph`), for the ``/graph`` page.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from k8spacket.nodegraph.build import Data, Fields, build_graph, fields_for, graph_json
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.query import GraphQuery, QueryError, parse_query
from k8spacket.nodegraph.sources import GraphSource, SourceError, local_edges_answer

log = logging.getLogger(__name__)

JSON = "application/json"
Response = tuple[int, str, bytes]
#: (raw query string) → response
RawRoute = Callable[[str], Response]
PREFIXES = ("", "/nodegraph")

ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("/metrics", "Prometheus exposition"),
    ("/healthz", "liveness"),
    ("/readyz", "readiness (the body says which condition failed)"),
    ("/api/health", "200 when the graph can be served (the Node Graph API datasource's test)"),
    ("/api/graph/fields", "field declarations of the Node Graph API datasource"),
    ("/api/graph/data", "nodes and edges of the graph"),
    ("/api/graph/edges", "this agent's local edges (what the agents source sums)"),
    ("/nodegraph/api/health", "same as /api/health"),
    ("/nodegraph/api/graph/fields", "same as /api/graph/fields"),
    ("/nodegraph/api/graph/data", "same as /api/graph/data"),
    ("/nodegraph/api/graph/edges", "same as /api/graph/edges"),
    ("/nodegraph/connections", "recent connection records (JSON array)"),
    ("/graph", "topology page (SVG) for people without Grafana"),
)
QUERY_HELP = (
    "stats-type=connection|bytes|duration, level=workload|pod|namespace, "
    "source=local|agents|prometheus, namespace=REGEXP (whole namespace), "
    "include=REGEXP, exclude=REGEXP (searched), from=MS, to=MS (Unix milliseconds; "
    "default the last 15 minutes). Write & and # in values as %26 and %23."
)


_gc_lock = threading.Lock()
_gc_holders = 0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while an answer is built.

    An answer allocates tens of thousands of small acyclic objects (rows, lists),
    which trigger full collections over the whole heap: measured, about a third
    of the answer's time for 10,000 edges (``bench/nodegraph_bench.py``).
    Reference counting still frees everything; collection resumes when the last
    concurrent answer is done (a counter, so overlapping requests are safe).
    """
    global _gc_holders
    with _gc_lock:
        _gc_holders += 1
        if _gc_holders == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.enable()


def _json(status: int, doc: Any) -> Response:
    return status, JSON, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class GraphAPI:
    """The graph endpoints over a set of sources (one of them the default)."""

    def __init__(
        self,
        sources: Mapping[str, GraphSource],
        default: str,
        store: LocalGraphStore | None = None,
        *,
        node: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if default not in sources:
            raise ValueError(f"default graph source {default!r} is not configured")
        self.sources = dict(sources)
        self.default = default
        self.store = store
        self.node = node
        self._clock = clock

    # ------------------------------------------------------------ functions
    def query(self, raw: str) -> GraphQuery:
        """Parse ``raw``; raises :class:`QueryError` (also for a source not configured)."""
        q = parse_query(raw, self._clock())
        if q.source is not None and q.source not in self.sources:
            raise QueryError(
                "source",
                f"{q.source} is not configured here (configured: {', '.join(sorted(self.sources))})",
            )
        return q

    def graph(self, raw: str) -> tuple[Fields, Data]:
        """(fields, data) of a raw query; raises :class:`QueryError` or :class:`SourceError`."""
        q = self.query(raw)
        source = self.sources[q.source or self.default]
        answer = source.edges(q.since, q.until)
        fields, data = build_graph(answer.edges, q, answer.note)
        data["detail"] = {**answer.detail, "from": q.since, "to": q.until}
        return fields, data

    # ------------------------------------------------------------ responses
    def routes(self) -> dict[str, RawRoute]:
        """path → handler, for :class:`~k8spacket.server.AgentHTTPServer`'s ``raw_routes``."""
        out: dict[str, RawRoute] = {"/": self.index, "/nodegraph": self.index}
        for prefix in PREFIXES:
            out[f"{prefix}/api/health"] = self.health
            out[f"{prefix}/api/graph/fields"] = self.fields
            out[f"{prefix}/api/graph/data"] = self.data
            out[f"{prefix}/api/graph/edges"] = self.edges
        return out

    def index(self, raw: str) -> Response:
        return _json(
            200,
            {
                "name": "k8spacket",
                "endpoints": [{"path": p, "answer": a} for p, a in ENDPOINTS],
                "graph_query": QUERY_HELP,
                "graph_source": self.default,
                "graph_sources": sorted(self.sources),
            },
        )

    def health(self, raw: str) -> Response:
        name = self.default
        try:
            q = self.query(raw) if raw else None
        except QueryError as e:
            return _json(400, e.as_json())
        if q is not None and q.source:
            name = q.source
        ok, why = self.sources[name].health()
        return _json(
            200 if ok else 503,
            {"status": "ok" if ok else "unavailable", "source": name, "message": why},
        )

    def fields(self, raw: str) -> Response:
        try:
            q = self.query(raw)
        except QueryError as e:
            return _json(400, e.as_json())
        return _json(200, fields_for(q.stats_type))

    def data(self, raw: str) -> Response:
        try:
            q = self.query(raw)
            source = self.sources[q.source or self.default]
            # the pause covers CPU-bound work only, never a wait on the network;
            # one pause for the local source (a second would collect its edges)
            local = source.name == "local"
            with _gc_paused() if local else contextlib.nullcontext():
                answer = source.edges(q.since, q.until)
                with contextlib.nullcontext() if local else _gc_paused():
                    detail = {**answer.detail, "from": q.since, "to": q.until}
                    return 200, JSON, graph_json(answer.edges, q, answer.note, detail)
        except QueryError as e:
            return _json(400, e.as_json())
        except SourceError as e:
            log.warning("graph: %s", e)
            return _json(503, {"error": str(e)})

    def edges(self, raw: str) -> Response:
        if self.store is None:
            return _json(404, {"error": "this process has no local graph store"})
        try:
            q = self.query(raw)
        except QueryError as e:
            return _json(400, e.as_json())
        return _json(200, local_edges_answer(self.store, self.node, q.since, q.until))


__all__ = ["GraphAPI", "build_graph"]


def graph_api_from_settings(
    settings: Any,
    store: LocalGraphStore,
    *,
    peers: Callable[[], list[str]] | None = None,
    in_cluster: bool = False,
    node: str = "",
    clock: Callable[[], float] = time.time,
) -> GraphAPI:
    """The sources the settings configure and the default ``http.graphSource`` picks.

    ``settings`` is a :class:`k8spacket.config.Settings`; ``peers`` lists the agents
    (the DaemonSet's pods) when running in a cluster. A static ``graph.peers`` list
    wins over it. Raises ``ConfigError`` when the chosen default cannot work.
    """
    from k8spacket.config import ConfigError, resolve_graph_source
    from k8spacket.nodegraph.sources import (
        AgentsSource,
        LocalSource,
        PrometheusSource,
        static_peers,
    )

    g = settings.graph
    sources: dict[str, GraphSource] = {"local": LocalSource(store, node)}
    port = g.peer_port or settings.http.port
    if g.peers:
        peers = static_peers(g.peers, port)
    if peers is not None:
        sources["agents"] = AgentsSource(peers, timeout=g.peer_timeout)
    if settings.http.prometheus_url:
        sources["prometheus"] = PrometheusSource(
            settings.http.prometheus_url, timeout=g.prometheus_timeout
        )
    default = resolve_graph_source(settings, in_cluster)
    if default not in sources:
        raise ConfigError(
            f"http.graphSource: {default} needs "
            + ("graph.peers or a Kubernetes cluster" if default == "agents" else "its settings")
        )
    return GraphAPI(sources, default, store, node=node, clock=clock)
