"""The capture loop: one thread, every ring, epoll, decode in place, exactly-once.

One thread waits on all rings with epoll and, for each ready ring, walks its
filled blocks in place: ``struct`` on the ring's memoryview, the Ethernet
decoder from :mod:`k8spacket.decode`, then the connection tracker. The same
thread runs the tracker's timer (``sweep``) and reads the kernel's drop
counters once a second, so the tracker needs no lock.

Exactly-once (docs/design.md): a connection between two pods of this node crosses
two watched interfaces, and each of them sees *both* directions (inbound on
the sender's veth, outgoing on the receiver's). The first interface on which
the reader meets a connection becomes its *owner*: the tracker keeps the
ifindex in the connection's own entry, and :meth:`ConnectionTracker.add`
refuses the packets of that connection captured on any other interface (left
out and counted in ``not_owner``). Taking both directions from one ring keeps
their order (rings are read a block at a time, so the two rings are not
interleaved packet by packet; splitting directions across rings would show a
SYN-ACK before its SYN). Connections with one local end are only seen on one
interface anyway. Ownership ends with the entry; when a ring closes its
entries are released (one scan, only then). No periodic scan of any table.

The source address of every packet arriving *from* a pod (not
``PACKET_OUTGOING`` on its host-side veth) is learned as a local pod address
(:mod:`k8spacket.capture.local`), on every ring, owner or not; that decides
``reporter``.

Lean capture (``capture.mode: lean``, :mod:`k8spacket.capture.bpf`): every ring
starts with the full program and, ``lean_warmup`` seconds after it was attached,
is switched to the lean program (``SO_ATTACH_FILTER`` again: the kernel swaps
filters atomically), so connections that were open before the ring existed are
learned from whatever they send during the warm-up.

Rings are handed over with :meth:`attach` and taken back with :meth:`detach`
from any thread; both are applied by the loop thread (a ring is unmapped only
by the thread that reads it). A ring whose socket reports an error (its
interface went down or vanished) is reported through ``on_ring_error`` and left
for the interface watcher to detach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from k8spacket.capture.bpf import Program
from k8spacket.capture.local import LocalAddresses
from k8spacket.capture.ring import PKTTYPE_OFFSET, PacketRing
from k8spacket.decode import SKIP_REASONS, decode_ethernet
from k8spacket.flows.tracker import ConnectionTracker

log = logging.getLogger(__name__)

_block = struct.Struct("<II").unpack_from  # num_pkts, offset_to_first_pkt (at 12)
_hdr = struct.Struct("<IIIII4xH").unpack_from  # next, sec, nsec, snaplen, len, mac
_release = struct.Struct("<I").pack_into
_EVENTS = select.EPOLLIN | select.EPOLLERR


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceStats:
    """Counters of one capture interface (plain numbers, safe to hand to any thread)."""

    packets: int  # read from the ring
    drops: int  # dropped by the kernel: the ring was full (PACKET_STATISTICS)
    kernel_packets: int  # passed the filter, including drops
    not_owner: int  # left to the other pod's interface (exactly-once rule)


class CaptureReader:
    """Reads every attached ring on one thread and feeds one tracker."""

    def __init__(
        self,
        tracker: ConnectionTracker,
        local: LocalAddresses,
        *,
        clock: Callable[[], float] = time.time,
        stats_interval: float = 1.0,
        on_ring_error: Callable[[str, int], None] | None = None,
        lean_program: Program | None = None,
        lean_warmup: float = 0.0,
    ) -> None:
        self.tracker = tracker
        self.lean_program = lean_program
        self.lean_warmup = lean_warmup
        #: ring fd → clock time at which it switches to the lean program
        self._lean_at: dict[int, float] = {}
        self.local = local
        self.clock = clock
        self.stats_interval = stats_interval
        self.on_ring_error = on_ring_error
        #: decode skip code → count (index = code, see ``decode.SKIP_REASONS``)
        self.skips = [0] * (max(SKIP_REASONS) + 1)
        #: called with the time on every loop turn (at least every 0.5 s)
        self.on_tick: Callable[[float], None] | None = None
        self._rings: dict[int, PacketRing] = {}  # fd → ring
        self._by_name: dict[str, PacketRing] = {}
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = threading.Event()
        self.running = threading.Event()
        self.finished = threading.Event()

    # ------------------------------------------------------------ control
    def attach(self, ring: PacketRing) -> None:
        """Start reading ``ring`` (ownership passes to the reader)."""
        self._commands.put(("attach", ring))
        os.eventfd_write(self._wake, 1)

    def detach(self, name: str) -> None:
        """Stop reading the ring of interface ``name`` and close it."""
        self._commands.put(("detach", name))
        os.eventfd_write(self._wake, 1)

    def learn(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Mark addresses (ints) as local pods behind ifindexes (e.g. from pod routes)."""
        self._commands.put(("learn", list(pairs)))
        os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        """Ask the loop to finish: drain, close rings, flush the tracker."""
        self._stop.set()
        os.eventfd_write(self._wake, 1)

    # -------------------------------------------------------------- stats
    def interface_stats(self) -> dict[str, InterfaceStats]:
        """A snapshot of per-interface counters (kernel counters ≤ 1 s old)."""
        return {
            r.name: InterfaceStats(r.packets, r.kernel_drops, r.kernel_packets, r.not_owner)
            for r in list(self._by_name.values())
        }

    def decode_errors(self) -> dict[str, int]:
        """reason → packets the decoder skipped."""
        return {SKIP_REASONS[c]: n for c, n in enumerate(self.skips) if c in SKIP_REASONS}

    @property
    def interfaces(self) -> list[str]:
        return sorted(self._by_name)

    # --------------------------------------------------------------- loop
    def run(self) -> None:
        """The capture loop; returns after :meth:`stop` (final records flushed).

        Restartable: when the loop raises, only its epoll is closed; the rings
        and the tracker (with the connections' owners) stay as they are, so the supervisor
        (:mod:`k8spacket.supervise`) can call :meth:`run` again and reading
        continues at the block that was being read. Every finished block is
        released (and ``ring.cur`` moved past it) before the next one is read.
        """
        ep = select.epoll()
        ep.register(self._wake, select.EPOLLIN)
        rings = self._rings
        for fd in rings:
            ep.register(fd, _EVENTS)
        next_stats = self.clock() + self.stats_interval
        tracker = self.tracker
        tracker.sweep_in_add = False  # swept here, a slice per loop turn
        sweeping = False
        self.running.set()
        try:
            while not self._stop.is_set():
                now = self.clock()
                wait = 0.0 if sweeping else min(next_stats, tracker.next_sweep) - now
                for fd, ev in ep.poll(min(max(wait, 0.0), 0.5)):
                    ring = rings.get(fd)
                    if ring is None:
                        if fd == self._wake:
                            os.eventfd_read(self._wake)
                            self._apply_commands(ep)
                        continue
                    if ev & select.EPOLLIN:
                        self._drain(ring)
                    if ev & select.EPOLLERR:
                        self._ring_error(ring)
                now = self.clock()
                if now >= next_stats:
                    next_stats = now + self.stats_interval
                    self._read_kernel_stats()
                if sweeping or now >= tracker.next_sweep:
                    sweeping = tracker.sweep_step(now)
                if self._lean_at:
                    self._go_lean(now)
                if self.on_tick is not None:
                    self.on_tick(now)
            self._apply_commands(ep)
        except BaseException:
            self.running.clear()
            ep.close()
            raise
        self.running.clear()
        self._teardown(ep)

    def close(self) -> None:
        """Drain and close every ring and flush the tracker, from a thread that is not
        running :meth:`run` (the agent's shutdown after the supervisor gave up on it)."""
        if not self.finished.is_set():
            self._teardown(select.epoll())

    def _teardown(self, ep: select.epoll) -> None:
        rings = self._rings
        try:
            if rings:
                # the kernel hands over a block that is not full only after its
                # timeout: wait for it, so the last packets are not left behind
                time.sleep(max(r.block_timeout for r in rings.values()) + 0.005)
            # every ring drained before any is closed: closing a ring releases its
            # connections' ownership, and another ring's copies of their packets,
            # still unread, would then be counted as new connections
            for ring in list(rings.values()):
                self._drain(ring)
            for ring in list(rings.values()):
                self._close(ep, ring, keep_stats=True)
            ep.close()
            os.close(self._wake)
            self.tracker.flush_all(self.clock())
        finally:
            self.finished.set()

    def _apply_commands(self, ep: select.epoll) -> None:
        while True:
            try:
                op, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if op == "attach":
                assert isinstance(arg, PacketRing)
                old = self._by_name.get(arg.name)
                if old is not None:
                    self._close(ep, old)
                self._rings[arg.fileno()] = arg
                self._by_name[arg.name] = arg
                if self.lean_program is not None:
                    self._lean_at[arg.fileno()] = self.clock() + self.lean_warmup
                    self._go_lean(self.clock())
                ep.register(arg.fileno(), _EVENTS)
                self._drain(arg)
            elif op == "learn":
                learned = self.local.learned
                for addr, ifindex in arg:
                    learned.setdefault(addr, ifindex)
            else:
                ring = self._by_name.get(str(arg))
                if ring is not None:
                    self._drain(ring)
                    self._close(ep, ring)

    def _close(self, ep: select.epoll, ring: PacketRing, keep_stats: bool = False) -> None:
        """Close a ring; its counters stay visible only when ``keep_stats`` (shutdown)."""
        fd = ring.fileno()
        self._rings.pop(fd, None)
        self._lean_at.pop(fd, None)
        if self._by_name.get(ring.name) is ring and not keep_stats:
            del self._by_name[ring.name]
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(fd)
        ring.close()
        self.local.forget_interface(ring.ifindex)
        self.tracker.release_owner(ring.ifindex)

    def _go_lean(self, now: float) -> None:
        """Switch the rings whose warm-up is over to the lean program."""
        assert self.lean_program is not None
        for fd in [fd for fd, at in self._lean_at.items() if at <= now]:
            del self._lean_at[fd]
            ring = self._rings.get(fd)
            if ring is None:
                continue
            try:
                ring.set_filter(self.lean_program)
            except OSError as e:  # the interface went away: the watcher detaches it
                log.warning("cannot switch %s to the lean filter: %s", ring.name, e)
            else:
                log.debug("%s: lean capture after the warm-up", ring.name)

    def _ring_error(self, ring: PacketRing) -> None:
        try:
            err = ring.clear_error()
        except OSError as e:
            err = e.errno or -1
        if err and self.on_ring_error is not None:
            self.on_ring_error(ring.name, err)

    def _read_kernel_stats(self) -> None:
        for ring in list(self._rings.values()):
            try:
                ring.kernel_stats()
            except OSError as e:
                log.debug("PACKET_STATISTICS on %s: %s", ring.name, e)

    def _drain(self, ring: PacketRing) -> None:
        """Walk every block the kernel has handed over; the hot path."""
        mv = ring.view
        bs = ring.block_size
        nb = ring.block_nr
        i = ring.cur
        add = self.tracker.add
        dec = decode_ethernet
        learned = self.local.learned
        ifindex = ring.ifindex
        skips = self.skips
        not_owner = 0
        while True:
            base = i * bs
            if not mv[base + 8] & 1:  # block_status & TP_STATUS_USER
                break
            num, off = _block(mv, base + 12)
            off += base
            for _ in range(num):
                nxt, sec, nsec, snap, wire, mac = _hdr(mv, off)
                r = dec(mv, off + mac, snap, wire)  # type: ignore[arg-type]
                if r.__class__ is tuple:
                    if mv[off + PKTTYPE_OFFSET] != 4:  # not PACKET_OUTGOING: from the pod
                        src = r[0] >> (r[1] + 16)
                        if src not in learned:
                            learned[src] = ifindex
                    if not add(sec + nsec * 1e-9, r, ifindex):
                        not_owner += 1
                else:
                    skips[r] += 1  # type: ignore[index]
                off += nxt
            _release(mv, base + 8, 0)
            i = i + 1 if i + 1 < nb else 0
            ring.cur = i
            ring.packets += num
        ring.not_owner += not_owner
