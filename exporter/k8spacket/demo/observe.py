"""What the agents say, read over HTTP and summed: edges, bytes, outcomes, drops.

:func:`scrape` reads one agent's ``/metrics``; :func:`edges_from_metrics` sums the
traffic families of several agents per edge (source workload → destination
workload:port). Summing is right because of the exactly-once rule: each
connection is reported by one agent only. The live view and the summary both
use this, so what the terminal shows is what the summary file says.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from k8spacket.metrics.readback import parse_samples

EdgeKey = tuple[str, str, str, str, str, str, str]  # src ns, wl, kind, dst ns, wl, kind, port


@dataclass
class Edge:
    src_namespace: str
    src_workload: str
    src_kind: str
    dst_namespace: str
    dst_workload: str
    dst_kind: str
    dst_port: str
    dst_country: str = ""
    bytes_sent: float = 0.0
    bytes_received: float = 0.0
    connections: dict[str, float] = field(default_factory=dict)  # outcome → count
    closed: dict[str, float] = field(default_factory=dict)  # close → count
    open: float = 0.0

    @property
    def src(self) -> str:
        return (
            f"{self.src_namespace}/{self.src_workload}" if self.src_namespace else self.src_workload
        )

    @property
    def dst(self) -> str:
        return (
            f"{self.dst_namespace}/{self.dst_workload}" if self.dst_namespace else self.dst_workload
        )

    @property
    def bytes(self) -> float:
        return self.bytes_sent + self.bytes_received

    @property
    def total_connections(self) -> float:
        return sum(self.connections.values())

    @property
    def failures(self) -> float:
        return self.connections.get("refused", 0.0) + self.connections.get("unanswered", 0.0)

    @property
    def resets(self) -> float:
        """Established connections that ended with an RST (a refused one also closes so)."""
        return max(0.0, self.closed.get("rst", 0.0) - self.connections.get("refused", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "src_namespace": self.src_namespace,
            "src_workload": self.src_workload,
            "src_kind": self.src_kind,
            "dst_namespace": self.dst_namespace,
            "dst_workload": self.dst_workload,
            "dst_kind": self.dst_kind,
            "dst_port": self.dst_port,
            "dst_country": self.dst_country,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "connections": dict(sorted(self.connections.items())),
            "closed": dict(sorted(self.closed.items())),
            "open": self.open,
        }


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); an HTTP error status is returned, a network error raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def http_json(url: str, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise OSError(f"{url}: HTTP {status}: {body[:200].decode(errors='replace')}")
    return json.loads(body)


@dataclass
class Scrape:
    samples: list[tuple[str, dict[str, str], float]]

    def total(self, name: str, **match: str) -> float:
        return sum(
            v
            for n, labels, v in self.samples
            if n == name and all(labels.get(k) == w for k, w in match.items())
        )


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    status, body = http_get(url.rstrip("/") + "/metrics", timeout)
    if status != 200:
        raise OSError(f"{url}/metrics: HTTP {status}")
    return Scrape(parse_samples(body.decode()))


_EDGE_LABELS = ("src_namespace", "src_workload", "src_kind", "dst_namespace", "dst_workload",
                "dst_kind", "dst_port")  # fmt: skip


def edges_from_metrics(scrapes: Iterable[Scrape]) -> list[Edge]:
    """Traffic per edge, summed over agents, biggest first."""
    edges: dict[EdgeKey, Edge] = {}

    def edge(labels: dict[str, str]) -> Edge:
        key: EdgeKey = tuple(labels.get(k, "") for k in _EDGE_LABELS)  # type: ignore[assignment]
        e = edges.get(key)
        if e is None:
            e = edges[key] = Edge(*key)
        if labels.get("dst_country"):
            e.dst_country = labels["dst_country"]
        return e

    for sc in scrapes:
        for name, labels, value in sc.samples:
            if name == "k8spacket_tcp_sent_bytes_total":
                edge(labels).bytes_sent += value
            elif name == "k8spacket_tcp_received_bytes_total":
                edge(labels).bytes_received += value
            elif name == "k8spacket_tcp_connections_total":
                c = edge(labels).connections
                c[labels.get("outcome", "")] = c.get(labels.get("outcome", ""), 0.0) + value
            elif name == "k8spacket_tcp_connections_closed_total":
                c = edge(labels).closed
                c[labels.get("close", "")] = c.get(labels.get("close", ""), 0.0) + value
            elif name == "k8spacket_tcp_open_connections":
                edge(labels).open += value
    return sorted(edges.values(), key=lambda e: -e.bytes)


#: self-metrics that count something lost or left out, shown as "drops"
#: (name, label filter): idle evictions are normal (a pod deleted mid-connection), a full table is not
DROP_FAMILIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("k8spacket_capture_drops_total", {}),
    ("k8spacket_publish_dropped_total", {}),
    ("k8spacket_series_overflow_total", {}),
    ("k8spacket_flows_evicted_total", {"reason": "capacity"}),
)


def drops(scrapes: Iterable[Scrape]) -> dict[str, float]:
    out: dict[str, float] = {}
    for sc in scrapes:
        for name, match in DROP_FAMILIES:
            key = name + "".join(f'{{{k}="{v}"}}' for k, v in match.items())
            out[key] = out.get(key, 0.0) + sc.total(name, **match)
    return out
