"""Synthetic captures for benchmarks: many interleaved TCP connections, fast to write.

Packets are packed with ``struct`` (scapy would take minutes for a million) as
headers-only Ethernet frames (snap length 96) whose IP length fields carry the
full payload, like a real ``tcpdump -s 96`` capture. Every connection is a full
lifecycle: SYN, SYN-ACK, ACK, data both ways, FIN, FIN-ACK, ACK. The expected
byte totals are returned so a benchmark can check the tracker got them right.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

_ETH4 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_ETH6 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"
_ip4 = struct.Struct("!BBHHHBBH4s4s")
_ip6 = struct.Struct("!IHBB16s16s")
_tcp = struct.Struct("!HHIIBBHHH")
_rec = struct.Struct("<IIII")

SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08


def _frame(
    v6: bool,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    plen: int,
) -> tuple[bytes, int]:
    tcp = _tcp.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    if v6:
        ip = _ip6.pack(6 << 28, 20 + plen, 6, 64, src, dst)
        frame = _ETH6 + ip + tcp
    else:
        ip = _ip4.pack(0x45, 0, 40 + plen, 0, 0x4000, 64, 6, 0, src, dst)
        frame = _ETH4 + ip + tcp
    return frame, len(frame) + plen


def _connection(i: int, packets: int, v6: bool) -> tuple[Iterator[tuple[bytes, int]], int, int]:
    """Frames of connection ``i`` and its (client→server, server→client) byte totals."""
    if v6:
        cli = ipaddress.IPv6Address(0xFD000000000000000000000000000000 + 0x10000 + i).packed
        srv = ipaddress.IPv6Address(0xFD000000000000000000000000000000 + 1 + i % 50).packed
    else:
        cli = ipaddress.IPv4Address(0x0A000000 + 0x10000 + i).packed
        srv = ipaddress.IPv4Address(0x0A640000 + 1 + i % 50).packed
    sport = 32768 + i % 28000
    dport = 8080 if i % 2 else 443
    data_pairs = max(1, (packets - 6) // 2)
    creq, sresp = 120 + i % 200, 1200 + i % 248
    c_isn = (i * 2654435761) & 0xFFFFFFFF
    s_isn = (i * 40503 + 12345) & 0xFFFFFFFF

    def frames() -> Iterator[tuple[bytes, int]]:
        c, s = c_isn, s_isn
        yield _frame(v6, cli, srv, sport, dport, c, 0, SYN, 0)
        c += 1
        yield _frame(v6, srv, cli, dport, sport, s, c, SYN | ACK, 0)
        s += 1
        yield _frame(v6, cli, srv, sport, dport, c, s, ACK, 0)
        for _ in range(data_pairs):
            yield _frame(v6, cli, srv, sport, dport, c, s, ACK | PSH, creq)
            c += creq
            yield _frame(v6, srv, cli, dport, sport, s, c, ACK | PSH, sresp)
            s += sresp
        yield _frame(v6, cli, srv, sport, dport, c, s, FIN | ACK, 0)
        c += 1
        yield _frame(v6, srv, cli, dport, sport, s, c, FIN | ACK, 0)
        s += 1
        yield _frame(v6, cli, srv, sport, dport, c, s, ACK, 0)

    return frames(), creq * data_pairs, sresp * data_pairs


def write_capture(
    path: str, packets: int = 1_000_000, connections: int = 10_000, concurrency: int = 2_000
) -> dict[str, int]:
    """Write a pcap; return counts and the expected byte totals."""
    per_conn = max(8, packets // connections)
    expected_sent = expected_received = written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1))
        active: list[Iterator[tuple[bytes, int]]] = []
        nxt = 0
        t_us = 1_700_000_000 * 1_000_000
        out: list[bytes] = []
        while nxt < connections or active:
            while len(active) < concurrency and nxt < connections:
                it, cs, sr = _connection(nxt, per_conn, v6=nxt % 2 == 1)
                expected_sent += cs
                expected_received += sr
                active.append(it)
                nxt += 1
            still: list[Iterator[tuple[bytes, int]]] = []
            for it in active:
                fr = next(it, None)
                if fr is None:
                    continue
                still.append(it)
                frame, wirelen = fr
                t_us += 1
                out.append(_rec.pack(t_us // 1_000_000, t_us % 1_000_000, len(frame), wirelen))
                out.append(frame)
                written += 1
            active = still
            if len(out) > 200_000:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    return {
        "packets": written,
        "connections": connections,
        "bytes_sent": expected_sent,
        "bytes_received": expected_received,
    }


if __name__ == "__main__":
    import sys

    print(write_capture(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000))
