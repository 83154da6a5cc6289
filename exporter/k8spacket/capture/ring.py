"""One AF_PACKET socket with a TPACKET_V3 mmap ring on one interface.

The kernel fills fixed-size blocks of the ring with the packets that passed the
BPF filter (headers only: the filter's snap length), and hands a block to user
space by setting its status word; the reader walks the block in place and gives
it back by clearing the word. No system call per packet, no copy.

Memory layout read here (``linux/if_packet.h``):

* block descriptor: ``block_status`` at offset 8, ``num_pkts`` at 12,
  ``offset_to_first_pkt`` at 16;
* packet header ``tpacket3_hdr``: next offset, seconds, nanoseconds, captured
  length, wire length, status, MAC offset (``<IIIII4xH``), followed (at 48) by a
  ``sockaddr_ll`` whose ``sll_pkttype`` (offset 58) tells inbound from outbound.

The socket is opened with protocol 0 (it receives nothing), gets its filter and
ring, and only then is bound to the interface: no unfiltered packet is ever
queued. Needs CAP_NET_RAW. :meth:`kernel_stats` reads PACKET_STATISTICS, which
the kernel resets on every read; the ring accumulates the totals.

Limits: the ring's memory is ``block_size * block_count`` per interface,
allocated by the kernel (not charged to RLIMIT_MEMLOCK); a ring must be closed
by the thread that reads it (the memoryview is released first).
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct

from k8spacket.capture.bpf import Program, attach

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
ETH_P_ALL = 3
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
PACKET_OUTGOING = 4
#: offset of ``sll_pkttype`` from the start of a packet's ``tpacket3_hdr``
PKTTYPE_OFFSET = 58
FRAME_SIZE = 2048  # only a unit for the kernel's bookkeeping in V3

_req3 = struct.Struct("=7I")
_stats3 = struct.Struct("=III")


class RingError(OSError):
    """The ring could not be set up on the interface (message names it)."""


class PacketRing:
    """A bound AF_PACKET socket and its mapped TPACKET_V3 ring (see module docstring)."""

    __slots__ = (
        "block_nr",
        "block_size",
        "block_timeout",
        "cur",
        "freezes",
        "ifindex",
        "kernel_drops",
        "kernel_packets",
        "map",
        "name",
        "not_owner",
        "packets",
        "sock",
        "view",
    )

    def __init__(
        self,
        name: str,
        program: Program,
        *,
        ring_bytes: int = 4 << 20,
        block_size: int = 1 << 18,
        block_timeout_ms: int = 20,
    ) -> None:
        if block_size % mmap.PAGESIZE or block_size % FRAME_SIZE:
            raise ValueError(f"ring block size must be a multiple of {mmap.PAGESIZE}")
        block_nr = max(2, ring_bytes // block_size)
        self.name = name
        self.block_size = block_size
        self.block_nr = block_nr
        #: seconds after which the kernel hands over a block that is not full
        self.block_timeout = block_timeout_ms / 1000
        self.cur = 0
        self.packets = 0  # packets read from the ring
        self.not_owner = 0  # packets left to the other interface (exactly-once rule)
        self.kernel_packets = 0  # passed the filter (PACKET_STATISTICS, including drops)
        self.kernel_drops = 0
        self.freezes = 0
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            attach(sock, program)
            frames = block_size // FRAME_SIZE * block_nr
            req = _req3.pack(block_size, block_nr, FRAME_SIZE, frames, block_timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            mm = mmap.mmap(
                sock.fileno(),
                block_size * block_nr,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as e:
            sock.close()
            raise RingError(
                e.errno, f"cannot set up a capture ring on {name}: {e.strerror}"
            ) from None
        try:
            sock.bind((name, ETH_P_ALL))
            self.ifindex = socket.if_nametoindex(name)
        except OSError as e:
            mm.close()
            sock.close()
            raise RingError(e.errno, f"cannot bind capture to {name}: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.map = mm
        self.view = memoryview(mm)

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_filter(self, program: Program) -> None:
        """Replace the socket's BPF program (the kernel swaps it atomically)."""
        attach(self.sock, program)

    def kernel_stats(self) -> tuple[int, int]:
        """Add the kernel's counters since the last read; (total packets, total drops)."""
        if self.sock.fileno() < 0:
            return self.kernel_packets, self.kernel_drops
        packets, drops, freezes = _stats3.unpack(
            self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _stats3.size)
        )
        self.kernel_packets += packets  # the kernel's tp_packets includes the drops
        self.kernel_drops += drops
        self.freezes += freezes
        return self.kernel_packets, self.kernel_drops

    def clear_error(self) -> int:
        """Read (and so reset) the socket's pending error; 0 when none."""
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def close(self) -> None:
        """Unmap the ring and close the socket (call from the reading thread)."""
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self.kernel_stats()
        self.view.release()
        self.map.close()
        self.sock.close()
