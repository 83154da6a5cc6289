"""The struct decoders on crafted frames: every link type, IP variant and skip reason.

Frames are built with scapy (``tests/pcapgen``); expected values are the ones the
frame was built with. Truncation and corruption tests check the promise in
``decode.py``: nothing raises, a frame cut before the TCP flags is a skip code,
and a frame cut after them decodes exactly as the whole frame (headers-only
captures).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Jumbo,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from k8spacket.decode import (
    SKIP_REASONS,
    decoder_for,
    is_supported_linktype,
    key_endpoints,
    reverse_key,
)
from pcapgen import link_wrap

V4 = {"src": "10.1.2.3", "dst": "10.4.5.6"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8::2"}
SEQ, ACK = 0xDEADBEEF, 0x01020304


def tcp(payload: int = 0, flags: str = "PA", **kw: Any) -> Packet:
    seg = TCP(sport=40123, dport=8080, seq=SEQ, ack=ACK, flags=flags, **kw)
    return seg / Raw(bytes(payload)) if payload else seg


def null_header(family: int, big_endian: bool = False) -> bytes:
    return struct.pack(">I" if big_endian else "<I", family)


# (id, linktype, frame bytes, wire length or None (= len), expected
#  (src, sport, dst, dport, half, flags, payload length))
V4_END = ("10.1.2.3", 40123, "10.4.5.6", 8080, 48)
V6_END = ("2001:db8::1", 40123, "2001:db8::2", 8080, 144)
CHAIN = [
    IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")]),
    IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]),
    IPv6ExtHdrRouting(addresses=["2001:db8::ff"], segleft=0),
    IPv6ExtHdrFragment(offset=0, m=0, id=5),
]


def v6_chain(payload: int) -> Packet:
    pkt: Packet = IPv6(**V6)
    for ext in CHAIN:
        pkt = pkt / ext.copy()
    return pkt / tcp(payload)


def v6_jumbo(payload: int) -> bytes:
    pkt = IPv6(plen=0, **V6) / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=0)]) / tcp(payload)
    pkt[Jumbo].jumboplen = 8 + 20 + payload
    return bytes(pkt)


def ip4_len0(payload: int) -> bytes:
    pkt = IP(len=0, flags="DF", **V4) / tcp(payload)
    return bytes(pkt)


ETH = 1
VALID: list[tuple[str, int, bytes, int | None, tuple[Any, ...]]] = [
    ("eth-ipv4", ETH, link_wrap("ether", bytes(IP(**V4) / tcp(100))), None, (*V4_END, 0x18, 100)),
    (
        "eth-ipv4-syn",
        ETH,
        link_wrap("ether", bytes(IP(**V4) / tcp(flags="S"))),
        None,
        (*V4_END, 0x02, 0),
    ),
    (
        "eth-ipv4-tcp-options",
        ETH,
        link_wrap(
            "ether",
            bytes(IP(**V4) / tcp(10, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])),
        ),
        None,
        (*V4_END, 0x18, 10),
    ),
    (
        "eth-ipv4-ip-options",
        ETH,
        link_wrap("ether", bytes(IP(options=[IPOption_RR(routers=["1.2.3.4"])], **V4) / tcp(33))),
        None,
        (*V4_END, 0x18, 33),
    ),
    ("eth-ipv6", ETH, link_wrap("ether", bytes(IPv6(**V6) / tcp(200))), None, (*V6_END, 0x18, 200)),
    ("eth-ipv6-ext-chain", ETH, link_wrap("ether", bytes(v6_chain(44))), None, (*V6_END, 0x18, 44)),
    (
        "eth-ipv6-ah",
        ETH,
        link_wrap(
            "ether", bytes(IPv6(**V6) / AH(nh=6, payloadlen=4, spi=1, icv=bytes(12)) / tcp(5))
        ),
        None,
        (*V6_END, 0x18, 5),
    ),
    ("eth-ipv6-jumbo-option", ETH, link_wrap("ether", v6_jumbo(70)), None, (*V6_END, 0x18, 70)),
    (
        "eth-ipv6-plen0-wirelen",  # BIG TCP without the option: the wire length decides
        ETH,
        link_wrap("ether", bytes(IPv6(plen=0, **V6) / tcp())),
        14 + 40 + 20 + 100000,
        (*V6_END, 0x18, 100000),
    ),
    (
        "eth-ipv4-len0-wirelen",
        ETH,
        link_wrap("ether", ip4_len0(0)),
        14 + 20 + 20 + 150000,
        (*V4_END, 0x18, 150000),
    ),
    (
        "eth-ipv4-headers-only",  # cut to 96 bytes: the IP total length decides
        ETH,
        link_wrap("ether", bytes(IP(**V4) / tcp(1448)))[:96],
        14 + 20 + 20 + 1448,
        (*V4_END, 0x18, 1448),
    ),
    ("vlan", ETH, link_wrap("vlan", bytes(IP(**V4) / tcp(7))), None, (*V4_END, 0x18, 7)),
    ("qinq-ipv6", ETH, link_wrap("qinq", bytes(IPv6(**V6) / tcp(8))), None, (*V6_END, 0x18, 8)),
    ("sll-ipv4", 113, link_wrap("sll", bytes(IP(**V4) / tcp(9))), None, (*V4_END, 0x18, 9)),
    ("sll2-ipv6", 276, link_wrap("sll2", bytes(IPv6(**V6) / tcp(11))), None, (*V6_END, 0x18, 11)),
    ("raw-ipv4", 101, bytes(IP(**V4) / tcp(12)), None, (*V4_END, 0x18, 12)),
    ("raw-ipv6", 101, bytes(IPv6(**V6) / tcp(13)), None, (*V6_END, 0x18, 13)),
    ("ipv4-linktype-228", 228, bytes(IP(**V4) / tcp(1)), None, (*V4_END, 0x18, 1)),
    ("ipv6-linktype-229", 229, bytes(IPv6(**V6) / tcp(2)), None, (*V6_END, 0x18, 2)),
    ("null-le-inet", 0, null_header(2) + bytes(IP(**V4) / tcp(14)), None, (*V4_END, 0x18, 14)),
    (
        "null-be-inet6-darwin",
        0,
        null_header(30, big_endian=True) + bytes(IPv6(**V6) / tcp(15)),
        None,
        (*V6_END, 0x18, 15),
    ),
    (
        "loop-inet",
        108,
        null_header(2, big_endian=True) + bytes(IP(**V4) / tcp(16)),
        None,
        (*V4_END, 0x18, 16),
    ),
]

SKIPS: list[tuple[str, int, bytes, str]] = [
    (
        "ipv4-first-fragment",
        ETH,
        link_wrap("ether", bytes(IP(flags="MF", **V4) / tcp(8))),
        "fragment",
    ),
    (
        "ipv4-later-fragment",
        ETH,
        link_wrap("ether", bytes(IP(frag=10, **V4) / Raw(bytes(40)))),
        "fragment",
    ),
    (
        "ipv4-fragment-with-options",
        ETH,
        link_wrap("ether", bytes(IP(flags="MF", options=[IPOption_RR()], **V4) / tcp())),
        "fragment",
    ),
    (
        "ipv6-fragment",
        ETH,
        link_wrap("ether", bytes(IPv6(**V6) / IPv6ExtHdrFragment(nh=6, offset=0, m=1) / tcp(8))),
        "fragment",
    ),
    (
        "ipv6-later-fragment",
        ETH,
        link_wrap(
            "ether", bytes(IPv6(**V6) / IPv6ExtHdrFragment(nh=6, offset=8, m=0) / Raw(bytes(20)))
        ),
        "fragment",
    ),
    ("udp", ETH, link_wrap("ether", bytes(IP(**V4) / UDP() / Raw(b"x"))), "not_tcp"),
    ("icmp", ETH, link_wrap("ether", bytes(IP(**V4) / ICMP())), "not_tcp"),
    ("icmpv6", ETH, link_wrap("ether", bytes(IPv6(**V6) / ICMPv6EchoRequest())), "not_tcp"),
    (
        "ipv6-udp-after-ext",
        ETH,
        link_wrap("ether", bytes(IPv6(**V6) / IPv6ExtHdrDestOpt() / UDP())),
        "not_tcp",
    ),
    ("arp", ETH, bytes(Ether() / ARP()), "not_ip"),
    ("sll-arp", 113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0806) + bytes(28), "not_ip"),
    ("null-unknown-family", 0, null_header(7) + bytes(IP(**V4) / tcp()), "not_ip"),
    ("ip-version-5", 101, bytes([0x55]) + bytes(IP(**V4) / tcp())[1:], "bad_ip_header"),
    (
        "ipv4-ihl-4",
        ETH,
        link_wrap("ether", bytes([0x44]) + bytes(IP(**V4) / tcp())[1:]),
        "bad_ip_header",
    ),
    (
        "ipv4-total-length-short",
        ETH,
        link_wrap("ether", bytes(IP(len=30, **V4) / tcp())),
        "bad_ip_header",
    ),
    (
        "ipv6-payload-length-short",
        ETH,
        link_wrap("ether", bytes(IPv6(plen=8, **V6) / tcp())),
        "bad_ip_header",
    ),
    ("tcp-offset-4", ETH, link_wrap("ether", bytes(IP(**V4) / tcp(dataofs=4))), "bad_tcp_header"),
    (
        "ipv6-tcp-offset-3",
        ETH,
        link_wrap("ether", bytes(IPv6(**V6) / tcp(dataofs=3))),
        "bad_tcp_header",
    ),
    (
        "tcp-offset-4-ip-options",
        ETH,
        link_wrap("ether", bytes(IP(options=[IPOption_RR()], **V4) / tcp(dataofs=4))),
        "bad_tcp_header",
    ),
    ("unsupported-linktype", 147, bytes(IP(**V4) / tcp()), "unsupported_linktype"),
    ("empty-frame", ETH, b"", "truncated"),
]


@pytest.mark.parametrize(
    ("linktype", "frame", "wirelen", "expected"),
    [c[1:] for c in VALID],
    ids=[c[0] for c in VALID],
)
def test_decodes_valid_frame(
    linktype: int, frame: bytes, wirelen: int | None, expected: tuple[Any, ...]
) -> None:
    wl = len(frame) if wirelen is None else wirelen
    r = decoder_for(linktype)(frame, 0, len(frame), wl)
    assert isinstance(r, tuple), SKIP_REASONS.get(r)
    key, half, sport, dport, seq, ack, flags, plen = r
    src, sp, dst, dp, want_half, want_flags, want_plen = expected
    assert key_endpoints(key, half) == (src, sp, dst, dp)
    assert (half, sport, dport, seq, ack, flags, plen) == (
        want_half,
        sp,
        dp,
        SEQ,
        ACK,
        want_flags,
        want_plen,
    )


@pytest.mark.parametrize(
    ("linktype", "frame", "reason"), [c[1:] for c in SKIPS], ids=[c[0] for c in SKIPS]
)
def test_skip_reason(linktype: int, frame: bytes, reason: str) -> None:
    r = decoder_for(linktype)(frame, 0, len(frame), len(frame))
    assert isinstance(r, int)
    assert SKIP_REASONS[r] == reason


def tcp_flags_end(linktype: int, frame: bytes, wirelen: int | None) -> int:
    """Bytes needed to decode: up to and including the TCP flags byte."""
    # find the TCP header by its ports and sequence number (unique in these frames)
    marker = struct.pack("!HHI", 40123, 8080, SEQ)
    return frame.index(marker) + 14


@pytest.mark.parametrize(
    ("linktype", "frame", "wirelen"),
    [(c[1], c[2], c[3]) for c in VALID],
    ids=[c[0] for c in VALID],
)
def test_every_truncation_is_a_skip_or_the_same_decode(
    linktype: int, frame: bytes, wirelen: int | None
) -> None:
    """Cut at every length, inside a buffer that goes on (the next record follows)."""
    dec = decoder_for(linktype)
    wl = len(frame) if wirelen is None else wirelen
    full = dec(frame, 0, len(frame), wl)
    need = tcp_flags_end(linktype, frame, wirelen)
    pad = b"\xff" * 7
    for cut in range(len(frame)):
        # what follows the cut is a whole copy of the frame: a decoder reading past
        # the captured length would find plausible bytes there
        buf = pad + frame[:cut] + frame + frame
        r = dec(buf, len(pad), cut, wl)
        if cut < need:
            assert isinstance(r, int), f"cut at {cut} of {len(frame)} decoded: {r}"
            assert r in SKIP_REASONS
        else:
            assert r == full, f"cut at {cut} of {len(frame)}"


@pytest.mark.parametrize(
    ("linktype", "frame", "wirelen"),
    [(c[1], c[2], c[3]) for c in VALID],
    ids=[c[0] for c in VALID],
)
def test_corrupted_bytes_never_raise(linktype: int, frame: bytes, wirelen: int | None) -> None:
    """Every byte set to 0x00, 0xff and a flipped value: a skip code or a tuple, no exception."""
    dec = decoder_for(linktype)
    wl = len(frame) if wirelen is None else wirelen
    for i in range(min(len(frame), 120)):
        for value in (0, 0xFF, frame[i] ^ 0x5A):
            bad = frame[:i] + bytes([value]) + frame[i + 1 :]
            r = dec(bad, 0, len(bad), wl)
            assert isinstance(r, int | tuple)
            if isinstance(r, int):
                assert r in SKIP_REASONS
            else:
                assert len(r) == 8 and r[7] >= 0


@pytest.mark.parametrize("linktype", [0, 1, 101, 108, 113, 228, 229, 276, 12, 14, 147])
def test_random_bytes_never_raise(linktype: int) -> None:
    rng = random.Random(linktype)
    dec = decoder_for(linktype)
    for _ in range(3000):
        n = rng.randrange(0, 120)
        data = bytes(rng.getrandbits(8) for _ in range(n))
        r = dec(data, 0, n, rng.choice((n, 0, 1 << 20)))
        assert isinstance(r, int | tuple)
        if isinstance(r, tuple):
            assert r[7] >= 0


@pytest.mark.parametrize(
    ("linktype", "supported"),
    [(1, True), (113, True), (276, True), (101, True), (0, True), (147, False), (-1, False)],
    ids=["ether", "sll", "sll2", "raw", "null", "user0", "negative"],
)
def test_is_supported_linktype(linktype: int, supported: bool) -> None:
    assert is_supported_linktype(linktype) is supported


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (1, link_wrap("ether", bytes(IP(**V4) / tcp()))),
        (1, link_wrap("ether", bytes(IPv6(**V6) / tcp()))),
    ],
    ids=["v4", "v6"],
)
def test_reverse_key_swaps_endpoints(linktype: int, frame: bytes) -> None:
    r = decoder_for(linktype)(frame, 0, len(frame), len(frame))
    assert isinstance(r, tuple)
    key, half = r[0], r[1]
    src, sp, dst, dp = key_endpoints(key, half)
    back = reverse_key(key, half)
    assert key_endpoints(back, half) == (dst, dp, src, sp)
    assert reverse_key(back, half) == key
