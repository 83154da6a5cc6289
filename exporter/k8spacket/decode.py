"""Packet decoding: link layer → IP → TCP header fields, with ``struct`` only.

This is the hot path (hundreds of thousands of packets per second), so it is one
flat function per link type, no objects per packet beyond the result tuple, and no
scapy. It understands:

* link types Ethernet (802.1Q / 802.1ad / QinQ tags), Linux cooked v1 and v2,
  raw IP (v4 or v6 by the version nibble), BSD null/loopback;
* IPv4 with options; IPv6 with extension headers (hop-by-hop including the jumbo
  payload option, routing, fragment, destination options, AH, mobility);
* TCP with options.

The TCP payload length comes from the IP header, never from the captured length,
so headers-only captures (snap length 96) and segmentation-offload super-frames
count right. When the IP length field is zero (IPv4 BIG TCP, IPv6 without a jumbo
option) the original wire length of the frame is used instead.

A packet the tracker cannot use returns an ``int`` skip code (see ``SKIP_REASONS``)
instead of a tuple; the caller counts it. Nothing here raises on malformed input.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TypeAlias

#: (key, half, src_port, dst_port, seq, ack, flags, payload_len).
#: ``key`` packs both endpoints into one int: ``(src_addr << 16 | src_port) << half |
#: (dst_addr << 16 | dst_port)`` with ``half`` 48 for IPv4 and 144 for IPv6. An int
#: is a cheap dictionary key and its reverse (the other direction's key) is two
#: shifts away, see :func:`reverse_key`.
Decoded: TypeAlias = tuple[int, int, int, int, int, int, int, int]
DecodeResult: TypeAlias = Decoded | int
#: decode(buffer, offset, captured length, wire length): the packet is
#: ``buffer[offset:offset + captured length]``, read in place where possible.
Decoder: TypeAlias = Callable[[bytes, int, int, int], DecodeResult]

# Skip codes (ints so the hot path allocates nothing for a skipped packet).
SKIP_TRUNCATED = 1
SKIP_NOT_IP = 2
SKIP_NOT_TCP = 3
SKIP_FRAGMENT = 4
SKIP_BAD_IP = 5
SKIP_BAD_TCP = 6
SKIP_LINKTYPE = 7

#: skip code → the ``reason`` label of ``k8spacket_decode_errors_total``.
SKIP_REASONS: dict[int, str] = {
    SKIP_TRUNCATED: "truncated",
    SKIP_NOT_IP: "not_ip",
    SKIP_NOT_TCP: "not_tcp",
    SKIP_FRAGMENT: "fragment",
    SKIP_BAD_IP: "bad_ip_header",
    SKIP_BAD_TCP: "bad_tcp_header",
    SKIP_LINKTYPE: "unsupported_linktype",
}

# pcap LINKTYPE_* values (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# Historical DLT_RAW numbers some writers still use.
DLT_RAW_BSD = 12
DLT_RAW_OPENBSD = 14

_u16 = struct.Struct("!H").unpack_from
_tcp = struct.Struct("!HHII").unpack_from
_v4addr = struct.Struct("!II").unpack_from
_v6addr = struct.Struct("!QQQQ").unpack_from
# Fast paths: Ethernet + IPv4 without options + TCP, Ethernet + IPv6 + TCP, in one unpack.
_eth_ip4_tcp = struct.Struct("!12xHBxHxxHxBxxIIHHIIBB").unpack_from
_eth_ip6_tcp = struct.Struct("!12xHIHBxQQQQHHIIBB").unpack_from
V4_HALF = 48
V6_HALF = 144
_u32 = struct.Struct("!I").unpack_from
_u32_host_le = struct.Struct("<I").unpack_from

_ETH_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD

# IPv6 extension headers whose length is ((len + 1) * 8).
_V6_EXT_8 = frozenset((0, 43, 60, 135, 139, 140))
_V6_AH = 51
_V6_FRAG = 44
_JUMBO_OPTION = 0xC2
# AF_INET, and AF_INET6 as BSD, FreeBSD and macOS number it.
_AF_INET_ANY = frozenset((2, 24, 28, 30))


def decode_ip(pkt: bytes, o: int, wirelen: int) -> DecodeResult:
    """Decode an IPv4 or IPv6 packet starting at offset ``o`` of ``pkt``.

    ``wirelen`` is the frame's original length on the wire (the pcap ``orig_len``);
    it replaces an IP length field of zero.
    """
    try:
        first = pkt[o]
        version = first >> 4
        if version == 4:
            ihl = (first & 15) << 2
            if ihl < 20:
                return SKIP_BAD_IP
            if _u16(pkt, o + 6)[0] & 0x3FFF:
                return SKIP_FRAGMENT
            if pkt[o + 9] != 6:
                return SKIP_NOT_TCP
            ip_len = _u16(pkt, o + 2)[0]
            if ip_len == 0:
                ip_len = wirelen - o
            t = o + ihl
            doff = (pkt[t + 12] >> 4) << 2
            if doff < 20:
                return SKIP_BAD_TCP
            plen = ip_len - ihl - doff
            if plen < 0:
                return SKIP_BAD_IP
            sport, dport, seq, ack = _tcp(pkt, t)
            sa, da = _v4addr(pkt, o + 12)
            key = (((sa << 16) | sport) << 48) | (da << 16) | dport
            return (key, 48, sport, dport, seq, ack, pkt[t + 13], plen)
        if version == 6:
            return _decode_ipv6(pkt, o, wirelen)
        return SKIP_BAD_IP
    except (IndexError, struct.error):
        return SKIP_TRUNCATED


def _decode_ipv6(pkt: bytes, o: int, wirelen: int) -> DecodeResult:
    payload_len = _u16(pkt, o + 4)[0]
    nh = pkt[o + 6]
    off = o + 40
    jumbo = 0
    while nh != 6:
        if nh in _V6_EXT_8:
            ext_len = (pkt[off + 1] + 1) << 3
            if nh == 0 and payload_len == 0:
                jumbo = _find_jumbo(pkt, off + 2, off + ext_len)
            nh = pkt[off]
            off += ext_len
        elif nh == _V6_FRAG:
            frag = _u16(pkt, off + 2)[0]
            if frag & 0xFFF9:  # offset != 0 or more-fragments: a real fragment
                return SKIP_FRAGMENT
            nh = pkt[off]  # atomic fragment (RFC 6946): carry on
            off += 8
        elif nh == _V6_AH:
            ext_len = (pkt[off + 1] + 2) << 2
            nh = pkt[off]
            off += ext_len
        else:
            return SKIP_NOT_TCP
    if payload_len == 0:
        payload_len = jumbo if jumbo else wirelen - o - 40
    t = off
    doff = (pkt[t + 12] >> 4) << 2
    if doff < 20:
        return SKIP_BAD_TCP
    plen = payload_len - (off - o - 40) - doff
    if plen < 0:
        return SKIP_BAD_IP
    sport, dport, seq, ack = _tcp(pkt, t)
    s1, s2, d1, d2 = _v6addr(pkt, o + 8)
    key = (((s1 << 80) | (s2 << 16) | sport) << 144) | (d1 << 80) | (d2 << 16) | dport
    return (key, 144, sport, dport, seq, ack, pkt[t + 13], plen)


def _find_jumbo(pkt: bytes, i: int, end: int) -> int:
    """The jumbo payload length from hop-by-hop options ``pkt[i:end]`` (0 if absent)."""
    while i < end:
        opt = pkt[i]
        if opt == 0:  # Pad1
            i += 1
            continue
        if opt == _JUMBO_OPTION and pkt[i + 1] == 4:
            return int(_u32(pkt, i + 2)[0])
        i += 2 + pkt[i + 1]
    return 0


def decode_ethernet(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """Ethernet II, with any number of 802.1Q / 802.1ad tags."""
    # Fast path, read in place: untagged IPv4 without options, or IPv6 straight to TCP.
    if caplen >= 48:
        et, vi, tl, fr, pr, sa, da, sport, dport, seq, ack, doff, flags = _eth_ip4_tcp(buf, off)
        if et == _ETH_IPV4 and vi == 0x45 and pr == 6 and not fr & 0x3FFF:
            doff = (doff >> 4) << 2
            if doff < 20:
                return SKIP_BAD_TCP
            plen = (tl or wirelen - 14) - 20 - doff
            if plen < 0:
                return SKIP_BAD_IP
            key = (((sa << 16) | sport) << 48) | (da << 16) | dport
            return (key, 48, sport, dport, seq, ack, flags, plen)
        if et == _ETH_IPV6 and caplen >= 68:
            et, vf, pl, nh, s1, s2, d1, d2, sport, dport, seq, ack, doff, flags = _eth_ip6_tcp(
                buf, off
            )
            if nh == 6 and vf >> 28 == 6 and pl:
                doff = (doff >> 4) << 2
                if doff < 20:
                    return SKIP_BAD_TCP
                plen = pl - doff
                if plen < 0:
                    return SKIP_BAD_IP
                key = (((s1 << 80) | (s2 << 16) | sport) << 144) | (d1 << 80) | (d2 << 16) | dport
                return (key, 144, sport, dport, seq, ack, flags, plen)
    pkt = buf[off : off + caplen]
    try:
        etype = _u16(pkt, 12)[0]
        o = 14
        while etype in _ETH_VLAN:
            etype = _u16(pkt, o + 2)[0]
            o += 4
    except struct.error:
        return SKIP_TRUNCATED
    if etype in (_ETH_IPV4, _ETH_IPV6):
        return decode_ip(pkt, o, wirelen)
    return SKIP_NOT_IP


def decode_sll(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """Linux cooked capture v1 (16-byte header, protocol at offset 14)."""
    pkt = buf[off : off + caplen]
    try:
        proto = _u16(pkt, 14)[0]
    except struct.error:
        return SKIP_TRUNCATED
    if proto in (_ETH_IPV4, _ETH_IPV6):
        return decode_ip(pkt, 16, wirelen)
    return SKIP_NOT_IP


def decode_sll2(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """Linux cooked capture v2 (20-byte header, protocol at offset 0)."""
    pkt = buf[off : off + caplen]
    if len(pkt) < 20:
        return SKIP_TRUNCATED
    proto = _u16(pkt, 0)[0]
    if proto in (_ETH_IPV4, _ETH_IPV6):
        return decode_ip(pkt, 20, wirelen)
    return SKIP_NOT_IP


def decode_raw(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """Raw IP: the version nibble tells IPv4 from IPv6."""
    return decode_ip(buf[off : off + caplen], 0, wirelen)


def decode_null(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """BSD null/loopback: a 4-byte address family in the writer's byte order."""
    pkt = buf[off : off + caplen]
    if len(pkt) < 4:
        return SKIP_TRUNCATED
    family = _u32_host_le(pkt, 0)[0]
    if family > 0xFFFF:  # written big-endian
        family = _u32(pkt, 0)[0]
    if family in _AF_INET_ANY:
        return decode_ip(pkt, 4, wirelen)
    return SKIP_NOT_IP


def decode_loop(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    """OpenBSD loopback: the address family in network byte order."""
    pkt = buf[off : off + caplen]
    if len(pkt) < 4:
        return SKIP_TRUNCATED
    if _u32(pkt, 0)[0] in _AF_INET_ANY:
        return decode_ip(pkt, 4, wirelen)
    return SKIP_NOT_IP


def _unsupported(buf: bytes, off: int, caplen: int, wirelen: int) -> DecodeResult:
    return SKIP_LINKTYPE


_DECODERS: dict[int, Decoder] = {
    LINKTYPE_NULL: decode_null,
    LINKTYPE_ETHERNET: decode_ethernet,
    LINKTYPE_RAW: decode_raw,
    DLT_RAW_BSD: decode_raw,
    DLT_RAW_OPENBSD: decode_raw,
    LINKTYPE_LOOP: decode_loop,
    LINKTYPE_LINUX_SLL: decode_sll,
    LINKTYPE_IPV4: decode_raw,
    LINKTYPE_IPV6: decode_raw,
    LINKTYPE_LINUX_SLL2: decode_sll2,
}


def decoder_for(linktype: int) -> Decoder:
    """The decode function for a pcap link type (one that skips everything if unknown)."""
    return _DECODERS.get(linktype, _unsupported)


def is_supported_linktype(linktype: int) -> bool:
    return linktype in _DECODERS


def reverse_key(key: int, half: int) -> int:
    """The key of the same connection seen from the other direction."""
    return ((key & ((1 << half) - 1)) << half) | (key >> half)


def key_endpoints(key: int, half: int) -> tuple[str, int, str, int]:
    """(source address, source port, destination address, destination port) of a key."""
    a = key >> half
    b = key & ((1 << half) - 1)
    family, nbytes = (socket.AF_INET, 4) if half == V4_HALF else (socket.AF_INET6, 16)
    return (
        socket.inet_ntop(family, (a >> 16).to_bytes(nbytes, "big")),
        a & 0xFFFF,
        socket.inet_ntop(family, (b >> 16).to_bytes(nbytes, "big")),
        b & 0xFFFF,
    )
