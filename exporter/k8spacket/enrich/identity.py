"""Who an address is: the ``Identity`` type and the resolver chain that names records.

A *resolver* answers ``lookup(ip, port)`` with an :class:`Identity` or ``None``
when it does not know the address. Sources plug in behind that one interface:
the Kubernetes watch cache (``enrich.k8s``), the inventory file
(``enrich.inventory``) and, later, external naming (GeoIP/whois). A
:class:`ResolverChain` asks them in order; the first answer wins.

``port`` is the port the address *serves* on (the record's ``dst_port`` for the
server end). Sources use it to tell a hostNetwork pod from its node, which share
one address; the client end is looked up with ``port=None`` because its port is
ephemeral and says nothing about who it is.

:func:`name_record` fills ``src_*``/``dst_*`` identity fields of a connection
record in place (``name``, ``namespace``, ``workload``, ``kind``). It leaves
``*_org``/``*_country`` to the external enrichers. An end that no source names
gets kind ``unknown`` unless an earlier step already set a kind. Limits: naming
happens once per record (never per packet); a record keeps the name it got
when it was made, even if the address is later reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol, runtime_checkable

from k8spacket.flows.record import KINDS, ConnectionRecord, Kind

__all__ = [
    "KINDS",
    "Identity",
    "Resolver",
    "ResolverChain",
    "name_record",
]


class Identity(NamedTuple):
    """The name of one end of a connection (immutable, cheap to share)."""

    name: str
    namespace: str
    workload: str
    kind: Kind


@runtime_checkable
class Resolver(Protocol):
    """Anything that can name an address (and optionally the port it serves on)."""

    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        """The identity of ``ip`` (serving ``port``), or ``None`` when unknown."""
        ...


def name_record(rec: ConnectionRecord, resolver: Resolver) -> None:
    """Fill ``rec``'s ``src_*`` and ``dst_*`` identity fields from ``resolver``, in place."""
    src = resolver.lookup(rec.src, None)
    if src is not None:
        rec.src_name, rec.src_namespace, rec.src_workload, rec.src_kind = src
    elif not rec.src_kind:
        rec.src_kind = "unknown"
    dst = resolver.lookup(rec.dst, rec.dst_port)
    if dst is not None:
        rec.dst_name, rec.dst_namespace, rec.dst_workload, rec.dst_kind = dst
    elif not rec.dst_kind:
        rec.dst_kind = "unknown"


class ResolverChain:
    """Several resolvers asked in order (e.g. the k8s cache, then the inventory)."""

    __slots__ = ("_lookups", "resolvers")

    def __init__(self, resolvers: Iterable[Resolver]) -> None:
        self.resolvers: tuple[Resolver, ...] = tuple(resolvers)
        self._lookups = tuple(r.lookup for r in self.resolvers)

    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        for lookup in self._lookups:
            found = lookup(ip, port)
            if found is not None:
                return found
        return None

    def name_record(self, rec: ConnectionRecord) -> None:
        """Fill ``rec``'s identity fields in place (see :func:`name_record`)."""
        name_record(rec, self)
