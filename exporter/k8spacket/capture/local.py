"""Which addresses belong to pods on this node (for the exactly-once rule and ``reporter``).

Two sources, both cheap to consult on the packet path:

* **learned**: what the host network namespace shows with ``CAP_NET_RAW``
  alone (no Kubernetes needed):

  - the source address of every packet that arrives *from* a pod (inbound on
    its host-side interface), whichever interface owns the connection: a pod
    can only send from its own veth, so this needs no CNI knowledge and works
    for bridged (kubenet, flannel), routed (calico, cilium) and cloud (eni,
    gke) layouts alike. An address is learned on the pod's first packet (a
    client's SYN, a server's SYN-ACK), before it matters;
  - host routes (``/32``, ``/128``) through a watched link (routed CNIs):
    ``capture.interfaces.netlink_pod_routes``;
  - a bridge's neighbour table (address → MAC) joined with its forwarding
    table (MAC → bridge port): the pods behind a bridged CNI that have talked
    to the node (:func:`netlink_bridge_pods`);

  all forgotten when their interface goes;
* **extra**: a set handed in from outside, e.g. the Kubernetes cache's pod IPs
  on this node (``set_extra``); replaced atomically, safe from any thread.

The publisher decides ``reporter`` after a short settle delay, so a pod whose
first packets were read a moment ago is known.

Addresses are ints (IPv4 as 32 bits, IPv6 as 128 bits: what
``key >> (half + 16)`` gives for a decoder key). Limits: a pod that sends from
an address that is not its own (a VPN or NAT inside the pod) makes that
address local too; ``learn``/``forget_interface`` belong to the capture thread.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

AF_BRIDGE = 7
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80


def address_int(ip: str) -> int:
    """An address string as the int the capture path uses (ValueError if not an address)."""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return int.from_bytes(socket.inet_pton(family, ip), "big")
    except OSError:
        raise ValueError(f"not an IP address: {ip!r}") from None


class LocalAddresses:
    """Local pod addresses: learned from inbound packets, plus an external set."""

    __slots__ = ("extra", "learned")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        #: address int → ifindex of the interface it was seen arriving on
        self.learned: dict[int, int] = {}
        self.extra: frozenset[int] = frozenset(address_int(ip) for ip in extra)

    def set_extra(self, ips: Iterable[str]) -> None:
        """Replace the externally known local addresses (e.g. from Kubernetes)."""
        self.extra = frozenset(address_int(ip) for ip in ips)

    def forget_interface(self, ifindex: int) -> int:
        """Drop the addresses learned on an interface that went away; how many."""
        gone = [a for a, i in self.learned.items() if i == ifindex]
        for a in gone:
            del self.learned[a]
        return len(gone)

    def is_local(self, ip: str) -> bool:
        """True when ``ip`` is a pod on this node (the tracker's ``is_local``)."""
        try:
            a = address_int(ip)
        except ValueError:
            return False
        return a in self.learned or a in self.extra

    def __len__(self) -> int:
        return len(self.learned.keys() | self.extra)


def bridge_pods(
    fdb: Iterable[tuple[int, int, str, int]], neighbours: Iterable[tuple[int, str, str, int]]
) -> list[tuple[str, int]]:
    """(address, bridge port ifindex) of the pods behind bridges.

    ``fdb``: (port ifindex, bridge ifindex, MAC, state) from the bridges'
    forwarding tables; ``neighbours``: (ifindex, address, MAC, state) from the
    neighbour tables. An address whose MAC the bridge learned on a port lives
    behind that port. Permanent forwarding entries (the ports' own MACs) and
    unresolved or failed neighbours are left out, and so are link-local
    addresses.
    """
    ports: dict[tuple[int, str], int] = {}
    found: int | None
    for port, bridge, mac, state in fdb:
        if bridge and mac and not state & NUD_PERMANENT:
            ports[(bridge, mac.lower())] = port
    out: list[tuple[str, int]] = []
    for ifindex, ip, mac, state in neighbours:
        if not ip or not mac or state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP):
            continue
        found = ports.get((ifindex, mac.lower()))
        if found is None:
            continue
        try:
            if ipaddress.ip_address(ip).is_link_local:
                continue
        except ValueError:
            continue
        out.append((ip, found))
    return out


def netlink_bridge_pods() -> list[tuple[str, int]]:
    """:func:`bridge_pods` from this namespace's tables (pyroute2 dumps, read-only).

    Netlink failures are raised as :class:`OSError` (the interface watcher logs
    them and tries again at its next sync).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return _dump_bridge_pods(IPRoute)
    except NetlinkError as e:
        raise OSError(e.code, f"bridge tables: {e}") from None


def _dump_bridge_pods(iproute: Any) -> list[tuple[str, int]]:
    with iproute() as ipr:
        fdb = [
            (
                int(m["ifindex"]),
                int(m.get_attr("NDA_MASTER") or 0),
                str(m.get_attr("NDA_LLADDR") or ""),
                int(m["state"]),
            )
            for m in ipr.get_neighbours(family=AF_BRIDGE)
        ]
        neighbours = [
            (
                int(m["ifindex"]),
                str(m.get_attr("NDA_DST") or ""),
                str(m.get_attr("NDA_LLADDR") or ""),
                int(m["state"]),
            )
            for family in (socket.AF_INET, socket.AF_INET6)
            for m in ipr.get_neighbours(family=family)
        ]
    return bridge_pods(fdb, neighbours)
