"""What a demo run saw, read from the running agents: URLs, graph answers, summary, picture.

Everything here reads the agents' own HTTP API (through the loopback
forwarders), so the summary and the exit picture say what a user of those
endpoints would see:

* :class:`Endpoints`: the agents' and Prometheus' URLs, the graph sources that
  show the whole cluster, and the URLs to print;
* :func:`graph_answers`: ``/api/graph/fields`` and ``/api/graph/data`` of each
  agent (``source=local``) and of the cluster-wide sources, over the run's window;
* :func:`summary`: the ``--summary`` document (pairs of the plan with the
  metrics' numbers, every edge, names, URLs, what the traffic generator did);
* :func:`write_picture`: the last picture of the whole graph, SVG and PNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k8spacket.demo import observe
from k8spacket.demo.geo import GeoFacts
from k8spacket.demo.plan import FLOWS, INTERNET, Flow, pairs
from k8spacket.demo.topology import Topology


@dataclass
class Endpoints:
    agents: dict[int, str]  # node → base URL here
    prometheus: str | None = None

    def cluster_sources(self) -> list[str]:
        """Graph sources that show the whole cluster (best first)."""
        return (["prometheus"] if self.prometheus else []) + ["agents"]

    def urls(self) -> dict[str, str]:
        first = self.agents[min(self.agents)]
        q = f"?source={self.cluster_sources()[0]}&window=60"  # rates over the last minute
        out = {"graph page": f"{first}/graph{q}"}
        for n, url in sorted(self.agents.items()):
            out[f"node{n} agent"] = f"{url}/metrics  {url}/api/graph/data  {url}/graph"
        if self.prometheus:
            out["prometheus"] = self.prometheus
        return out

    def scrapes(self) -> list[observe.Scrape]:
        return [observe.scrape(url) for _, url in sorted(self.agents.items())]

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, url in sorted(self.agents.items()):
            with contextlib.suppress(OSError, ValueError):
                out += observe.http_json(f"{url}/nodegraph/connections")
        return out


def graph_answers(ep: Endpoints, since: float, until: float) -> dict[str, Any]:
    """Node Graph answers for [since, until] (Unix seconds), keyed ``node1/bytes``,
    ``prometheus/connection``, ``agents/…`` (data) and ``fields/<stats>``; a failed
    request gives ``{"error": …}``.
    """
    window = f"from={int(since * 1000)}&to={int(until * 1000)}"
    out: dict[str, Any] = {}
    first = ep.agents[min(ep.agents)]

    def get(key: str, url: str) -> None:
        try:
            out[key] = observe.http_json(url)
        except (OSError, ValueError) as e:
            out[key] = {"error": str(e)}

    for stats in ("connection", "bytes"):
        get(f"fields/{stats}", f"{first}/api/graph/fields?stats-type={stats}")
        for n, url in sorted(ep.agents.items()):
            get(
                f"node{n}/{stats}", f"{url}/api/graph/data?stats-type={stats}&source=local&{window}"
            )
        for source in ep.cluster_sources():
            get(
                f"{source}/{stats}",
                f"{first}/api/graph/data?stats-type={stats}&source={source}&{window}",
            )
    return out


def cluster_graph(answers: dict[str, Any], stats: str, ep: Endpoints) -> dict[str, Any]:
    """The whole cluster's graph: a cluster-wide source's answer, else the agents' merged."""
    for source in ep.cluster_sources():
        doc = answers.get(f"{source}/{stats}")
        if isinstance(doc, dict) and doc.get("edges"):
            return doc
    nodes: dict[str, Any] = {}
    edges: dict[str, Any] = {}
    for n in sorted(ep.agents):
        doc = answers.get(f"node{n}/{stats}") or {}
        for node in doc.get("nodes") or []:
            nodes.setdefault(str(node.get("id")), node)
        for e in doc.get("edges") or []:
            edges.setdefault(str(e.get("id")), e)  # exactly-once: one agent per edge
    return {"nodes": list(nodes.values()), "edges": list(edges.values())}


def write_picture(answers: dict[str, Any], ep: Endpoints, svg_path: Path, title: str) -> list[Path]:
    """The whole graph as SVG at ``svg_path`` and PNG beside it (when ``dot`` can)."""
    from k8spacket.nodegraph import render

    def view(stats: str) -> render.View:
        fields = answers.get(f"fields/{stats}") or {}
        return ({} if "error" in fields else fields), cluster_graph(answers, stats, ep)

    dot_source = render.to_dot(view("connection"), view("bytes"), title=title)
    svg_path.write_bytes(render.render(dot_source, "svg"))
    written = [svg_path]
    with contextlib.suppress(RuntimeError, OSError):
        png = svg_path.with_suffix(".png")
        png.write_bytes(render.render(dot_source, "png"))
        written.append(png)
    return written


def _workload(topo: Topology, facts: GeoFacts, pod: str) -> tuple[str, str]:
    if pod == INTERNET:
        return "", facts.org
    p = topo.pod(pod)
    return p.namespace, p.workload


def summary(
    topo: Topology,
    ep: Endpoints,
    facts: GeoFacts,
    *,
    traffic: Callable[[], list[dict[str, object]]],
    batch_cycles: int,
    elapsed: float,
    answers: dict[str, Any],
    flows: tuple[Flow, ...] = FLOWS,
) -> dict[str, Any]:
    """The ``--summary`` document (docs/demo.md, "Options").

    ``traffic`` (what the generator did) is read after the agents' metrics, so
    every connection an agent counted was already attempted when it is read.
    """
    scrapes = ep.scrapes()
    edges = observe.edges_from_metrics(scrapes)
    inet = [r for r in ep.records() if r.get("dst") == topo.internet_ip]
    named = [r for r in inet if r.get("dst_org")]
    plan_pairs = []
    for client, server, port in pairs(flows):
        cns, cwl = _workload(topo, facts, client)
        sns, swl = _workload(topo, facts, server)
        match = [e for e in edges
                 if (e.src_namespace, e.src_workload) == (cns, cwl)
                 and (e.dst_namespace, e.dst_workload) == (sns, swl)
                 and e.dst_port == str(port)]  # fmt: skip
        plan_pairs.append(
            {
                "client": client,
                "server": server,
                "port": port,
                "src": f"{cns}/{cwl}" if cns else cwl,
                "dst": f"{sns}/{swl}" if sns else swl,
                "kinds": sorted({f.kind for f in flows
                                 if (f.client, f.server, f.port) == (client, server, port)}),
                "metrics": match[0].as_dict() if match else None,
            }
        )  # fmt: skip
    return {
        "prefix": topo.prefix,
        "elapsed_seconds": round(elapsed, 1),
        "urls": ep.urls(),
        "names": {
            "inventory": topo.inventory()["endpoints"],
            "internet": {
                "ip": topo.internet_ip,
                "port": 443,
                "org": facts.org,
                "country": facts.country,
                "network": facts.network,
                "data": facts.source,
                "records": len(inet),
                "records_named": len(named),
                "record_org": named[-1].get("dst_org") if named else "",
                "record_country": named[-1].get("dst_country") if named else "",
            },
        },
        "pairs": plan_pairs,
        "edges": [e.as_dict() for e in edges],
        "traffic": traffic(),
        "batch_cycles": batch_cycles,
        "drops": observe.drops(scrapes),
        "not_reported": sum(s.total("k8spacket_records_not_reported_total") for s in scrapes),
        "graph": answers,
    }
