"""Deterministic test captures: fixed timestamps, fixed ISNs, no randomness.

Scenario scripts (``captures.py``, ``demo.py``) describe TCP conversations with
:class:`Conversation`; :class:`Capture` wraps the IP packets in a link layer
(Ethernet with or without VLAN tags, Linux cooked v1/v2, raw IP), applies a snap
length and writes classic pcap (gzip optional) or pcapng. IP and TCP headers are
built by scapy; the file formats are written here with ``struct`` so that every
byte (timestamps in whole microseconds, captured and wire lengths) is exact.

Regenerate the committed files with ``PYTHONPATH=tests python -m pcapgen``.
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, Jumbo
from scapy.packet import Packet, Raw

LINKTYPES = {"ether": 1, "vlan": 1, "qinq": 1, "raw": 101, "sll": 113, "sll2": 276}
_MAC_DST = bytes.fromhex("020000000002")
_MAC_SRC = bytes.fromhex("020000000001")


def usec(t: float) -> int:
    """Seconds → whole microseconds (all timestamps are kept as exact ints)."""
    return round(t * 1_000_000)


def link_wrap(link: str, ip: bytes) -> bytes:
    """An IP packet inside the given link layer (EtherType chosen by the version nibble)."""
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    if link == "raw":
        return ip
    if link == "ether":
        return _MAC_DST + _MAC_SRC + struct.pack("!H", etype) + ip
    if link == "vlan":
        return _MAC_DST + _MAC_SRC + struct.pack("!HHH", 0x8100, 42, etype) + ip
    if link == "qinq":
        return _MAC_DST + _MAC_SRC + struct.pack("!HHHHH", 0x88A8, 100, 0x8100, 42, etype) + ip
    if link == "sll":
        # packet type 0 (to us), ARPHRD_ETHER, address length 6, address (8 bytes), protocol
        return struct.pack("!HHH8sH", 0, 1, 6, _MAC_SRC, etype) + ip
    if link == "sll2":
        # protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address
        return struct.pack("!HHIHBB8s", etype, 0, 7, 1, 0, 6, _MAC_SRC) + ip
    raise ValueError(f"unknown link {link!r}")


@dataclass
class Frame:
    t: int  # microseconds
    data: bytes  # as captured (already cut to the snap length)
    wirelen: int


@dataclass
class Capture:
    """Frames of one link type, in the order they were added (not sorted by time)."""

    link: str = "ether"
    snaplen: int = 262144
    frames: list[Frame] = field(default_factory=list)

    @property
    def linktype(self) -> int:
        return LINKTYPES[self.link]

    def add_ip(self, t: float, ip: bytes | Packet, extra: int = 0) -> None:
        """Add one IP packet at time ``t``; ``extra`` wire bytes not materialised."""
        frame = link_wrap(self.link, bytes(ip))
        self.add_frame(t, frame, len(frame) + extra)

    def add_frame(self, t: float, frame: bytes, wirelen: int | None = None) -> None:
        wl = len(frame) if wirelen is None else wirelen
        self.frames.append(Frame(usec(t), frame[: self.snaplen], wl))

    def tcp(self, client: tuple[str, int], server: tuple[str, int], **kw: Any) -> Conversation:
        return Conversation(self, client, server, **kw)

    # ------------------------------------------------------------- writers
    def pcap_bytes(self) -> bytes:
        out = io.BytesIO()
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.linktype))
        for f in self.frames:
            sec, us = divmod(f.t, 1_000_000)
            out.write(struct.pack("<IIII", sec, us, len(f.data), f.wirelen))
            out.write(f.data)
        return out.getvalue()

    def write_pcap(self, path: Path, *, gz: bool = False) -> None:
        data = self.pcap_bytes()
        if gz:
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as z:
                z.write(data)
            data = buf.getvalue()
        Path(path).write_bytes(data)

    def write_pcapng(self, path: Path) -> None:
        """pcapng through scapy's writer (a second, independent producer)."""
        from scapy.utils import RawPcapNgWriter

        w = RawPcapNgWriter(str(path))
        w.linktype = self.linktype
        w.write_header(None)
        for f in self.frames:
            sec = Decimal(f.t) / 1_000_000
            w.write_packet(f.data, sec=sec, caplen=len(f.data), wirelen=f.wirelen)
        w.close()


class Conversation:
    """One TCP connection; ``client()`` / ``server()`` add a segment from that side.

    Sequence numbers advance by the payload (plus one for SYN and FIN) unless
    ``seq`` is given (retransmissions, out-of-order segments). ``ack`` defaults to
    the other side's next sequence number when the segment has the ACK flag.
    """

    def __init__(
        self,
        cap: Capture,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        isn_client: int = 1000,
        isn_server: int = 5000,
        client_ext: list[Packet] | None = None,
        ip_options: list[Any] | None = None,
    ) -> None:
        self.cap = cap
        self.ends = {"c": client, "s": server}
        self.nxt = {"c": isn_client & 0xFFFFFFFF, "s": isn_server & 0xFFFFFFFF}
        self.v6 = ":" in client[0]
        self.client_ext = client_ext or []
        self.ip_options = ip_options

    def client(self, t: float, flags: str = "A", data: int = 0, **kw: Any) -> None:
        self._segment("c", "s", t, flags, data, **kw)

    def server(self, t: float, flags: str = "A", data: int = 0, **kw: Any) -> None:
        self._segment("s", "c", t, flags, data, **kw)

    def _segment(
        self,
        me: str,
        peer: str,
        t: float,
        flags: str,
        data: int,
        *,
        seq: int | None = None,
        ack: int | None = None,
        virtual: int = 0,
        zero_len: bool = False,
        jumbo: bool = False,
    ) -> None:
        """Add one segment.

        ``virtual`` payload bytes are counted in the IP length and the wire length
        but not materialised. ``zero_len`` writes an IP length field of zero (BIG
        TCP: only the wire length tells the size); ``jumbo`` (IPv6) carries the
        length in a hop-by-hop jumbo payload option with a payload length of zero.
        """
        s = self.nxt[me] if seq is None else seq & 0xFFFFFFFF
        if ack is None:
            ack = self.nxt[peer] if "A" in flags else 0
        end = (s + data + virtual + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        if seq is None or ((end - self.nxt[me]) & 0xFFFFFFFF) < 0x80000000:
            self.nxt[me] = end
        (sa, sp), (da, dp) = self.ends[me], self.ends[peer]
        tcp = TCP(sport=sp, dport=dp, seq=s, ack=ack, flags=flags, window=65535)
        payload = Raw(bytes(data)) if data else b""
        if self.v6:
            exts = list(self.client_ext) if me == "c" else []
            if jumbo:
                exts.insert(0, IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=0)]))
            ip: Packet = IPv6(src=sa, dst=da)
            for e in exts:
                ip = ip / e.copy()
            pkt = ip / tcp / payload
            size = len(bytes(pkt)) - 40 + virtual
            if jumbo:
                pkt[Jumbo].jumboplen = size
                pkt[IPv6].plen = 0
            elif zero_len:
                pkt[IPv6].plen = 0
            elif virtual:
                pkt[IPv6].plen = size
        else:
            ip = IP(src=sa, dst=da, ttl=64, id=0)
            if self.ip_options is not None:
                ip.options = self.ip_options
            pkt = ip / tcp / payload
            if zero_len:
                pkt[IP].len = 0
            elif virtual:
                pkt[IP].len = len(bytes(pkt)) + virtual
        self.cap.add_ip(t, bytes(pkt), virtual)

    def handshake(self, t: float, rtt: float = 0.0005, ack_delay: float = 0.0002) -> None:
        """SYN at ``t``, SYN-ACK at ``t + rtt``, ACK at ``t + rtt + ack_delay``."""
        self.client(t, "S")
        self.server(t + rtt, "SA")
        self.client(t + rtt + ack_delay, "A")

    def fin_close(self, t: float, by: str = "c", gap: float = 0.0001) -> None:
        """FIN from ``by``, FIN-ACK from the other side, the last ACK: 3 segments."""
        first, second = (self.client, self.server) if by == "c" else (self.server, self.client)
        first(t, "FA")
        second(t + gap, "FA")
        first(t + 2 * gap, "A")
