"""The agent's HTTP server: metrics, health, readiness, connection records.

One port (docs/design.md, "HTTP"), served by the standard library's threading
server so a slow scrape never blocks capture (the capture runs on its own
thread and never touches this module). Paths:

* ``/metrics``: Prometheus exposition of the registry handed in;
* ``/healthz``: 200 while the process serves; ``/readyz``: 200 when
  ``ready()`` says so (capture running, caches synced), else 503;
* ``/api/health``, ``/nodegraph/api/health``: 200 (the Node Graph datasource's check);
* ``/nodegraph/connections``: JSON array of recent records from the
  :class:`~k8spacket.nodegraph.store.ConnectionStore`. Optional query:
  ``from``/``to`` (Unix milliseconds, on the record's ``end``), ``namespace``,
  ``include``/``exclude`` (regexps on ``src_name``/``dst_name``/addresses; a bad
  regexp is a 400 with a JSON error).

Other paths (the graph fields/data answers) can be added with ``routes``;
``graph`` (a callable turning a Node Graph query into its answer) adds the
topology page ``/graph`` (``nodegraph/render.py``).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from k8spacket.metrics.http import CollectorRegistry, metrics_response
from k8spacket.nodegraph.render import GraphBuilder, graph_page_route
from k8spacket.nodegraph.store import ConnectionStore, Record

log = logging.getLogger(__name__)

#: path → handler(query) → (status, content type, body)
Route = Callable[[Mapping[str, list[str]]], tuple[int, str, bytes]]
JSON = "application/json"


class ListenError(OSError):
    """The HTTP port cannot be bound (one line: the address and the reason)."""


class QueryError(ValueError):
    """A bad query parameter (answered with 400)."""


def _json(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, JSON, json.dumps(doc, separators=(",", ":")).encode()


def _regexp(query: Mapping[str, list[str]], name: str) -> re.Pattern[str] | None:
    values = query.get(name)
    if not values or not values[0]:
        return None
    try:
        return re.compile(values[0])
    except re.error as e:
        raise QueryError(f"{name}: bad regexp {values[0]!r}: {e}") from None


def _millis(query: Mapping[str, list[str]], name: str) -> float | None:
    values = query.get(name)
    if not values or not values[0]:
        return None
    try:
        return float(values[0]) / 1000.0
    except ValueError:
        raise QueryError(f"{name}: expected Unix milliseconds, got {values[0]!r}") from None


def connections_route(store: ConnectionStore) -> Route:
    def route(query: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
        try:
            since, until = _millis(query, "from"), _millis(query, "to")
            include, exclude = _regexp(query, "include"), _regexp(query, "exclude")
        except QueryError as e:
            return _json(400, {"error": str(e)})
        namespace = (query.get("namespace") or [""])[0]

        def where(r: Record) -> bool:
            if namespace and namespace not in (r["src_namespace"], r["dst_namespace"]):
                return False
            names = (r["src_name"], r["dst_name"], r["src"], r["dst"])
            if include is not None and not any(include.search(n) for n in names if n):
                return False
            return not (exclude is not None and any(exclude.search(n) for n in names if n))

        return _json(200, store.records(since, until, where))

    return route


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class AgentHTTPServer:
    """The HTTP endpoint of the agent, on a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        store: ConnectionStore,
        ready: Callable[[], bool],
        routes: Mapping[str, Route] | None = None,
        graph: GraphBuilder | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        health: Route = lambda q: _json(200, {"status": "ok"})  # noqa: E731
        self.routes: dict[str, Route] = {
            "/nodegraph/connections": connections_route(store),
            "/api/health": health,
            "/nodegraph/api/health": health,
            **(routes or {}),
        }
        #: the topology page, drawn from the graph builder's answer (a raw-query route)
        self.graph_page = graph_page_route(graph) if graph is not None else None
        handler = self._handler_class()
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server_class((host, port), handler)
        except OSError as e:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                path = url.path.rstrip("/") or "/"
                if path == "/metrics":
                    self._send(200, *metrics_response(server.registry, self.headers.get("Accept")))
                elif path == "/healthz":
                    self._send(200, "text/plain; charset=utf-8", b"ok\n")
                elif path == "/readyz":
                    ok = server.ready()
                    self._send(
                        200 if ok else 503,
                        "text/plain; charset=utf-8",
                        b"ready\n" if ok else b"not ready\n",
                    )
                elif path == "/graph" and server.graph_page is not None:
                    self._send(*server.graph_page(url.query))
                elif path in server.routes:
                    status, ctype, body = server.routes[path](parse_qs(url.query))
                    self._send(status, ctype, body)
                else:
                    self._send(404, JSON, b'{"error":"not found"}')

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if ctype == JSON:
                    self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        return Handler
