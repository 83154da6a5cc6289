"""The connection record: what the tracker emits and every consumer reads.

Field names and meanings are a contract (docs/design.md, "Connection records");
JSON lines, the Node Graph store and the metrics all use them verbatim. An end
nothing named is spelled the same everywhere: ``*_kind`` and ``*_workload``
``unknown`` (:func:`spelled_kind`, :func:`spelled_workload`), empty name and
namespace; inside the process ``""`` means "not named yet". Byte
counts are deltas since the previous record of the same connection, so summing a
connection's records gives its totals. Interim records (connection still open)
have ``close`` set to ``None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Outcome = Literal["established", "refused", "unanswered", "midstream"]
Close = Literal["fin", "rst", "idle"]
Reporter = Literal["client", "server"]
Kind = Literal["pod", "service", "node", "host", "external", "unknown", ""]

#: The closed set of ``*_kind`` values (plus ``""`` while nothing named the address).
KINDS: tuple[str, ...] = ("pod", "service", "node", "host", "external", "unknown")
_KIND_SET = frozenset(KINDS)
#: The ``*_kind`` and ``*_workload`` of an end nothing named (records and metrics).
UNKNOWN = "unknown"


def spelled_kind(kind: str, org: str) -> str:
    """The ``*_kind`` an end shows: its kind, ``external`` when only an organisation
    is known, else ``unknown``."""
    if kind in _KIND_SET:
        return kind
    return "external" if org else UNKNOWN


def spelled_workload(workload: str, kind: str, org: str) -> str:
    """The ``*_workload`` an end shows (``kind`` as spelled): its workload, the
    organisation of an external end, else ``unknown``."""
    if workload:
        return workload
    if kind == "external" and org:
        return org
    return UNKNOWN


OUTCOMES: tuple[str, ...] = ("established", "refused", "unanswered", "midstream")
CLOSES: tuple[str, ...] = ("fin", "rst", "idle")


@dataclasses.dataclass(slots=True)
class ConnectionRecord:
    """One report about one TCP connection (final, or interim while it stays open)."""

    src: str
    src_port: int
    dst: str
    dst_port: int
    bytes_sent: int
    bytes_received: int
    handshake_seconds: float | None
    duration_seconds: float
    outcome: Outcome
    close: Close | None
    start: float
    end: float
    reporter: Reporter | None = None
    src_name: str = ""
    src_namespace: str = ""
    src_workload: str = ""
    src_kind: Kind = ""
    dst_name: str = ""
    dst_namespace: str = ""
    dst_workload: str = ""
    dst_kind: Kind = ""
    #: the Service the client reached the server through (kube-proxy DNAT), else empty
    dst_service: str = ""
    dst_org: str = ""
    dst_country: str = ""
    src_org: str = ""
    src_country: str = ""
    #: True for the first record of a connection (counts it once in ``connections_total``).
    first: bool = True

    @property
    def final(self) -> bool:
        """True when the connection is over (closed, refused or flushed idle)."""
        return self.close is not None

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict with the contract's field names (unnamed
        ends spelled ``unknown``, as in the metrics)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kind = d["src_kind"] = spelled_kind(self.src_kind, self.src_org)
        d["src_workload"] = spelled_workload(self.src_workload, kind, self.src_org)
        kind = d["dst_kind"] = spelled_kind(self.dst_kind, self.dst_org)
        d["dst_workload"] = spelled_workload(self.dst_workload, kind, self.dst_org)
        return d


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ConnectionRecord))
