"""The demo's traffic plan: who calls whom, on which port, how often, and how it ends.

Each :class:`Flow` is carried out by one thread in the client pod's namespace
(:mod:`~k8spacket.demo.traffic`). Kinds:

* ``requests``: a short HTTP-like exchange every ``period`` seconds (connect, one
  request, a reply of ``reply`` bytes, FIN);
* ``long``: one connection kept open for the whole run (a database pool), a
  query every ``period``: it shows up in the metrics through interim records
  long before it closes;
* ``refused``: a connection attempt to a port nothing listens on (answered by RST);
* ``reset``: a request the server answers by aborting the connection (RST);
* ``burst``: ``count`` short requests back to back every ``period``.

The ``batch`` pod comes and goes (:data:`BATCH`): it is created, runs its flows
for ``life`` seconds and is deleted, every ``every`` seconds.

The plan is deliberately light: a few connections per second in all, so the
demo, two agents and Prometheus stay well within two cores.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERNET = "inet"


@dataclass(frozen=True)
class Flow:
    client: str  # pod short name
    server: str  # pod short name or INTERNET
    port: int
    kind: str  # requests | long | refused | reset | burst
    period: float
    reply: tuple[int, int] = (200, 2000)  # reply size range, bytes
    count: int = 1
    start: float = 0.5  # seconds after the traffic starts
    what: str = ""

    @property
    def label(self) -> str:
        return f"{self.client} → {self.server}:{self.port} ({self.kind})"


@dataclass(frozen=True)
class BatchSchedule:
    pod: str
    first: float
    life: float
    every: float


FLOWS: tuple[Flow, ...] = (
    Flow("web", "api", 8080, "requests", 0.5, (2_000, 20_000), what="page API calls, cross-node"),
    Flow("web", "api", 8081, "refused", 3.0, start=1.0, what="a port nothing listens on"),
    Flow("web", "cache", 6379, "requests", 1.0, (100, 400), what="session lookups, same node"),
    Flow("web", "cache", 6379, "reset", 4.0, start=2.0, what="the cache aborts (RST)"),
    Flow("api", "db", 5432, "long", 1.0, (500, 3_000), start=0.2, what="a pooled connection"),
    Flow(
        "api", "cache", 6379, "burst", 10.0, (100, 300), count=20, start=3.0, what="cache warm-up"
    ),
    Flow(
        "api", INTERNET, 443, "requests", 2.0, (3_000, 8_000), start=1.5, what="webhooks to GitHub"
    ),
    Flow("batch", "db", 5432, "requests", 0.5, (5_000, 50_000), what="a report job reading rows"),
)

BATCH = BatchSchedule("batch", first=2.0, life=9.0, every=20.0)


def servers(flows: tuple[Flow, ...] = FLOWS) -> list[tuple[str, int]]:
    """(pod, port) pairs that must listen (every flow's server, except refused ports)."""
    seen: dict[tuple[str, int], None] = {}
    for f in flows:
        if f.kind != "refused":
            seen[(f.server, f.port)] = None
    return list(seen)


def pairs(flows: tuple[Flow, ...] = FLOWS) -> list[tuple[str, str, int]]:
    """(client, server, port) of every flow, once each."""
    return list(dict.fromkeys((f.client, f.server, f.port) for f in flows))
