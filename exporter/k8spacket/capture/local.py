"""Which addresses belong to pods on this node (for the exactly-once rule and ``reporter``).

Two sources, both cheap to consult on the packet path:

* **learned**: the source address of every packet that arrives *from* a pod
  (inbound on its host-side interface) is a local pod address. A pod can only
  send from its own veth, so this needs no CNI knowledge and works for bridged
  (kubenet, flannel), routed (calico, cilium) and cloud (eni, gke) layouts
  alike. An address is learned on the pod's first packet (a client's SYN, a
  server's SYN-ACK), before it matters, and is forgotten when its interface goes.
* **extra**: a set handed in from outside, e.g. the Kubernetes cache's pod IPs
  on this node (``set_extra``); replaced atomically, safe from any thread.

Addresses are ints (IPv4 as 32 bits, IPv6 as 128 bits: what
``key >> (half + 16)`` gives for a decoder key). Limits: a pod that sends from
an address that is not its own (a VPN or NAT inside the pod) makes that
address local too; ``learn``/``forget_interface`` belong to the capture thread.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable


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
