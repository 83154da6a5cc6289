"""The connection tracker: decoded TCP packets in, connection records out.

One table entry per TCP connection, keyed by the packed addresses and ports of
the first packet seen (the reverse direction is looked up on a miss). Rules
(docs/design.md, "Connection records"):

* client and server come from the first SYN; with no SYN seen, the side using
  the ephemeral port is the client (``midstream``). A SYN-ACK captured just
  before its SYN (reordered capture) still makes one connection: the SYN that
  the SYN-ACK acknowledges joins the entry the SYN-ACK made;
* bytes per direction are the advance of the sequence space (modulo 2**32, so
  wraps past 4 GiB are fine): retransmissions and duplicates add nothing, a gap
  filled later is counted once, SYN and FIN flags are not bytes. An advance
  seen only in a packet without payload (a pure ACK past the last byte seen, or
  the peer's acknowledgement in lean mode) holds its last unit back: it is
  either a byte the capture lost or a FIN it lost, and later packets decide;
* handshake time is first SYN → the client's ACK of the SYN-ACK (lean mode,
  where that ACK is not captured: first SYN → SYN-ACK);
* a connection ends on a valid RST, on the ACK of the second FIN (lean mode: at
  the second FIN), also when one FIN was lost and the peer's acknowledgement
  covers it. A RST the receiving stack would refuse (RFC 9293, RFC 5961) is
  ignored and counted (``invalid_rst``): during the handshake one whose ACK does
  not acknowledge the SYN, afterwards one whose sequence number is outside
  ``RST_WINDOW`` of the sender's position;
* silent for ``close_older_than``: the connection's bytes go out in an interim
  record and the entry turns *dormant* (same slots, one state bit; still open);
  a later packet continues it. Only after ``forget_after`` of silence, or when
  the table needs room, does it end with ``close: idle`` (``forget_after ==
  close_older_than`` gives the old "idle means over" rule). A SYN nobody
  answered ends ``idle`` after ``close_older_than``, as before. In lean mode
  silence is not evidence (small messages pass no filter), so an established
  connection is forgotten only for room or, half closed, after ``forget_after``;
* while open, interim records (``close=None``) are emitted every
  ``flush_period`` so long-lived connections show up early; a connection with
  no new bytes since its last record gets none (500,000 quiet connections would
  otherwise flood the publisher with empty records);
* the table has a hard size cap: when it is full the least recently active
  connections are flushed (counted as evicted by ``capacity``);
* a SYN on a key whose connection is closing or closed starts a new connection
  (port reuse);
* each entry remembers the interface (ifindex) that first showed it: the
  exactly-once rule of the capture reader (:meth:`ConnectionTracker.add`
  returns ``False`` for a copy seen on another interface).

Time comes in with each packet (``ts``) so replay and tests drive the clock. This
module is the hot path: flat code, ``__slots__``, ints for state; rare cases go
to the slow methods.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from operator import attrgetter

from k8spacket.decode import Decoded, key_endpoints, reverse_key
from k8spacket.flows.record import ConnectionRecord, Outcome

# TCP flags
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10

MASK = 0xFFFFFFFF
HALF = 0x80000000
_M48 = (1 << 48) - 1
_M144 = (1 << 144) - 1

# Connection state bits
S_SYN = 1  # client SYN seen
S_SYNACK = 2  # server SYN-ACK seen
S_ESTAB = 4  # client ACKed the SYN-ACK (handshake timed)
S_CFIN = 8
S_SFIN = 16
S_CLOSED = 32  # final record emitted; entry kept briefly so late packets are absorbed
S_CSEQ = 64  # client sequence position known
S_SSEQ = 128  # server sequence position known
S_MID = 256  # no SYN seen
S_REFUSED = 512
S_REPORTED = 1024  # at least one record emitted
S_RST = 2048
S_DORMANT = 4096  # silent past close_older_than: bytes flushed, still open
S_CPEND = 8192  # the client's last sequence unit is a lost byte or a lost FIN
S_SPEND = 16384
S_LEAN = 32768  # tracked from a lean capture (see module docstring)
#: any of these sends a data packet down the slow path
_SLOW = S_CFIN | S_SFIN | S_CLOSED | S_DORMANT | S_CPEND | S_SPEND | S_LEAN

_EPHEMERAL_MIN = 32768
#: Silence after which a dormant connection ends (``tracker.forgetAfter``).
DEFAULT_FORGET_AFTER = 600.0
#: Entries one live sweep step looks at (well under 1 ms when none needs a record).
SWEEP_SLICE = 500
#: Records one live sweep step emits at most (when many connections fall due at
#: once: each record is a few microseconds, more while the publisher and a
#: scrape compete for the interpreter lock); the rest of the slice waits for the
#: next loop turn.
SWEEP_EMIT = 64
#: The share of the table a full table ends, least recently active first (5%).
EVICT_SHARE = 20
#: Up to this many connections, a full table ends exactly its least recently
#: active share at once (a scan of the whole table, well under a millisecond).
EVICT_EXACT_MAX = 4096
#: Bigger tables make room in steps (a whole scan of 500,000 and 25,000 records
#: at once held the capture thread for 140-320 ms): a step ends at most this many
#: connections, those it finds below the threshold estimated from a sample
#: (:meth:`ConnectionTracker._room_step`), looking at most ``EVICT_SCAN`` entries.
EVICT_BATCH = 64
EVICT_SCAN = 4096
#: Entries sampled for the threshold (the 5% quantile of 1,024 is within about
#: 2% of the table's, three standard deviations)
EVICT_SAMPLE = 1024
#: How long a closed connection's entry absorbs late packets (final ACKs, RST echoes).
CLOSED_LINGER = 2.0
#: A RST whose sequence number is further than this from the sender's known
#: position is outside any receive window this tracker can assume (Linux's
#: default maximum receive buffer is 6 MiB); lean captures lag by at most one
#: boundary plus one segment, far less.
RST_WINDOW = 1 << 23

Sink = Callable[[ConnectionRecord], None]


class Connection:
    """State of one tracked TCP connection (kept small: one per open connection)."""

    __slots__ = (
        "client_bytes",
        "client_first",
        "client_next",
        "half",
        "handshake",
        "key",
        "last",
        "owner",
        "reported_at",
        "server_bytes",
        "server_next",
        "start",
        "state",
    )

    def __init__(
        self, key: int, half: int, client_first: bool, state: int, start: float, owner: int
    ) -> None:
        self.key = key
        self.half = half
        self.client_first = client_first  # True when the key's first address is the client
        self.state = state
        self.client_next = 0  # client: next sequence number expected (high-water mark)
        self.server_next = 0
        self.client_bytes = 0  # client → server bytes since the last record
        self.server_bytes = 0
        self.start = start  # first packet (the first SYN for a normal connection)
        self.last = start  # last packet
        self.reported_at = start  # time of the last record (for interim records)
        self.handshake: float | None = None
        self.owner = owner  # ifindex of the interface that showed it first (0: any)


def _lost_fin(st: int) -> bool:
    """One side's FIN seen, the other's held unit acknowledged: the FIN the capture lost."""
    return bool(
        (st & S_SFIN and st & S_CPEND and not st & S_CFIN)
        or (st & S_CFIN and st & S_SPEND and not st & S_SFIN)
    )


def sender_is_client(sport: int, dport: int) -> bool:
    """The ephemeral-port rule for connections picked up without a SYN."""
    s_eph = sport >= _EPHEMERAL_MIN
    d_eph = dport >= _EPHEMERAL_MIN
    if s_eph != d_eph:
        return s_eph
    if sport != dport:
        return sport > dport
    return True


class ConnectionTracker:
    """Turns decoded TCP packets into :class:`ConnectionRecord` objects.

    ``sink`` receives every record. ``is_local`` (address string → bool) decides
    the ``reporter`` field; without it ``reporter`` stays ``None``. ``lean``
    says the packets come through the lean capture filter (control packets and
    sequence-boundary crossings only, :mod:`k8spacket.capture.bpf`).
    """

    __slots__ = (
        "_evict_at",
        "_evict_before",
        "_evict_left",
        "_listed",
        "_order",
        "_pass_at",
        "_pass_end",
        "_pass_kept",
        "_rng",
        "close_older_than",
        "connections",
        "evicted",
        "flush_period",
        "forget_after",
        "ignored",
        "is_local",
        "lean",
        "max_connections",
        "next_sweep",
        "records",
        "sink",
        "sweep_in_add",
        "table",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        close_older_than: float = 20.0,
        flush_period: float = 10.0,
        forget_after: float | None = None,
        max_connections: int = 500_000,
        is_local: Callable[[str], bool] | None = None,
        lean: bool = False,
    ) -> None:
        if close_older_than <= 0 or flush_period <= 0:
            raise ValueError("close_older_than and flush_period must be positive")
        if forget_after is None:  # the default, 10 minutes, never shorter than the idle timeout
            forget_after = max(DEFAULT_FORGET_AFTER, close_older_than)
        if forget_after < close_older_than:
            raise ValueError("forget_after must be at least close_older_than")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.sink = sink
        self.close_older_than = close_older_than
        self.flush_period = flush_period
        self.forget_after = forget_after
        self.max_connections = max_connections
        self.is_local = is_local
        self.lean = lean
        self.table: dict[int, Connection] = {}
        #: packet time of the next sweep (the first packet triggers one on the empty table)
        self.next_sweep = float("-inf")
        #: True: :meth:`add` runs a whole :meth:`sweep` when packet time passes
        #: ``next_sweep`` (replay); the live reader sets False and calls
        #: :meth:`sweep_step` from its loop instead
        self.sweep_in_add = True
        # Every connection in the order it was created (the table's insertion
        # order), walked by the sweep: a pass reads it by position and writes the
        # connections it keeps back in place, so a pass starts without copying the
        # table's keys (500,000 of them were 3.5-5 ms of C holding the interpreter
        # lock on the capture thread). A connection removed from the table outside
        # the sweep (capacity, port reuse) stays here until the sweep reaches it.
        self._order: list[Connection] = []
        self._pass_end = -1  # len(_order) when the sliced pass under way began; -1: none
        self._pass_at = 0  # next position the pass reads
        self._pass_kept = 0  # next position a kept connection is written to
        # connections appended to _order since the last slice: a slice reads at
        # least twice that many positions, so a pass outruns arrivals and the
        # order stays within about twice the table (dead entries included)
        self._listed = 0
        # making room in a big full table: the position of _order the next step
        # looks at, the activity threshold, and how many more it may end before
        # the threshold is estimated again (from a seeded sample: replays repeat)
        self._evict_at = 0
        self._evict_before = float("-inf")
        self._evict_left = 0
        self._rng = random.Random(0)
        self.records = 0
        self.connections = 0
        #: reason → count (``idle``, ``capacity``): entries removed before they closed.
        self.evicted: dict[str, int] = {"idle": 0, "capacity": 0}
        #: reason → count of packets the tracker could not attribute or refused.
        self.ignored: dict[str, int] = {"stray_rst": 0, "after_close": 0, "invalid_rst": 0}

    # ------------------------------------------------------------------ packets
    def add(self, ts: float, pkt: Decoded, ifindex: int = 0) -> bool:
        """Account one decoded packet (see :data:`k8spacket.decode.Decoded`).

        ``ifindex`` is the interface it was captured on (0 in replay). Returns
        ``False`` when the connection belongs to another interface (a copy of a
        packet already seen there: the caller counts it), ``True`` otherwise.
        """
        key, half, sport, dport, seq, ack, flags, plen = pkt
        if ts >= self.next_sweep and self.sweep_in_add:
            self.sweep(ts)
        table = self.table
        conn = table.get(key)
        if conn is None:
            if half == 48:
                conn = table.get(((key & _M48) << 48) | (key >> 48))
            else:
                conn = table.get(((key & _M144) << 144) | (key >> 144))
            if conn is None:
                self._new(ts, key, half, sport, dport, seq, ack, flags, plen, ifindex)
                return True
            d = conn.client_first  # found by the reverse key: the sender is the key's second side
        else:
            d = not conn.client_first
        if conn.owner != ifindex:
            if conn.owner:
                return False
            conn.owner = ifindex
        # d is False for client → server, True for server → client
        st = conn.state
        if flags & 0x07 or st & _SLOW:
            if flags & 0x07:
                self._control(conn, d, ts, sport, dport, seq, ack, flags, plen)
            else:
                self._data(conn, d, ts, seq, ack, flags, plen)
            return True
        # fast path: a data or ACK segment of an open connection in full mode
        conn.last = ts
        if not d:
            if st & S_CSEQ:
                end = (seq + plen) & MASK
                adv = (end - conn.client_next) & MASK
                if 0 < adv < HALF:
                    if plen:
                        conn.client_bytes += adv
                        conn.client_next = end
                    else:
                        self._hold(conn, False, end, adv)
            else:
                conn.client_next = (seq + plen) & MASK
                conn.client_bytes += plen
                conn.state = st = st | S_CSEQ
            if st & S_SYNACK and not st & S_ESTAB and flags & ACK:
                conn.handshake = ts - conn.start
                conn.state = st | S_ESTAB
        elif st & S_SSEQ:
            end = (seq + plen) & MASK
            adv = (end - conn.server_next) & MASK
            if 0 < adv < HALF:
                if plen:
                    conn.server_bytes += adv
                    conn.server_next = end
                else:
                    self._hold(conn, True, end, adv)
        else:
            conn.server_next = (seq + plen) & MASK
            conn.server_bytes += plen
            conn.state = st | S_SSEQ
        return True

    # ------------------------------------------------------- sequence positions
    def _hold(self, conn: Connection, server: bool, end: int, adv: int) -> None:
        """An advance to ``end`` known without its payload: hold the last unit back.

        That unit is a byte the capture lost or a FIN it lost; a later packet
        decides (:meth:`_advance`), a close without the FIN drops it.
        """
        if server:
            if conn.state & S_SPEND:
                conn.server_bytes += 1  # more came after it: the held unit was a byte
            conn.server_bytes += adv - 1
            conn.server_next = end
            conn.state |= S_SPEND
        else:
            if conn.state & S_CPEND:
                conn.client_bytes += 1
            conn.client_bytes += adv - 1
            conn.client_next = end
            conn.state |= S_CPEND

    def _advance(self, conn: Connection, server: bool, seq: int, plen: int, fin: int) -> None:
        """The sender's own segment (payload ``plen``, ``fin`` 0 or 1) moves its position."""
        st = conn.state
        known, pend, finbit = (S_SSEQ, S_SPEND, S_SFIN) if server else (S_CSEQ, S_CPEND, S_CFIN)
        nxt = conn.server_next if server else conn.client_next
        end = (seq + plen + fin) & MASK
        if not st & known:
            st |= known | (finbit if fin else 0)
            if server:
                conn.server_next = end
                conn.server_bytes += plen
            else:
                conn.client_next = end
                conn.client_bytes += plen
            conn.state = st
            return
        extra = 0
        if st & pend and (plen or fin):
            pos = (seq + plen) & MASK  # where a FIN would sit
            if fin and pos == (nxt - 1) & MASK:
                st = (st & ~pend) | finbit  # the held unit was this FIN
                conn.state = st
                return
            if ((seq - nxt) & MASK) < HALF:  # starts at or past the held unit: it was a byte
                st &= ~pend
                extra = 1
        adv = (end - nxt) & MASK
        if 0 < adv < HALF:
            if not (plen or fin):
                conn.state = st
                self._hold(conn, server, end, adv)  # a pure ACK past the last byte seen
                return
            n = adv - fin + extra
            if server:
                conn.server_bytes += n
                conn.server_next = end
            else:
                conn.client_bytes += n
                conn.client_next = end
        elif extra:
            if server:
                conn.server_bytes += 1
            else:
                conn.client_bytes += 1
        if fin and adv < HALF:
            st |= finbit  # (adv 0: a FIN retransmitted)
        conn.state = st

    def _ack_advance(self, conn: Connection, server: bool, ack: int) -> None:
        """The peer acknowledged ``ack``: the ``server`` (or client) side got at least there."""
        st = conn.state
        if server:
            if not st & S_SSEQ:
                conn.server_next = ack
                conn.state = st | S_SSEQ
                return
            if st & S_SFIN:
                return
            adv = (ack - conn.server_next) & MASK
        else:
            if not st & S_CSEQ:
                conn.client_next = ack
                conn.state = st | S_CSEQ
                return
            if st & S_CFIN:
                return
            adv = (ack - conn.client_next) & MASK
        if 0 < adv < HALF:
            if st & S_LEAN and adv > 1:
                # lean: data the filter did not pass is the usual reason; a FIN
                # the kernel dropped behind such data is not told from it
                # (docs/capture.md). One unit alone is held as in full mode.
                if server:
                    conn.server_bytes += adv
                    conn.server_next = ack
                else:
                    conn.client_bytes += adv
                    conn.client_next = ack
                return
            self._hold(conn, server, ack, adv)

    # ------------------------------------------------------------- slow paths
    def _data(
        self, conn: Connection, d: bool, ts: float, seq: int, ack: int, flags: int, plen: int
    ) -> None:
        """A packet without SYN/FIN/RST of a closing, dormant, held or lean connection."""
        st = conn.state
        if st & S_CLOSED:
            conn.last = ts
            self.ignored["after_close"] += 1
            return
        conn.last = ts
        if st & S_DORMANT:
            conn.state = st = st & ~S_DORMANT
        self._advance(conn, d, seq, plen, 0)
        if flags & ACK:
            if st & S_LEAN:
                self._ack_advance(conn, not d, ack)
            if not d and st & S_SYNACK and not st & S_ESTAB:
                conn.handshake = ts - conn.start
                conn.state |= S_ESTAB
            if conn.state & (S_CFIN | S_SFIN):
                self._closing(conn, d, ack)

    def _closing(self, conn: Connection, d: bool, ack: int) -> None:
        """An ACK from side ``d`` once a FIN was seen: does it end the connection?"""
        st = conn.state
        mine_fin, peer_fin, mine_pend = (
            (S_SFIN, S_CFIN, S_SPEND) if d else (S_CFIN, S_SFIN, S_CPEND)
        )
        if st & mine_fin and not st & peer_fin:
            # this side closed; an ACK one unit past the peer's position covers
            # the peer's FIN, which the capture lost
            if d:
                if (ack - conn.client_next) & MASK == 1:
                    conn.client_next = ack
                    conn.state = (st & ~S_CPEND) | S_CFIN
                    self._final(conn, "fin")
            elif (ack - conn.server_next) & MASK == 1:
                conn.server_next = ack
                conn.state = (st & ~S_SPEND) | S_SFIN
                self._final(conn, "fin")
            return
        peer_next = conn.client_next if d else conn.server_next
        if not st & peer_fin or ack != peer_next:
            return
        if not st & mine_fin:
            if not st & mine_pend:
                return  # a half-close: the peer is done, this side is not
            st = (st & ~mine_pend) | mine_fin  # my FIN was lost: the held unit was it
            conn.state = st
        self._final(conn, "fin")

    def _control(
        self,
        conn: Connection,
        d: bool,
        ts: float,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
    ) -> None:
        """Packets with SYN, FIN or RST: the state machine's slow path."""
        st = conn.state
        last = conn.last
        conn.last = ts
        if st & S_DORMANT and not st & S_CLOSED:
            conn.state = st = st & ~S_DORMANT
        if flags & SYN:
            if not flags & ACK:
                if (
                    not d
                    and st & S_MID
                    and st & S_SYNACK
                    and not st & (S_REPORTED | S_CLOSED)
                    and (seq + 1 + plen) & MASK == conn.client_next
                ):
                    # the SYN its SYN-ACK acknowledged, captured after it: one connection
                    conn.state = (st & ~(S_MID | S_ESTAB)) | S_SYN
                    conn.client_bytes += plen
                    if st & S_LEAN:
                        conn.handshake = abs(conn.start - ts)
                        conn.state |= S_ESTAB
                    conn.start = min(conn.start, ts)
                    return
                # A SYN on a closed entry, or the client's SYN on a connection that
                # got past its own SYN: port reuse, a new connection. Otherwise a
                # retransmitted SYN (or a simultaneous open): nothing to count.
                if st & S_CLOSED or (not d and st & (S_SYNACK | S_MID | S_CFIN | S_SFIN | S_SSEQ)):
                    if not st & S_CLOSED:
                        conn.last = last  # the old connection ends at its own last packet
                        self._final(conn, "idle")
                    del self.table[conn.key]
                    key = conn.key if conn.client_first != d else reverse_key(conn.key, conn.half)
                    self._new(ts, key, conn.half, sport, dport, seq, ack, flags, plen, conn.owner)
                return
            if flags & ACK and d and not st & S_CLOSED:
                # SYN-ACK from the server
                if not st & S_SYNACK:
                    conn.server_next = (seq + 1 + plen) & MASK
                    conn.server_bytes += plen
                    conn.state = st = st | S_SYNACK | S_SSEQ
                    if st & S_LEAN and st & S_SYN:
                        conn.handshake = ts - conn.start
                        conn.state = st | S_ESTAB
                return
            if st & S_CLOSED:
                self.ignored["after_close"] += 1
            return
        if st & S_CLOSED:
            if not flags & RST:
                self.ignored["after_close"] += 1
            return
        if flags & RST:
            if d and st & S_SYN and not st & (S_SYNACK | S_SSEQ):
                # in SYN-SENT only a RST acknowledging the SYN is acceptable
                if not flags & ACK or ack != conn.client_next:
                    conn.last = last
                    self.ignored["invalid_rst"] += 1
                    return
                conn.state = st | S_REFUSED
            elif st & (S_SSEQ if d else S_CSEQ):
                nxt = conn.server_next if d else conn.client_next
                off = (seq - nxt) & MASK
                if RST_WINDOW < off < (1 << 32) - RST_WINDOW:
                    conn.last = last
                    self.ignored["invalid_rst"] += 1
                    return
                if st & S_LEAN and off < HALF:
                    self._advance(conn, d, seq, plen, 0)  # bytes the filter did not pass
            if st & S_LEAN and flags & ACK:
                self._ack_advance(conn, not d, ack)
            conn.state |= S_RST
            self._final(conn, "rst")
            return
        # FIN (possibly with data)
        self._advance(conn, d, seq, plen, 1)
        if flags & ACK:
            self._ack_advance(conn, not d, ack)
            st = conn.state
            if not d and st & S_SYNACK and not st & S_ESTAB:
                conn.handshake = ts - conn.start
                conn.state = st = st | S_ESTAB
            if st & S_CFIN and st & S_SFIN:
                if st & S_LEAN:
                    self._final(conn, "fin")  # the last ACK is not captured in lean mode
            else:
                self._closing(conn, d, ack)

    def _new(
        self,
        ts: float,
        key: int,
        half: int,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
        owner: int,
    ) -> None:
        """First packet of an unknown connection."""
        if flags & RST:
            self.ignored["stray_rst"] += 1
            return
        if len(self.table) >= self.max_connections:
            self._evict_for_capacity(ts)
        lean = S_LEAN if self.lean else 0
        if flags & SYN:
            if flags & ACK:  # SYN-ACK without the SYN: the sender is the server
                conn = Connection(
                    key, half, False, S_MID | S_SYNACK | S_SSEQ | S_ESTAB | S_CSEQ | lean, ts, owner
                )
                conn.server_next = (seq + 1 + plen) & MASK
                conn.server_bytes = plen
                conn.client_next = ack  # what the SYN-ACK acknowledges: the client's SYN
            else:
                conn = Connection(key, half, True, S_SYN | S_CSEQ | lean, ts, owner)
                conn.client_next = (seq + 1 + plen) & MASK
                conn.client_bytes = plen
        else:
            client = sender_is_client(sport, dport)
            fin = 1 if flags & FIN else 0
            conn = Connection(key, half, client, S_MID | lean, ts, owner)
            if client:
                conn.client_next = (seq + plen + fin) & MASK
                conn.client_bytes = plen
                conn.state |= S_CSEQ | (S_CFIN if fin else 0)
                if flags & ACK:
                    conn.server_next = ack
                    conn.state |= S_SSEQ
            else:
                conn.server_next = (seq + plen + fin) & MASK
                conn.server_bytes = plen
                conn.state |= S_SSEQ | (S_SFIN if fin else 0)
                if flags & ACK:
                    conn.client_next = ack
                    conn.state |= S_CSEQ
        self.table[key] = conn
        order = self._order
        order.append(conn)
        self._listed += 1
        if len(order) > 2 * len(self.table) + SWEEP_SLICE * 8 and self._pass_end < 0:
            self.next_sweep = float("-inf")  # many removed outside a pass: one is due now
        self.connections += 1

    # ----------------------------------------------------------------- records
    def _record(self, conn: Connection, close: str | None, end: float) -> ConnectionRecord:
        if end < conn.start:  # capture timestamps that go backwards: never end before the start
            end = conn.start
        a, pa, b, pb = key_endpoints(conn.key, conn.half)
        if conn.client_first:
            src, sport, dst, dport = a, pa, b, pb
        else:
            src, sport, dst, dport = b, pb, a, pa
        st = conn.state
        outcome: Outcome
        if st & S_REFUSED:
            outcome = "refused"
        elif st & S_MID:
            outcome = "midstream"
        elif st & (S_SYNACK | S_SSEQ):
            outcome = "established"
        else:
            outcome = "unanswered"
        reporter = None
        if self.is_local is not None:
            if self.is_local(src):
                reporter = "client"
            elif self.is_local(dst):
                reporter = "server"
        hs = conn.handshake
        rec = ConnectionRecord(
            src=src,
            src_port=sport,
            dst=dst,
            dst_port=dport,
            bytes_sent=conn.client_bytes,
            bytes_received=conn.server_bytes,
            handshake_seconds=None if hs is None else round(hs, 6),
            duration_seconds=round(max(0.0, end - conn.start), 6),
            outcome=outcome,
            close=close,  # type: ignore[arg-type]
            start=conn.start,
            end=end,
            reporter=reporter,  # type: ignore[arg-type]
            first=not st & S_REPORTED,
        )
        conn.client_bytes = 0
        conn.server_bytes = 0
        conn.reported_at = end
        conn.state = st | S_REPORTED
        self.records += 1
        return rec

    def _final(self, conn: Connection, close: str) -> None:
        st = conn.state
        if st & (S_CPEND | S_SPEND):
            # A held unit at the end: with the peer's FIN seen and no FIN of its own
            # (and no RST), it was the FIN the capture lost; otherwise a byte.
            if st & S_CPEND:
                if close != "rst" and st & S_SFIN and not st & S_CFIN:
                    st |= S_CFIN
                else:
                    conn.client_bytes += 1
            if st & S_SPEND:
                if close != "rst" and st & S_CFIN and not st & S_SFIN:
                    st |= S_SFIN
                else:
                    conn.server_bytes += 1
            conn.state = st & ~(S_CPEND | S_SPEND)
        self.sink(self._record(conn, close, conn.last))
        conn.state |= S_CLOSED

    # ------------------------------------------------------------------ time
    def sweep(self, now: float) -> None:
        """Flush idle connections, emit interim records, drop closed entries.

        The whole table at once: called from :meth:`add` whenever packet time
        passes the next flush point (replay). The live capture uses
        :meth:`sweep_step`, which does the same in slices.
        """
        self.next_sweep = now + self.flush_period
        self._close_gap()
        end = self._pass_end = len(self._order)  # a sink that raises leaves a pass under way
        self._sweep_entries(end, now)
        self._end_pass(end)

    def sweep_step(self, now: float, limit: int = SWEEP_SLICE) -> bool:
        """One slice of a sweep, for the live capture loop; True while a pass is unfinished.

        When ``now`` passes ``next_sweep`` a pass starts over the connections the
        table holds then; each call handles the next ``limit`` of them (those
        still in the table), so the capture thread never spends more than a few
        milliseconds here between two ring drains, however many connections
        are open (a whole pass over 500,000 took seconds), and starting a pass
        costs nothing. Connections that arrive during a pass are looked at by
        the next one.
        """
        end = self._pass_end
        if end < 0:
            if now < self.next_sweep:
                return False
            self.next_sweep = now + self.flush_period
            end = self._pass_end = len(self._order)
            self._pass_at = self._pass_kept = 0
            self._listed = 0  # those listed before the pass are in it
        limit = max(limit, 2 * self._listed)
        self._listed = 0
        self._sweep_entries(min(self._pass_at + limit, end), now, SWEEP_EMIT)
        if self._pass_at < end:
            return True
        self._end_pass(end)
        return False

    def _end_pass(self, end: int) -> None:
        """The pass read up to ``end``: those kept move up to those that arrived meanwhile."""
        del self._order[self._pass_kept : end]
        self._pass_end = -1
        self._pass_at = self._pass_kept = 0

    def _close_gap(self) -> None:
        """Abandon a sliced pass under way: the positions it has read and not kept go."""
        if self._pass_end >= 0:
            self._end_pass(self._pass_at)

    def _sweep_entries(self, stop: int, now: float, emit: int = 0) -> None:
        """Sweep ``_order`` from ``_pass_at`` up to ``stop``, keeping in place what stays.

        With ``emit``, stop after that many records. Connections no longer in
        the table (removed outside the sweep) are dropped from the order here.
        """
        order = self._order
        at = first = self._pass_at
        kept = self._pass_kept
        budget = self.records + (emit or stop - at + 1)  # every record is made by _record
        idle_before = now - self.close_older_than
        forget_before = now - self.forget_after
        keep_dormant = self.forget_after > self.close_older_than
        linger_before = now - CLOSED_LINGER
        report_before = now - self.flush_period
        table = self.table
        sink = self.sink
        try:
            while at < stop:
                if self.records >= budget:
                    break
                conn = order[at]
                at += 1
                if table.get(conn.key) is not conn:
                    continue  # removed for capacity or replaced by port reuse
                st = conn.state
                if st & S_CLOSED:
                    if conn.last <= linger_before:
                        del table[conn.key]
                        continue
                elif st & S_CFIN and st & S_SFIN:
                    self._final(conn, "fin")
                elif conn.last <= idle_before:
                    if _lost_fin(st):
                        self._final(conn, "fin")  # one FIN lost, the peer acknowledged it
                        del table[conn.key]
                        continue
                    if st & S_DORMANT:
                        # forgotten after forget_after; lean: silence is no
                        # evidence, only room ends it
                        forget = conn.last <= forget_before and not (
                            st & S_LEAN and not st & (S_CFIN | S_SFIN)
                        )
                    elif keep_dormant and st & (S_SYNACK | S_SSEQ | S_MID):
                        if conn.client_bytes or conn.server_bytes or not st & S_REPORTED:
                            sink(self._record(conn, None, conn.last))
                        conn.state |= S_DORMANT
                        forget = False
                    else:
                        forget = True
                    if forget:
                        self._final(conn, "idle")
                        self.evicted["idle"] += 1
                        del table[conn.key]
                        continue
                elif conn.reported_at <= report_before:
                    if conn.client_bytes or conn.server_bytes or not st & S_REPORTED:
                        sink(self._record(conn, None, now))
                    else:
                        conn.reported_at = now  # nothing new since the last record: none sent
                order[kept] = conn
                kept += 1
        except BaseException:
            # the sink raised: the connection it was given stays listed (every
            # branch writes a kept connection back last, so it is not yet)
            if at > first:
                conn = order[at - 1]
                if table.get(conn.key) is conn:
                    order[kept] = conn
                    kept += 1
            raise
        finally:
            self._pass_at = at
            self._pass_kept = kept

    def _evict_for_capacity(self, now: float) -> None:
        """The table is full: make room, least recently active first.

        Closed entries go first. A table of up to ``EVICT_EXACT_MAX`` then ends
        its least recently active 5% at once; a bigger one a step of at most
        ``EVICT_BATCH`` (:meth:`_room_step`), so making room costs the capture
        thread well under a millisecond per step instead of a scan of the whole
        table; the table never grows past the cap.
        """
        if len(self.table) > EVICT_EXACT_MAX:
            self._room_step()
        else:
            self._evict_exact(self.max_connections // EVICT_SHARE)

    def _evict_exact(self, share: int) -> None:
        """Drop every closed entry, then end the least recently active ``share`` (at
        least as many as the cap needs): a scan of the whole table."""
        table = self.table
        for key in [k for k, c in table.items() if c.state & S_CLOSED]:
            del table[key]
        excess = len(table) - self.max_connections + 1
        if excess <= 0:
            return
        for conn in heapq.nsmallest(max(excess, share), table.values(), key=attrgetter("last")):
            self._evict(conn)

    def _evict(self, conn: Connection) -> None:
        self._final(conn, "idle")
        del self.table[conn.key]
        self.evicted["capacity"] += 1

    def _room_step(self) -> None:
        """One step of making room in a big full table: at least one entry goes.

        Looks at ``_order`` from where the last step stopped (at most
        ``EVICT_SCAN`` entries) and ends the connections last active before the
        threshold, up to ``EVICT_BATCH``; closed entries found on the way are
        dropped. The threshold is the 5% quantile of last activity in a sample
        of ``EVICT_SAMPLE`` entries, estimated again after every 5% of the cap
        it has ended, or when a step finds nothing below it. A step that finds
        nothing to end twice ends the least recently active of a fresh sample
        (and, should that find only closed entries, scans the whole table).
        """
        table = self.table
        order = self._order
        need = len(table) - self.max_connections + 1
        batch = max(need, EVICT_BATCH)
        for attempt in (0, 1):
            if self._evict_left <= 0 or attempt:
                self._evict_before = self._sample_threshold()
                self._evict_left = max(1, self.max_connections // EVICT_SHARE)
            before = self._evict_before
            n = len(order)
            at = self._evict_at
            ended = 0
            for _ in range(min(EVICT_SCAN, n)):
                if at >= n:
                    at = 0
                conn = order[at]
                at += 1
                if table.get(conn.key) is not conn:
                    continue
                if conn.state & S_CLOSED:
                    del table[conn.key]  # finished already: its linger ends early
                elif conn.last <= before:
                    self._evict(conn)
                    ended += 1
                    if ended >= batch:
                        break
            self._evict_at = at
            self._evict_left -= ended
            if len(table) < self.max_connections:
                return
        live = [c for c in self._sample(EVICT_BATCH) if not c.state & S_CLOSED]
        if live:
            self._evict(min(live, key=attrgetter("last")))
        if len(table) >= self.max_connections:  # nothing live where it looked: the whole table
            self._evict_exact(0)

    def _sample(self, k: int) -> list[Connection]:
        """Up to ``k`` connections of the table, drawn from ``_order`` at random positions."""
        order, table = self._order, self.table
        rnd = self._rng.randrange
        n = len(order)
        out: list[Connection] = []
        if not n:
            return out
        for _ in range(k):
            conn = order[rnd(n)]
            if table.get(conn.key) is conn:
                out.append(conn)
        return out

    def _sample_threshold(self) -> float:
        """The 5% quantile of last activity in a sample of the table."""
        lasts = sorted(c.last for c in self._sample(EVICT_SAMPLE))
        if not lasts:
            return float("-inf")
        return lasts[len(lasts) // EVICT_SHARE]

    def release_owner(self, ifindex: int) -> None:
        """Interface ``ifindex`` stopped capturing: its connections go to whichever sees them next.

        Called when a ring closes (rare), never per packet or per sweep.
        """
        for conn in self.table.values():
            if conn.owner == ifindex:
                conn.owner = 0

    def flush_all(self, now: float | None = None) -> None:
        """Report every connection still in the table (end of a capture, shutdown).

        Open connections get a record with ``close=None`` (still open when the
        capture ended); connections that only saw a SYN are ``unanswered``.
        """
        for conn in self.table.values():
            st = conn.state
            if st & S_CLOSED:
                continue
            if (st & S_CFIN and st & S_SFIN) or _lost_fin(st):
                self._final(conn, "fin")
                continue
            end = conn.last if now is None else max(now, conn.last)
            if (
                st & S_REPORTED
                and conn.client_bytes == 0
                and conn.server_bytes == 0
                and (end <= conn.reported_at or st & S_DORMANT)
            ):
                continue
            self.sink(self._record(conn, None, end))
        self.table.clear()
        self._order.clear()
        self._pass_end = -1
        self._pass_at = self._pass_kept = 0
