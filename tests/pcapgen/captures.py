"""The tracker and decoder test captures, one small file per rule.

Every scenario is a function returning a :class:`~pcapgen.Capture`; ``CAPTURES``
maps the file name under ``tests/data/gen/`` to it. The expected records are
written by hand in ``tests/test_tracker.py``, not derived from this file: change
a scenario and those tables must change with it (the staleness test regenerates
every file and compares bytes).

Addresses: clients 10.0.0.1, 10.0.0.3, 10.0.0.5 and 2001:db8::a/c; servers
10.0.0.2, 10.0.0.4, 10.0.0.6 and 2001:db8::b. Default ISNs: client 1000, server
5000 (so the client's first data byte is sequence number 1001).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from pcapgen import Capture, Conversation

C = ("10.0.0.1", 40000)
S = ("10.0.0.2", 80)


def standard(cap: Capture, client: tuple[str, int] = C, server: tuple[str, int] = S) -> None:
    """The reference conversation: handshake 0.0007 s, 111 bytes up, 222 down, FIN."""
    conv = cap.tcp(client, server)
    conv.handshake(1.0, rtt=0.0005, ack_delay=0.0002)
    conv.client(1.001, "PA", 111)
    conv.server(1.002, "PA", 222)
    conv.client(1.003, "A")
    conv.fin_close(1.01)


def link(name: str) -> Callable[[], Capture]:
    def build() -> Capture:
        cap = Capture(name)
        standard(cap)
        if name == "raw":  # raw IP mixes versions: the version nibble decides
            standard(cap, ("2001:db8::a", 40000), ("2001:db8::b", 80))
        return cap

    return build


def fin_close() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(100.0, rtt=0.00025, ack_delay=0.00015)
    conv.client(100.001, "PA", 100)
    conv.server(100.0011, "A")
    conv.server(100.002, "PA", 300)
    conv.client(100.0021, "A")
    conv.fin_close(100.003)
    return cap


def rst_close() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(10.0, rtt=0.001, ack_delay=0.0005)
    conv.client(10.01, "PA", 50)
    conv.server(10.02, "PA", 20)
    conv.client(10.03, "RA")
    return cap


def refused() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, ("10.0.0.2", 81))
    conv.client(5.0, "S")
    conv.server(5.0001, "RA")
    return cap


def unanswered() -> Capture:
    cap = Capture()
    lost = cap.tcp(("10.0.0.1", 40001), ("10.0.0.2", 81))
    lost.client(1.0, "S")
    lost.client(2.0, "S", seq=1000)  # retransmitted SYNs
    lost.client(4.0, "S", seq=1000)
    ok = cap.tcp(("10.0.0.3", 40002), S)
    ok.handshake(30.0)
    ok.fin_close(30.01)
    pending = cap.tcp(("10.0.0.1", 40003), ("10.0.0.9", 443))
    pending.client(31.0, "S")
    return cap


def retransmit() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(0.0)
    conv.client(0.01, "PA", 100)  # 1001..1100
    conv.client(0.2, "PA", 100, seq=1001)  # retransmission
    conv.server(0.21, "PA", 200)  # 5001..5200
    conv.server(0.22, "PA", 200, seq=5001)  # duplicate
    conv.client(0.3, "PA", 100)  # 1101..1200
    conv.client(0.31, "PA", 100, seq=1151)  # overlaps 50, adds 50: 1151..1250
    conv.client(0.32, "PA", 50, seq=1101)  # old bytes only
    conv.server(0.33, "A")
    conv.server(0.33, "A")  # duplicate ACK
    conv.fin_close(0.4, by="s")
    return cap


def out_of_order() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(0.0)
    conv.client(0.01, "PA", 100, seq=1001)
    conv.client(0.02, "PA", 100, seq=1201)  # before 1101..1200
    conv.client(0.03, "PA", 100, seq=1101)  # the gap, filled late
    conv.server(0.04, "PA", 10, seq=5001)
    conv.server(0.05, "PA", 10, seq=6011)  # 5011..6010 never captured (capture loss)
    conv.client(0.06, "A")
    conv.fin_close(0.1)
    return cap


def seq_wrap() -> Capture:
    cap = Capture()
    conv = cap.tcp(C, S, isn_client=0xFFFFFFF0, isn_server=0xFFFFFF00)
    conv.handshake(0.0)
    for i in range(3):
        conv.client(0.01 + i / 100, "PA", 100)
    for i in range(2):
        conv.server(0.05 + i / 100, "PA", 200)
    conv.client(0.08, "A")
    conv.fin_close(0.1)
    return cap


def jumbo_v6_5gib() -> Capture:
    """Five 1 GiB IPv6 jumbograms (headers only): > 4 GiB of sequence space."""
    cap = Capture(snaplen=96)
    conv = cap.tcp(("2001:db8::a", 40000), ("2001:db8::b", 80))
    conv.handshake(0.0)
    for i in range(5):
        conv.client(1.0 + i, "A", 0, virtual=1 << 30, jumbo=True)
        conv.server(1.5 + i, "A")
    conv.fin_close(9.0)
    return cap


def midstream() -> Capture:
    cap = Capture()
    web = Conversation(cap, ("10.0.0.1", 51000), ("10.0.0.2", 443))
    web.server(50.0, "PA", 200)  # first packet seen: from the server
    web.client(50.1, "PA", 30)
    web.server(50.2, "PA", 100)
    web.fin_close(50.3)
    low = Conversation(cap, ("10.0.0.3", 5000), ("10.0.0.4", 80))
    low.server(51.0, "PA", 10)
    low.client(51.1, "PA", 20)
    late = Conversation(cap, ("10.0.0.5", 45000), ("10.0.0.6", 8080))
    late.server(52.0, "SA")  # the SYN was before the capture started
    late.client(52.001, "A")
    late.client(52.002, "PA", 40)
    late.server(52.003, "PA", 60)
    late.client(52.004, "RA")
    return cap


def port_reuse() -> Capture:
    cap = Capture()
    first = cap.tcp(C, S)
    first.handshake(1.0)
    first.client(1.01, "PA", 10)
    first.server(1.02, "PA", 20)
    first.fin_close(1.1)
    second = cap.tcp(C, S, isn_client=90000, isn_server=70000)  # within the closed linger
    second.handshake(1.5)
    second.client(1.51, "PA", 30)
    second.server(1.52, "PA", 40)
    second.fin_close(1.6)
    third = cap.tcp(C, S, isn_client=190000, isn_server=170000)  # long after
    third.handshake(60.0)
    third.client(60.01, "PA", 50)
    third.server(60.02, "PA", 60)
    third.server(60.1, "RA")
    # a new SYN while the old connection never closed (its end was not captured)
    old = cap.tcp(("10.0.0.1", 40001), S)
    old.handshake(70.0)
    old.client(70.01, "PA", 10)
    new = cap.tcp(("10.0.0.1", 40001), S, isn_client=300000, isn_server=400000)
    new.handshake(75.0)
    new.client(75.01, "PA", 20)
    new.fin_close(75.1)
    return cap


def ipv6_ext() -> Capture:
    cap = Capture()
    chain = [
        IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00\x00\x00\x00")]),
        IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")]),
        IPv6ExtHdrRouting(addresses=["2001:db8::ff"], segleft=0),
        IPv6ExtHdrFragment(offset=0, m=0, id=7),  # atomic fragment (RFC 6946)
    ]
    conv = cap.tcp(("2001:db8::a", 40000), ("2001:db8::b", 443), client_ext=chain)
    conv.handshake(1.0, rtt=0.001, ack_delay=0.001)
    conv.client(1.01, "PA", 123)
    conv.server(1.02, "PA", 456)
    conv.fin_close(1.1)
    jumbo = cap.tcp(("2001:db8::c", 40001), ("2001:db8::b", 443))
    jumbo.handshake(2.0)
    jumbo.client(2.01, "PA", 100, jumbo=True)
    jumbo.server(2.02, "PA", 7, jumbo=True)
    jumbo.fin_close(2.1)
    return cap


def fragments() -> Capture:
    """Real fragments (skipped, counted ``fragment``) around one normal connection."""
    cap = Capture()
    standard(cap)
    tcp4 = IP(src="10.0.0.1", dst="10.0.0.2", id=1) / TCP(sport=40001, dport=80) / Raw(bytes(1000))
    for frag in fragment(tcp4, fragsize=400):  # 400 + 400 + 220 bytes
        cap.add_ip(2.0, frag)
    udp4 = IP(src="10.0.0.1", dst="10.0.0.2", id=2) / UDP(sport=5353, dport=53) / Raw(bytes(1000))
    for frag in fragment(udp4, fragsize=400):  # 400 + 400 + 208 bytes
        cap.add_ip(2.1, frag)
    tcp6 = bytes(TCP(sport=40001, dport=80) / Raw(bytes(1000)))
    for off, more, part in ((0, 1, tcp6[:512]), (64, 0, tcp6[512:])):
        frag6 = (
            IPv6(src="2001:db8::a", dst="2001:db8::b")
            / IPv6ExtHdrFragment(nh=6, offset=off, m=more, id=9)
            / Raw(part)
        )
        cap.add_ip(2.2, frag6)
    return cap


def not_tcp() -> Capture:
    cap = Capture()
    cap.add_ip(1.0, IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=53) / Raw(b"q"))
    cap.add_ip(1.1, IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=53, dport=5000) / Raw(b"a"))
    cap.add_ip(1.2, IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    cap.add_ip(1.3, IPv6(src="2001:db8::a", dst="2001:db8::b") / ICMPv6EchoRequest())
    cap.add_ip(1.4, IPv6(src="2001:db8::a", dst="2001:db8::b") / UDP(sport=1, dport=2))
    cap.add_frame(1.5, bytes(Ether(src="02:00:00:00:00:01") / ARP(pdst="10.0.0.2")))
    return cap


def ipv4_options() -> Capture:
    cap = Capture()
    opts = [IPOption_RR(routers=["192.0.2.1", "192.0.2.2"]), IPOption_NOP()]
    conv = cap.tcp(C, S, ip_options=opts)
    conv.handshake(1.0, rtt=0.0005, ack_delay=0.0002)
    conv.client(1.001, "PA", 77)
    conv.server(1.002, "PA", 88)
    conv.fin_close(1.01)
    return cap


def snap96() -> Capture:
    """Headers only: every frame cut to 96 bytes, lengths from the IP headers."""
    cap = Capture(snaplen=96)
    v4 = cap.tcp(C, S)
    v4.handshake(1.0)
    for i in range(3):
        v4.client(1.01 + i / 1000, "PA", 1448)
    for i in range(10):
        v4.server(1.02 + i / 1000, "PA", 1448)
    v4.fin_close(1.1)
    v6 = cap.tcp(("2001:db8::a", 40000), ("2001:db8::b", 80))
    v6.handshake(2.0)
    for i in range(2):
        v6.client(2.01 + i / 1000, "PA", 1000)
    for i in range(5):
        v6.server(2.02 + i / 1000, "PA", 1440)
    v6.fin_close(2.1)
    return cap


def bigtcp() -> Capture:
    """Segmentation offload super-frames and BIG TCP frames, headers only."""
    cap = Capture(snaplen=96)
    v4 = cap.tcp(C, S)
    v4.handshake(1.0)
    v4.client(1.01, "PA", 0, virtual=64000)  # TSO: IP total length 64040
    v4.client(1.02, "PA", 0, virtual=150000, zero_len=True)  # BIG TCP: total length 0
    v4.server(1.03, "A")
    v4.fin_close(1.1)
    v6 = cap.tcp(("2001:db8::a", 40000), ("2001:db8::b", 80))
    v6.handshake(2.0)
    v6.client(2.01, "PA", 0, virtual=200000, zero_len=True)  # payload length 0, no option
    v6.client(2.02, "PA", 0, virtual=300000, jumbo=True)  # hop-by-hop jumbo option
    v6.server(2.03, "A")
    v6.fin_close(2.1)
    return cap


def interim() -> Capture:
    """A long-lived connection: interim records every flush period (10 s)."""
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(0.0, rtt=0.001, ack_delay=0.001)
    conv.client(1.0, "PA", 100)
    conv.server(1.001, "A")
    conv.client(11.0, "PA", 200)
    conv.server(11.001, "PA", 50)
    conv.client(23.0, "PA", 300)
    conv.server(23.001, "A")
    conv.client(35.0, "PA", 400)
    conv.server(35.001, "A")
    conv.client(40.0, "FPA", 10)
    conv.server(40.0001, "FPA", 20)
    conv.client(40.0002, "A")
    return cap


def capacity() -> Capture:
    """Five concurrent connections, opened one per second, none closed."""
    cap = Capture()
    for i in range(1, 6):
        conv = cap.tcp(("10.0.0.1", 40000 + i), S)
        conv.handshake(float(i), rtt=0.0005, ack_delay=0.0002)
        conv.client(i + 0.01, "PA", 10 * i)
        conv.server(i + 0.011, "A")
    return cap


def _lose_last(cap: Capture) -> None:
    """Drop the frame just added: the capture lost it (the conversation still sent it)."""
    cap.frames.pop()


def pooled() -> Capture:
    """A pooled connection idle past the timeout, kept alive by probes, then reused.

    Keep-alive probes carry ``seq = snd_nxt - 1`` with no byte (Linux) or one
    garbage byte (Windows); they add nothing. A second connection goes silent
    for good after its first request.
    """
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(0.0)
    conv.client(0.01, "PA", 100)
    conv.server(0.02, "PA", 200)
    quiet = cap.tcp(("10.0.0.3", 40001), S)
    quiet.handshake(2.0)
    quiet.client(2.01, "PA", 50)
    conv.client(45.0, "A", 0, seq=conv.nxt["c"] - 1)  # keep-alive probe, no byte
    conv.server(45.0001, "A")
    conv.client(75.0, "A", 1, seq=conv.nxt["c"] - 1)  # keep-alive probe, one byte
    conv.server(75.0001, "A")
    conv.client(100.0, "PA", 300)  # reused
    conv.server(100.5, "PA", 400)
    conv.fin_close(101.0)
    return cap


def rst_handshake() -> Capture:
    """Resets the client in SYN-SENT must refuse: no ACK, or an ACK not of its SYN."""
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.client(1.0, "S")
    conv.server(1.0001, "R", seq=0)  # no ACK bit
    conv.server(1.0002, "RA", seq=0, ack=777777)  # acknowledges something else
    conv.server(1.0005, "SA")
    conv.client(1.0007, "A")
    conv.client(1.001, "PA", 10)
    conv.server(1.002, "PA", 20)
    conv.fin_close(1.01)
    return cap


def rst_window() -> Capture:
    """Resets far outside the sender's sequence window (injected, stale), then more data."""
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.handshake(1.0)
    conv.client(1.01, "PA", 100)
    conv.server(1.02, "PA", 200)
    ahead = conv.nxt["s"]
    conv.server(1.03, "RA", seq=ahead + 100_000_000)  # injected: far ahead
    conv.nxt["s"] = ahead
    conv.client(1.04, "R", seq=conv.nxt["c"] - 50_000_000)  # stale: far behind
    conv.client(1.05, "PA", 50)
    conv.server(1.06, "PA", 60)
    conv.fin_close(1.1)
    return cap


def synack_first() -> Capture:
    """The SYN-ACK captured 3 microseconds before its SYN (two rings, one block each)."""
    cap = Capture()
    conv = cap.tcp(C, S)
    conv.nxt["c"] += 1  # the SYN (written next) was sent first: the SYN-ACK acknowledges it
    conv.server(1.0, "SA")
    conv.nxt["c"] -= 1
    conv.client(1.000003, "S")
    conv.client(1.0007, "A")
    conv.client(1.001, "PA", 10)
    conv.server(1.002, "PA", 20)
    conv.fin_close(1.01)
    return cap


def lost_fin() -> Capture:
    """The capture lost the first FIN (client), and on another connection the second."""
    cap = Capture()
    first = cap.tcp(C, S)
    first.handshake(1.0)
    first.client(1.01, "PA", 100)
    first.server(1.02, "PA", 200)
    first.client(1.1, "FA")
    _lose_last(cap)
    first.server(1.1001, "A")  # acknowledges the lost FIN
    first.server(1.1002, "FA")
    first.client(1.1003, "A")  # its sequence number is one past the last byte seen
    second = cap.tcp(("10.0.0.3", 40001), S)
    second.handshake(2.0)
    second.client(2.01, "PA", 100)
    second.server(2.02, "PA", 200)
    second.client(2.1, "FA")
    second.server(2.1001, "FA")
    _lose_last(cap)
    second.client(2.1002, "A")  # acknowledges the lost FIN
    return cap


def lean_transfer() -> Capture:
    """304 080 bytes up in 1448-byte segments over 30 s, a reply, then the client's RST.

    Headers only. In lean mode only the segments crossing a 64 KiB boundary of
    sequence space, the handshake and the RST pass; the RST's sequence number
    and acknowledgement make both totals exact.
    """
    cap = Capture(snaplen=96)
    conv = cap.tcp(C, S)
    conv.handshake(0.0)
    for i in range(210):
        t = round(0.1 + i / 10, 6)
        conv.client(t, "PA", 1448)
        conv.server(t + 0.0001, "A")
    conv.server(30.0, "PA", 500)
    conv.client(30.5, "RA")
    return cap


def preexisting() -> Capture:
    """A low-rate connection open before the capture started, and a later one.

    10.0.0.5:45000 → 10.0.0.6:8080 exchanges 100 + 50 bytes every 3 s from
    t = 0 and closes at 30 s; a new connection's handshake at 12 s moves the
    clock (its sweep) in lean mode, where the small messages do not pass.
    """
    cap = Capture()
    old = Conversation(cap, ("10.0.0.5", 45000), ("10.0.0.6", 8080))
    for i in range(10):
        old.client(3.0 * i, "PA", 100)
        old.server(3.0 * i + 0.001, "PA", 50)
        old.client(3.0 * i + 0.002, "A")
    new = cap.tcp(("10.0.0.3", 40002), S)
    new.handshake(12.0)
    new.fin_close(12.01)
    old.fin_close(30.0)
    return cap


def _standard_ether() -> Capture:
    cap = Capture()
    standard(cap)
    return cap


#: file name under tests/data/gen/ → scenario
CAPTURES: dict[str, Callable[[], Capture]] = {
    "fin_close.pcap": fin_close,
    "rst_close.pcap": rst_close,
    "refused.pcap": refused,
    "unanswered.pcap": unanswered,
    "retransmit.pcap": retransmit,
    "out_of_order.pcap": out_of_order,
    "seq_wrap.pcap": seq_wrap,
    "jumbo_v6_5gib.pcap": jumbo_v6_5gib,
    "midstream.pcap": midstream,
    "port_reuse.pcap": port_reuse,
    "ipv6_ext.pcap": ipv6_ext,
    "fragments.pcap": fragments,
    "not_tcp.pcap": not_tcp,
    "ipv4_options.pcap": ipv4_options,
    "snap96.pcap": snap96,
    "bigtcp.pcap": bigtcp,
    "interim.pcap": interim,
    "capacity.pcap": capacity,
    "pooled.pcap": pooled,
    "rst_handshake.pcap": rst_handshake,
    "rst_window.pcap": rst_window,
    "synack_first.pcap": synack_first,
    "lost_fin.pcap": lost_fin,
    "lean_transfer.pcap": lean_transfer,
    "preexisting.pcap": preexisting,
    "link_ether.pcap": link("ether"),
    "link_vlan.pcap": link("vlan"),
    "link_qinq.pcap": link("qinq"),
    "link_sll.pcap": link("sll"),
    "link_sll2.pcap": link("sll2"),
    "link_raw.pcap": link("raw"),
    "standard.pcapng": _standard_ether,
    "standard.pcap.gz": _standard_ether,
    "standard.pcapng.gz": _standard_ether,
}


def write(name: str, directory: Path) -> Path:
    """Build one capture and write it in the format its file name says."""
    import gzip

    cap = CAPTURES[name]()
    path = directory / name
    if name.endswith(".pcapng"):
        cap.write_pcapng(path)
    elif name.endswith(".pcapng.gz"):
        plain = directory / (name + ".tmp")
        cap.write_pcapng(plain)
        path.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        plain.unlink()
    else:
        cap.write_pcap(path, gz=name.endswith(".gz"))
    return path


def write_big_v4(path: Path, segments: int, payload: int = 65495) -> None:
    """Headers-only IPv4 with total length 65535 per segment, written with struct.

    ``segments`` times ``payload`` bytes from 10.0.0.1:40000 to 10.0.0.2:80 after a
    handshake (ISNs 1000 / 5000), one segment per microsecond, then FIN both ways
    and the last ACK. Too big to commit (about 70 bytes per segment): tests write it.
    """
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def frame(up: bool, seq: int, ack: int, flags: int, plen: int) -> bytes:
        a, b = (src, dst) if up else (dst, src)
        sp, dp = (40000, 80) if up else (80, 40000)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + plen, 0, 0x4000, 64, 6, 0, a, b)
        tcp = struct.pack(
            "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0
        )
        return eth + ip + tcp

    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1))
    t = 0

    def put(data: bytes, plen: int) -> None:
        nonlocal t
        out.extend(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(data), len(data) + plen))
        out.extend(data)
        t += 1

    cseq, sseq = 1000, 5000
    put(frame(True, cseq, 0, 0x02, 0), 0)
    put(frame(False, sseq, cseq + 1, 0x12, 0), 0)
    cseq, sseq = cseq + 1, sseq + 1
    put(frame(True, cseq, sseq, 0x10, 0), 0)
    for _ in range(segments):
        put(frame(True, cseq, sseq, 0x10, payload), payload)
        cseq += payload
    put(frame(True, cseq, sseq, 0x11, 0), 0)
    put(frame(False, sseq, cseq + 1, 0x11, 0), 0)
    put(frame(True, cseq + 1, sseq + 1, 0x10, 0), 0)
    path.write_bytes(bytes(out))
