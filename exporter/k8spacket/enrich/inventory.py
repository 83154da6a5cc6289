"""Naming addresses without Kubernetes: the inventory file.

For ``k8spacket replay``, the demo and plain Linux hosts, names come from a
YAML file (docs/design.md, "Inventory file")::

    endpoints:
      - cidr: 10.244.1.5/32        # an address or a CIDR; the longest prefix wins
        namespace: shop
        name: cart-7d9f4-x2x
        workload: cart
        kind: pod                  # pod | service | node | host | external

``name`` and ``kind`` are required; ``namespace`` defaults to empty and
``workload`` to ``name`` (a bare pod is its own workload). Unknown keys,
duplicate CIDRs, CIDRs with host bits set and kinds outside the list are
errors: :class:`InventoryError` carries one line naming the file, the entry and
what is wrong.

Lookups are a dict hit for single addresses and, for networks, one dict probe
per distinct prefix length present (longest first), so the cost does not grow
with the number of entries. Ports are ignored: an inventory names addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from k8spacket.enrich.identity import Identity, name_record
from k8spacket.flows.record import ConnectionRecord, Kind

#: kinds an inventory entry may declare (``unknown`` is what *no* entry means)
INVENTORY_KINDS: tuple[str, ...] = ("pod", "service", "node", "host", "external")
_KEYS = frozenset({"cidr", "namespace", "name", "workload", "kind"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InventoryError(Exception):
    """An inventory file the user must fix (the message is one line)."""


class Inventory:
    """Longest-prefix naming of addresses from a list of (network, identity)."""

    __slots__ = ("_hosts", "_tables", "entries")

    def __init__(self, entries: Iterable[tuple[Network, Identity]] = ()) -> None:
        self.entries: dict[Network, Identity] = {}
        #: canonical address text -> identity, for /32 and /128 entries
        self._hosts: dict[str, Identity] = {}
        #: per family (4, 6): [(prefix length, mask, {network int: identity})], longest first
        self._tables: dict[int, list[tuple[int, int, dict[int, Identity]]]] = {4: [], 6: []}
        for net, ident in entries:
            self.add(net, ident)

    def add(self, net: Network, ident: Identity) -> None:
        """Name every address in ``net`` (a later, longer prefix wins inside it)."""
        self.entries[net] = ident
        if net.prefixlen == net.max_prefixlen:
            # fast path for the canonical text; the table below still catches other spellings
            self._hosts[str(net.network_address)] = ident
        table = self._tables[net.version]
        for plen, _mask, bucket in table:
            if plen == net.prefixlen:
                bucket[int(net.network_address)] = ident
                return
        table.append((net.prefixlen, int(net.netmask), {int(net.network_address): ident}))
        table.sort(key=lambda t: -t[0])

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        """The identity of the longest prefix holding ``ip``, or ``None``."""
        found = self._hosts.get(ip)
        if found is not None:
            return found
        if ":" in ip:
            table = self._tables[6]
            family = socket.AF_INET6
        else:
            table = self._tables[4]
            family = socket.AF_INET
        if not table:
            return None
        try:
            value = int.from_bytes(socket.inet_pton(family, ip), "big")
        except OSError:
            return None
        for _plen, mask, bucket in table:
            found = bucket.get(value & mask)
            if found is not None:
                return found
        return None

    def name_record(self, rec: ConnectionRecord) -> None:
        """Fill ``rec``'s ``src_*``/``dst_*`` identity fields in place."""
        name_record(rec, self)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> Inventory:
        """Read and check an inventory file; :class:`InventoryError` on any problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InventoryError(f"inventory {path}: cannot read: {reason}") from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> Inventory:
        """Parse inventory YAML text; ``source`` names it in error messages."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise InventoryError(f"inventory {source}: not valid YAML{where}: {problem}") from None
        return cls.from_data(doc, source=source)

    @classmethod
    def from_data(cls, doc: Any, source: str = "<data>") -> Inventory:
        """Build from already-parsed data (the YAML document)."""
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            raise InventoryError(
                f"inventory {source}: expected a mapping with an 'endpoints' list, "
                f"got {type(doc).__name__}"
            )
        extra = sorted(str(k) for k in doc if k != "endpoints")
        if extra:
            raise InventoryError(
                f"inventory {source}: unknown top-level key {extra[0]!r} (only 'endpoints')"
            )
        endpoints = doc.get("endpoints")
        if endpoints is None:
            return cls()
        if not isinstance(endpoints, list):
            raise InventoryError(
                f"inventory {source}: 'endpoints' must be a list, got {type(endpoints).__name__}"
            )
        inv = cls()
        for i, entry in enumerate(endpoints):
            net, ident = _parse_entry(entry, f"inventory {source}: endpoints[{i}]")
            if net in inv.entries:
                raise InventoryError(
                    f"inventory {source}: endpoints[{i}]: duplicate cidr {net} "
                    f"(already names {inv.entries[net].name!r})"
                )
            inv.add(net, ident)
        return inv


def _parse_entry(entry: Any, where: str) -> tuple[Network, Identity]:
    if not isinstance(entry, Mapping):
        raise InventoryError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise InventoryError(
            f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(_KEYS))})"
        )
    for key, value in entry.items():
        if value is not None and not isinstance(value, str):
            raise InventoryError(f"{where}: {key} must be a string, got {type(value).__name__}")
    cidr = entry.get("cidr")
    if not cidr:
        raise InventoryError(f"{where}: missing 'cidr'")
    where = f"{where} (cidr {cidr})"
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise InventoryError(f"{where}: bad cidr: {e}") from None
    name = entry.get("name")
    if not name:
        raise InventoryError(f"{where}: missing 'name'")
    kind = entry.get("kind")
    if not kind:
        raise InventoryError(f"{where}: missing 'kind' (one of {', '.join(INVENTORY_KINDS)})")
    if kind not in INVENTORY_KINDS:
        raise InventoryError(f"{where}: kind {kind!r} is not one of {', '.join(INVENTORY_KINDS)}")
    namespace = entry.get("namespace") or ""
    workload = entry.get("workload") or name
    return net, Identity(name, namespace, workload, cast(Kind, kind))
