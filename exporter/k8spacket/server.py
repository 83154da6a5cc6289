"""The agent's HTTP server: metrics, health, readiness, connection records.

One port (docs/design.md, "HTTP"), served by the standard library's threading
server so a slow scrape never blocks capture (the capture runs on its own
thread and never touches this module). Paths:

* ``/metrics``: what ``metrics(accept, accept_encoding)`` answers (the
  metrics layer negotiates the format: text 0.0.4 or OpenMetrics, gzip);
  this module does not import prometheus_client;
* ``/healthz``: 200 ``ok`` while ``liveness()`` returns ``None``, else 503 with
  its reason (a supervised thread the supervisor gave up on);
* ``/readyz``: 200 ``ready`` when ``ready()`` returns no failed condition,
  else 503 ``not ready: <condition>; <condition>…`` (capture running, no
  missing ``CAP_NET_RAW``, interfaces listed, caches synced);
* ``/api/health``, ``/nodegraph/api/health``: 200 (a fallback; the graph API's raw route,
  which answers 503 when its source cannot serve, replaces it);
* ``/nodegraph/connections``: JSON array of recent records from the
  :class:`~k8spacket.nodegraph.store.ConnectionStore`. Optional query:
  ``from``/``to`` (Unix milliseconds, on the record's ``end``), ``namespace``,
  ``include``/``exclude`` (regexps on ``src_name``/``dst_name``/addresses; a bad
  regexp is a 400 with a JSON error).

Other paths are added with ``routes`` (handlers of the parsed query) or
``raw_routes`` (handlers of the raw query string: the Node Graph API's paths,
:meth:`k8spacket.nodegraph.api.GraphAPI.routes`, whose regexps must keep a
``+``); a raw route wins over a route of the same path.
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

from k8spacket.nodegraph.store import ConnectionStore, Record

log = logging.getLogger(__name__)

#: path → handler(query) → (status, content type, body)
Route = Callable[[Mapping[str, list[str]]], tuple[int, str, bytes]]
#: path → handler(raw query string) → (status, content type, body)
RawRoute = Callable[[str], tuple[int, str, bytes]]
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
#: (Accept, Accept-Encoding) → (body chunks, headers)
Scrape = Callable[[str, str], tuple[list[bytes], list[tuple[str, str]]]]


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
        metrics: Scrape,
        store: ConnectionStore,
        ready: Callable[[], list[str]],
        routes: Mapping[str, Route] | None = None,
        raw_routes: Mapping[str, RawRoute] | None = None,
        liveness: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.liveness = liveness
        health: Route = lambda q: _json(200, {"status": "ok"})  # noqa: E731
        self.routes: dict[str, Route] = {
            "/nodegraph/connections": connections_route(store),
            "/api/health": health,
            "/nodegraph/api/health": health,
            **(routes or {}),
        }
        self.raw_routes: dict[str, RawRoute] = dict(raw_routes or {})
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
                    chunks, headers = server.metrics(
                        self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
                    )
                    self._send(200, "", chunks, headers)
                elif path == "/healthz":
                    problem = server.liveness()
                    if problem is None:
                        self._send(200, TEXT, b"ok\n")
                    else:
                        self._send(503, TEXT, f"unhealthy: {problem}\n".encode())
                elif path == "/readyz":
                    failed = server.ready()
                    if not failed:
                        self._send(200, TEXT, b"ready\n")
                    else:
                        self._send(503, TEXT, f"not ready: {'; '.join(failed)}\n".encode())
                elif path in server.raw_routes or path in server.routes:
                    try:
                        if path in server.raw_routes:
                            status, ctype, body = server.raw_routes[path](url.query)
                        else:
                            status, ctype, body = server.routes[path](parse_qs(url.query))
                    except Exception:  # a bug: log it, answer 500, keep serving
                        log.exception("http: %s failed", path)
                        status, ctype, body = 500, JSON, b'{"error":"internal error (see log)"}'
                    self._send(status, ctype, body)
                else:
                    self._send(404, JSON, b'{"error":"not found"}')

            def _send(
                self,
                status: int,
                ctype: str,
                body: bytes | list[bytes],
                headers: list[tuple[str, str]] | None = None,
            ) -> None:
                chunks = [body] if isinstance(body, bytes) else body
                self.send_response(status)
                for name, value in headers or [("Content-Type", ctype)]:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
                if ctype == JSON:
                    self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        return Handler
