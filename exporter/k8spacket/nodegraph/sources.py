"""Where a graph's edges come from: this agent, every agent, or Prometheus.

Each source answers :meth:`GraphSource.edges` for a window with an
:class:`Answer` (an :class:`~.edges.EdgeSet` plus a one-line note for the
nodes' ``detail__source`` and a JSON-ready ``detail``), or raises
:class:`SourceError` (the API answers 503 with its message).
:meth:`GraphSource.health` says whether the source can serve now, and why not.

* :class:`LocalSource`: the agent's own :class:`~.local.LocalGraphStore`.
* :class:`AgentsSource`: asks every agent's ``/nodegraph/api/graph/edges`` in
  parallel (a timeout per peer) and *sums* the answers (exactly-once makes the
  sum right; upstream overwrote one node's answer with the next). Peers come
  from a callable (the DaemonSet's pods through the Kubernetes API, or a static
  list); peers that did not answer are named and counted in the answer.
* :class:`PrometheusSource`: PromQL over the exported counters and histograms.
  For every series it takes the value at ``to`` (``last_over_time`` over the
  window) minus the value at ``from`` (the last sample before it): a
  difference of two samples, so nothing is extrapolated. A series with no
  sample before ``from`` was born inside the window and counts from 0 (what
  ``increase()`` misses). A series that was reset inside the window
  (``resets() > 0``: an agent restart, a series dropped by its TTL) is read
  sample by sample and its increases are summed. Exact for traffic inside the
  window at scrape resolution.

HTTP goes through an injected ``get(url, timeout) -> (status, body)`` so tests
can hand in failures; the default is :func:`http_get` (urllib).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k8spacket.flows.record import UNKNOWN
from k8spacket.metrics.traffic import (
    CLOSED,
    CONNECTIONS,
    DURATION,
    DURATION_BUCKETS,
    HANDSHAKE,
    RECEIVED,
    SENT,
)
from k8spacket.nodegraph import edges as E
from k8spacket.nodegraph.edges import LAYOUT, EdgeSet, End
from k8spacket.nodegraph.local import LocalGraphStore

HttpGet = Callable[[str, float], tuple[int, bytes]]
#: the path every agent serves its local edges on (the agents source asks it)
EDGES_PATH = "/nodegraph/api/graph/edges"
#: how far before ``from`` Prometheus looks for a series' last sample (its lookback)
LOOKBACK = "5m"
#: series read sample by sample when reset inside the window, per family and query
MAX_RESET_SERIES = 50


#: why a peer's answer is missing (``k8spacket_graph_peer_errors_total{reason}``)
PEER_ERROR_REASONS: tuple[str, ...] = ("timeout", "unreachable", "http", "bad_answer")


class SourceError(OSError):
    """The source cannot answer now (the API answers 503 with this message).

    An ``OSError``: like a failed read, it says "try again later", and callers
    that treat I/O failures as unavailable (the ``/graph`` page) need nothing more.
    """


class _PeerError(SourceError):
    """One peer's answer is unusable (``reason`` is one of :data:`PEER_ERROR_REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _error_reason(e: BaseException) -> str:
    if isinstance(e, _PeerError):
        return e.reason
    if isinstance(e, TimeoutError | concurrent.futures.TimeoutError) or "timed out" in str(e):
        return "timeout"
    return "unreachable"


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status is returned, transport errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    if isinstance(e, TimeoutError | concurrent.futures.TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


@dataclass
class Answer:
    edges: EdgeSet
    note: str
    detail: dict[str, Any] = field(default_factory=dict)


class GraphSource(Protocol):
    name: str

    def edges(self, since: float, until: float) -> Answer: ...

    def health(self) -> tuple[bool, str]: ...


# ------------------------------------------------------------------ local
class LocalSource:
    """This agent's own edges."""

    name = "local"

    def __init__(self, store: LocalGraphStore, node: str = "") -> None:
        self.store = store
        self.node = node

    def edges(self, since: float, until: float) -> Answer:
        where = f" (node {self.node})" if self.node else ""
        return Answer(
            self.store.edges(since, until),
            f"local{where}",
            {"source": "local", "node": self.node, "bucket_seconds": self.store.bucket},
        )

    def health(self) -> tuple[bool, str]:
        return True, f"local store: {self.store.edge_count()} edges, window {self.store.window:g}s"


def local_edges_answer(store: LocalGraphStore, node: str, since: float, until: float) -> Any:
    """The JSON of ``/nodegraph/api/graph/edges`` (what :class:`AgentsSource` reads)."""
    return {
        "node": node,
        "from": since,
        "to": until,
        "layout": list(LAYOUT),
        "edges": store.edges(since, until).to_json(),
    }


# ------------------------------------------------------------------ agents
class AgentsSource:
    """Every agent's local edges, asked in parallel and summed."""

    name = "agents"

    def __init__(
        self,
        peers: Callable[[], list[str]],
        timeout: float = 2.0,
        get: HttpGet = http_get,
    ) -> None:
        self.peers = peers
        self.timeout = timeout
        self.get = get
        #: peer answers missing since start, by reason (``PEER_ERROR_REASONS``)
        self.errors: dict[str, int] = dict.fromkeys(PEER_ERROR_REASONS, 0)
        self._errors_lock = threading.Lock()

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    def error_counts(self) -> dict[str, int]:
        """A copy of :attr:`errors` (the ``k8spacket_graph_peer_errors_total`` source)."""
        with self._errors_lock:
            return dict(self.errors)

    def _peers(self) -> list[str]:
        try:
            peers = sorted(set(self.peers()))
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"agents: cannot list the agents: {_reason(e)}") from None
        if not peers:
            raise SourceError("agents: no agent found (graph.peers, or the DaemonSet's pods)")
        return peers

    def _ask(self, peer: str, since: float, until: float) -> EdgeSet:
        q = urllib.parse.urlencode({"from": f"{since * 1000:.3f}", "to": f"{until * 1000:.3f}"})
        status, body = self.get(f"http://{peer}{EDGES_PATH}?{q}", self.timeout)
        if status != 200:
            raise _PeerError("http", f"HTTP {status}")
        try:
            doc = json.loads(body)
            if doc.get("layout") != list(LAYOUT):
                raise _PeerError("bad_answer", "a different version (edge layout differs)")
            return EdgeSet.from_json(doc["edges"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _PeerError("bad_answer", f"bad answer: {e}") from None

    def edges(self, since: float, until: float) -> Answer:
        peers = self._peers()
        total = EdgeSet()
        missing: dict[str, str] = {}
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(peers)))
        try:
            futures = {pool.submit(self._ask, p, since, until): p for p in peers}
            done, not_done = concurrent.futures.wait(futures, timeout=self.timeout + 0.5)
            reasons: list[str] = []
            for fut in not_done:
                missing[futures[fut]] = "timed out"
                reasons.append("timeout")
            for fut in done:
                peer = futures[fut]
                try:
                    total.merge(fut.result())
                except Exception as e:
                    missing[peer] = _reason(e)
                    reasons.append(_error_reason(e))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        with self._errors_lock:
            for r in reasons:
                self.errors[r] += 1
        if len(missing) == len(peers):
            raise SourceError(
                "agents: no agent answered: "
                + "; ".join(f"{p}: {why}" for p, why in sorted(missing.items()))
            )
        answered = len(peers) - len(missing)
        note = f"agents: {answered} of {len(peers)} answered"
        if missing:
            note += "; missing " + ", ".join(sorted(missing))
        return Answer(
            total,
            note,
            {
                "source": "agents",
                "peers": len(peers),
                "answered": answered,
                "missing_count": len(missing),
                "missing": [{"peer": p, "reason": r} for p, r in sorted(missing.items())],
            },
        )

    def health(self) -> tuple[bool, str]:
        try:
            peers = self._peers()
        except SourceError as e:
            return False, str(e)
        return True, f"agents: {len(peers)} found"


def static_peers(peers: list[str], default_port: int) -> Callable[[], list[str]]:
    """A fixed peer list (``host`` or ``host:port``; IPv6 as ``[addr]:port``)."""
    out = []
    for p in peers:
        host_part = p.rsplit("]", 1)[-1]
        out.append(p if ":" in host_part else f"{p}:{default_port}")
    return lambda: list(out)


# ------------------------------------------------------------------ prometheus
#: (metric, sample suffix, where its increase goes)
_COUNTERS: tuple[tuple[str, str], ...] = (
    (SENT, "sent"),
    (RECEIVED, "received"),
    (CONNECTIONS, "connections"),
    (CLOSED + "{close='rst'}", "rst"),
    (DURATION + "_bucket", "duration_bucket"),
    (DURATION + "_sum", "duration_sum"),
    (HANDSHAKE + "_sum", "handshake_sum"),
    (HANDSHAKE + "_count", "handshake_count"),
)
_LE = {f"{b:g}": i for i, b in enumerate(DURATION_BUCKETS)} | {"+Inf": len(DURATION_BUCKETS)}


def _le_index(le: str) -> int | None:
    try:
        return _LE.get(f"{float(le):g}") if le != "+Inf" else _LE["+Inf"]
    except ValueError:
        return None


def _ends(m: Mapping[str, str]) -> tuple[End, End]:
    def end(side: str) -> End:
        kind = m.get(f"{side}_kind") or UNKNOWN
        wl = m.get(f"{side}_workload") or UNKNOWN
        return End(kind, m.get(f"{side}_namespace", ""), wl, m.get(f"{side}_pod") or wl)

    return end("src"), end("dst")


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class PrometheusSource:
    """The cluster's edges from PromQL over the exported counters and histograms."""

    name = "prometheus"

    def __init__(self, url: str, timeout: float = 5.0, get: HttpGet = http_get) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.get = get

    def _query(self, promql: str, at: float, deadline: float) -> list[dict[str, Any]]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"prometheus at {self.url}: timed out after {self.timeout:g}s")
        q = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        try:
            status, body = self.get(f"{self.url}/api/v1/query?{q}", left)
        except (OSError, ValueError) as e:
            raise SourceError(f"prometheus at {self.url}: {_reason(e)}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise SourceError(f"prometheus at {self.url}: HTTP {status}, not JSON") from None
        if status != 200 or not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error", "") if isinstance(doc, dict) else ""
            raise SourceError(f"prometheus at {self.url}: HTTP {status}: {err}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def _increases(
        self, selector: str, since: float, until: float, deadline: float
    ) -> list[tuple[dict[str, str], float]]:
        """(labels, increase inside (since, until]) of every series of ``selector``."""
        window = _duration(until - since)
        now = self._query(f"last_over_time({selector}[{window}])", until, deadline)
        base = self._query(f"last_over_time({selector}[{LOOKBACK}])", since, deadline)
        resets = self._query(f"resets({selector}[{window}]) > 0", until, deadline)

        def key(m: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
            return tuple(sorted(m.items()))

        base_of = {key(r["metric"]): float(r["value"][1]) for r in base}
        reset_keys = {key(r["metric"]) for r in resets[:MAX_RESET_SERIES]}
        out = []
        for r in now:
            labels = r["metric"]
            k = key(labels)
            value = float(r["value"][1])
            start = base_of.get(k, 0.0)
            if k in reset_keys:
                inc = self._sample_sum(selector, labels, start, since, until, deadline)
            elif value >= start:
                inc = value - start
            else:  # reset not caught by resets() (more than MAX_RESET_SERIES): from 0
                inc = value
            out.append((labels, inc))
        return out

    def _sample_sum(
        self,
        selector: str,
        labels: Mapping[str, str],
        start: float,
        since: float,
        until: float,
        deadline: float,
    ) -> float:
        name = selector.split("{", 1)[0]
        matchers = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
        rows = self._query(f"{name}{{{matchers}}}[{_duration(until - since)}]", until, deadline)
        total, prev = 0.0, start
        for _, raw in rows[0]["values"] if rows else []:
            v = float(raw)
            total += v - prev if v >= prev else v
            prev = v
        return total

    def edges(self, since: float, until: float) -> Answer:
        deadline = time.monotonic() + self.timeout
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(_COUNTERS))
        try:
            futures = [
                pool.submit(self._increases, sel, since, until, deadline) for sel, _ in _COUNTERS
            ]
            _, not_done = concurrent.futures.wait(futures, timeout=self.timeout)
            if not_done:
                raise SourceError(f"prometheus at {self.url}: timed out after {self.timeout:g}s")
            results = [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        out = EdgeSet()
        cumulative: dict[tuple[End, End], list[float]] = {}
        for (_, what), series in zip(_COUNTERS, results, strict=True):
            for labels, inc in series:
                src, dst = _ends(labels)
                st = out.stats(src, dst)
                v = st.values
                st.ports = E.with_detail(st.ports, labels.get("dst_port", ""))
                st.src_addresses = E.with_detail(st.src_addresses, labels.get("src_ip", ""))
                st.dst_addresses = E.with_detail(st.dst_addresses, labels.get("dst_ip", ""))
                st.dst_countries = E.with_detail(st.dst_countries, labels.get("dst_country", ""))
                if what == "sent":
                    v[E.SENT] += inc
                elif what == "received":
                    v[E.RECEIVED] += inc
                elif what == "connections":
                    v[E.CONNECTIONS] += inc
                    outcome = labels.get("outcome", "")
                    if outcome in E.FAILED_OUTCOMES:
                        v[E.FAILED] += inc
                    if outcome == "refused":
                        v[E.RESET] -= inc  # refused connections close by RST too
                elif what == "rst":
                    v[E.RESET] += inc
                elif what == "duration_bucket":
                    i = _le_index(labels.get("le", ""))
                    if i is not None:
                        cumulative.setdefault((src, dst), [0.0] * (len(DURATION_BUCKETS) + 1))[
                            i
                        ] += inc
                elif what == "duration_sum":
                    v[E.DURATION_SUM] += inc
                elif what == "handshake_sum":
                    v[E.HS_SUM] += inc
                else:
                    v[E.HS_COUNT] += inc
        for (src, dst), cum in cumulative.items():
            v = out.stats(src, dst).values
            prev = 0.0  # cumulative, never decreasing (increases are rounded per series)
            for i, c in enumerate(cum):
                prev = v[E.BUCKETS0 + i] = max(prev, c)
        for _, _, st in out:
            st.values[E.RESET] = max(0.0, st.values[E.RESET])
        return Answer(out, "prometheus", {"source": "prometheus", "url": self.url})

    def health(self) -> tuple[bool, str]:
        try:
            self._query("vector(1)", time.time(), time.monotonic() + self.timeout)
        except SourceError as e:
            return False, str(e)
        return True, f"prometheus at {self.url} answers"
