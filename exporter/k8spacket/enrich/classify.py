"""Which addresses are *external*: the ones worth a GeoIP and whois lookup.

An address is never looked up when it is private in the wide sense: RFC 1918,
RFC 6598 shared address space (carrier-grade NAT, often used for pod and service
ranges), loopback, link-local, unique-local, multicast, the documentation and
benchmarking ranges, "this network", reserved and broadcast space, and the IPv6
equivalents. IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::/96``) IPv6
addresses are judged by the IPv4 address they carry. Anything the Kubernetes
cache or the inventory file names (the ``is_named`` callable) is not external
either, whatever its address: a pod or node with a public IP is still a pod or
a node.

Limits: the table is fixed at import (it does not follow IANA registry updates),
and a string that is not an IP address is treated as private (never looked up).
A check is ``inet_pton`` and one tuple index on the first byte (about 0.3 µs): the
verdict of every /8 that lies wholly inside or wholly outside the table is
precomputed, and only addresses in the few /8s the table splits (``100.``,
``172.``, ``192.``, ``fe``, …) go on to a binary search over integer ranges.
Cheap enough for every connection record; callers cache the verdict for private ones.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Callable
from typing import Literal

Category = Literal["private", "named", "external"]

#: Ranges that are never looked up, with the reason (for docs and tests).
PRIVATE_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and broadcast 255.255.255.255"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("fc00::/7", "unique-local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "deprecated site-local"),
    ("ff00::/8", "multicast"),
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _table(version: int) -> tuple[list[int], list[int]]:
    nets = sorted(
        (n for n in (ipaddress.ip_network(c) for c, _ in PRIVATE_NETWORKS) if n.version == version),
        key=lambda n: int(n.network_address),
    )
    return [int(n.network_address) for n in nets], [int(n.broadcast_address) for n in nets]


_V4_START, _V4_END = _table(4)
_V6_START, _V6_END = _table(6)
_MAPPED_LO, _MAPPED_HI = int(_MAPPED.network_address), int(_MAPPED.broadcast_address)
_NAT64_LO, _NAT64_HI = int(_NAT64.network_address), int(_NAT64.broadcast_address)


def _first_byte_verdicts(
    starts: list[int], ends: list[int], bits: int, special: tuple[tuple[int, int], ...] = ()
) -> tuple[bool | None, ...]:
    """Per first byte: ``True`` (the whole /8 is private), ``False`` (no address in
    it is), ``None`` (the table splits it, or it holds ``special`` ranges)."""
    shift = bits - 8
    out: list[bool | None] = []
    for b in range(256):
        lo, hi = b << shift, ((b + 1) << shift) - 1
        if any(s <= lo and hi <= e for s, e in zip(starts, ends, strict=True)):
            out.append(True)
        elif any(s <= hi and lo <= e for s, e in (*zip(starts, ends, strict=True), *special)):
            out.append(None)
        else:
            out.append(False)
    return tuple(out)


_V4_FIRST = _first_byte_verdicts(_V4_START, _V4_END, 32)
_V6_FIRST = _first_byte_verdicts(
    _V6_START, _V6_END, 128, ((_MAPPED_LO, _MAPPED_HI), (_NAT64_LO, _NAT64_HI))
)
_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _in(value: int, starts: list[int], ends: list[int]) -> bool:
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


def is_private(ip: str) -> bool:
    """True when ``ip`` is in a range that is never looked up (or is not an address)."""
    try:
        if ":" in ip:
            packed = _inet_pton(_AF_INET6, ip)
            verdict = _V6_FIRST[packed[0]]
            if verdict is not None:
                return verdict
            value = int.from_bytes(packed, "big")
        else:
            packed = _inet_pton(_AF_INET, ip)
            verdict = _V4_FIRST[packed[0]]
            if verdict is not None:
                return verdict
            return _in(int.from_bytes(packed, "big"), _V4_START, _V4_END)
    except (OSError, ValueError):  # not an address (ValueError: an embedded NUL)
        return True
    if _MAPPED_LO <= value <= _MAPPED_HI or _NAT64_LO <= value <= _NAT64_HI:
        return _in(value & 0xFFFFFFFF, _V4_START, _V4_END)
    return _in(value, _V6_START, _V6_END)


class AddressClassifier:
    """Sorts addresses into ``private``, ``named`` (known to Kubernetes or the
    inventory) and ``external``.

    ``is_named(ip)`` is asked only for non-private addresses; it must be cheap and
    must not block (a dictionary look-up in the identity cache).
    """

    __slots__ = ("is_named",)

    def __init__(self, is_named: Callable[[str], bool] | None = None) -> None:
        self.is_named = is_named

    def classify(self, ip: str) -> Category:
        if is_private(ip):
            return "private"
        if self.is_named is not None and self.is_named(ip):
            return "named"
        return "external"

    def is_external(self, ip: str) -> bool:
        return self.classify(ip) == "external"
