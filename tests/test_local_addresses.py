"""Which pods are local: learned from any ring, and from the bridge's tables."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from k8spacket.capture.local import NUD_PERMANENT, LocalAddresses, bridge_pods
from k8spacket.capture.reader import CaptureReader
from k8spacket.capture.ring import PKTTYPE_OFFSET
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker

BLOCK = 4096
MAC_AT = 80  # where the frame starts in the packet's slot


class FakeRing:
    """One TPACKET_V3 block in a bytearray, filled as the kernel would (one packet)."""

    def __init__(self, ifindex: int, frame: bytes, pkttype: int) -> None:
        self.name = f"if{ifindex}"
        self.ifindex = ifindex
        self.block_size = BLOCK
        self.block_nr = 1
        self.cur = 0
        self.packets = 0
        self.not_owner = 0
        buf = bytearray(BLOCK)
        first = 48
        struct.pack_into("<III", buf, 8, 1, 1, first)  # status USER, num_pkts, first offset
        struct.pack_into("<IIIII4xH", buf, first, 0, 100, 0, len(frame), len(frame), MAC_AT)
        buf[first + PKTTYPE_OFFSET] = pkttype
        buf[first + MAC_AT : first + MAC_AT + len(frame)] = frame
        self.view = memoryview(buf)


def test_a_pod_is_local_even_when_the_other_pods_ring_owns_its_connection() -> None:
    """The server's ring read first owns the connection; the client is learned anyway."""
    syn = bytes(Ether() / IP(src="10.244.1.9", dst="10.244.1.3") / TCP(sport=40000, dport=80,
                                                                        flags="S"))  # fmt: skip
    local = LocalAddresses()
    records: list[ConnectionRecord] = []
    reader = CaptureReader(ConnectionTracker(records.append), local)
    server_ring = FakeRing(2, syn, pkttype=4)  # PACKET_OUTGOING on the server's veth
    client_ring = FakeRing(3, syn, pkttype=0)  # arriving from the new pod on its own veth
    reader._drain(server_ring)  # type: ignore[arg-type]
    reader._drain(client_ring)  # type: ignore[arg-type]
    assert (server_ring.not_owner, client_ring.not_owner) == (0, 1)  # the server's ring owns it
    assert local.is_local("10.244.1.9")
    assert not local.is_local("10.244.1.3")  # it has not sent anything yet


def test_bridge_tables_name_the_port_behind_each_neighbour() -> None:
    fdb = [
        (3, 2, "02:cf:de:e7:43:38", 0x02),  # learned on port 3 of bridge 2
        (3, 2, "7a:9a:36:34:59:72", NUD_PERMANENT),  # the port's own MAC
        (4, 2, "E2:3E:97:04:E2:ED", 0x02),
        (2, 0, "33:33:00:00:00:01", NUD_PERMANENT),  # multicast, no bridge
    ]
    neighbours = [
        (2, "10.213.1.2", "02:cf:de:e7:43:38", 0x08),  # stale is still right
        (2, "10.213.1.4", "e2:3e:97:04:e2:ed", 0x02),
        (2, "10.213.1.7", "", 0x01),  # incomplete
        (5, "10.213.0.6", "e2:cc:15:74:fd:9e", 0x02),  # an uplink neighbour: not behind a port
        (2, "fe80::1", "02:cf:de:e7:43:38", 0x02),  # link-local
        (2, "10.213.1.8", "7a:9a:36:34:59:72", 0x02),  # the port's own MAC: not a pod
    ]
    assert bridge_pods(fdb, neighbours) == [("10.213.1.2", 3), ("10.213.1.4", 4)]
