"""The connection tracker: decoded TCP packets in, connection records out.

One table entry per TCP connection, keyed by the packed addresses and ports of
the first packet seen (the reverse direction is looked up on a miss). Rules
(docs/design.md, "Connection records"):

* client and server come from the first SYN; with no SYN seen, the side using
  the ephemeral port is the client (``midstream``);
* bytes per direction are the advance of the sequence space (modulo 2**32, so
  wraps past 4 GiB are fine): retransmissions and duplicates add nothing, a gap
  filled later is counted once, SYN and FIN flags are not bytes;
* handshake time is first SYN → the client's ACK of the SYN-ACK;
* a connection ends on RST, on the ACK of the second FIN, or when idle longer
  than ``close_older_than``; while open, interim records (``close=None``) are
  emitted every ``flush_period`` so long-lived connections show up early;
* the table has a hard size cap: when it is full the least recently active
  connections are flushed (counted as evicted by ``capacity``);
* a SYN on a key whose connection is closing or closed starts a new connection
  (port reuse).

Time comes in with each packet (``ts``) so replay and tests drive the clock. This
module is the hot path: flat code, ``__slots__``, ints for state.
"""

from __future__ import annotations

import heapq
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

_EPHEMERAL_MIN = 32768
#: How long a closed connection's entry absorbs late packets (final ACKs, RST echoes).
CLOSED_LINGER = 2.0

Sink = Callable[[ConnectionRecord], None]


class Connection:
    """State of one tracked TCP connection (kept small: one per open connection)."""

    __slots__ = ("cb", "cf", "chi", "half", "hs", "key", "rep", "sb", "shi", "st", "t0", "t1")

    def __init__(self, key: int, half: int, client_first: bool, st: int, t0: float) -> None:
        self.key = key
        self.half = half
        self.cf = client_first  # True when the key's first address is the client
        self.st = st
        self.chi = 0  # client: next sequence number expected (high-water mark)
        self.shi = 0
        self.cb = 0  # client → server bytes since the last record
        self.sb = 0
        self.t0 = t0  # first packet (the first SYN for a normal connection)
        self.t1 = t0  # last packet
        self.rep = t0  # time of the last record (for interim records)
        self.hs: float | None = None


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
    the ``reporter`` field; without it ``reporter`` stays ``None``.
    """

    __slots__ = (
        "close_older_than",
        "connections",
        "evicted",
        "flush_period",
        "ignored",
        "is_local",
        "max_connections",
        "next_sweep",
        "records",
        "sink",
        "table",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        close_older_than: float = 20.0,
        flush_period: float = 10.0,
        max_connections: int = 500_000,
        is_local: Callable[[str], bool] | None = None,
    ) -> None:
        if close_older_than <= 0 or flush_period <= 0:
            raise ValueError("close_older_than and flush_period must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.sink = sink
        self.close_older_than = close_older_than
        self.flush_period = flush_period
        self.max_connections = max_connections
        self.is_local = is_local
        self.table: dict[int, Connection] = {}
        #: packet time of the next sweep (the first packet triggers one on the empty table)
        self.next_sweep = float("-inf")
        self.records = 0
        self.connections = 0
        #: reason → count (``idle``, ``capacity``): entries removed before they closed.
        self.evicted: dict[str, int] = {"idle": 0, "capacity": 0}
        #: reason → count of packets the tracker could not attribute.
        self.ignored: dict[str, int] = {"stray_rst": 0, "after_close": 0}

    # ------------------------------------------------------------------ packets
    def add(self, ts: float, pkt: Decoded) -> None:
        """Account one decoded packet (see :data:`k8spacket.decode.Decoded`)."""
        key, half, sport, dport, seq, ack, flags, plen = pkt
        if ts >= self.next_sweep:
            self.sweep(ts)
        table = self.table
        conn = table.get(key)
        if conn is None:
            if half == 48:
                conn = table.get(((key & _M48) << 48) | (key >> 48))
            else:
                conn = table.get(((key & _M144) << 144) | (key >> 144))
            if conn is None:
                self._new(ts, key, half, sport, dport, seq, flags, plen)
                return
            d = conn.cf  # found by the reverse key: the sender is the key's second side
        else:
            d = not conn.cf
        # d is False for client → server, True for server → client
        st = conn.st
        if flags & 0x07 == 0:  # fast path: no SYN/FIN/RST
            conn.t1 = ts
            if st & S_CLOSED:
                self.ignored["after_close"] += 1
                return
            if not d:
                if st & S_CSEQ:
                    end = (seq + plen) & MASK
                    adv = (end - conn.chi) & MASK
                    if 0 < adv < HALF:
                        conn.cb += adv
                        conn.chi = end
                else:
                    conn.chi = (seq + plen) & MASK
                    conn.cb += plen
                    conn.st = st = st | S_CSEQ
                if st & S_SYNACK and not st & S_ESTAB and flags & ACK:
                    conn.hs = ts - conn.t0
                    conn.st = st | S_ESTAB
                elif st & S_CFIN and st & S_SFIN and flags & ACK and ack == conn.shi:
                    self._final(conn, "fin")
            else:
                if st & S_SSEQ:
                    end = (seq + plen) & MASK
                    adv = (end - conn.shi) & MASK
                    if 0 < adv < HALF:
                        conn.sb += adv
                        conn.shi = end
                else:
                    conn.shi = (seq + plen) & MASK
                    conn.sb += plen
                    conn.st = st | S_SSEQ
                if st & S_CFIN and st & S_SFIN and flags & ACK and ack == conn.chi:
                    self._final(conn, "fin")
            return
        self._control(conn, d, ts, sport, dport, seq, ack, flags, plen)

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
        st = conn.st
        last = conn.t1
        conn.t1 = ts
        if flags & SYN:
            if not flags & ACK:
                # A SYN on a closed entry, or the client's SYN on a connection that
                # got past its own SYN: port reuse, a new connection. Otherwise a
                # retransmitted SYN (or a simultaneous open): nothing to count.
                if st & S_CLOSED or (not d and st & (S_SYNACK | S_MID | S_CFIN | S_SFIN | S_SSEQ)):
                    if not st & S_CLOSED:
                        conn.t1 = last  # the old connection ends at its own last packet
                        self._final(conn, "idle")
                    del self.table[conn.key]
                    key = conn.key if conn.cf != d else reverse_key(conn.key, conn.half)
                    self._new(ts, key, conn.half, sport, dport, seq, flags, plen)
                return
            if flags & ACK and d and not st & S_CLOSED:
                # SYN-ACK from the server
                if not st & S_SYNACK:
                    conn.shi = (seq + 1 + plen) & MASK
                    conn.sb += plen
                    conn.st = st | S_SYNACK | S_SSEQ
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
                conn.st = st | S_REFUSED
            conn.st |= S_RST
            self._final(conn, "rst")
            return
        # FIN (possibly with data)
        if not d:
            if st & S_CSEQ:
                end = (seq + plen + 1) & MASK
                adv = (end - conn.chi) & MASK
                if 0 < adv < HALF:
                    conn.cb += adv - 1
                    conn.chi = end
            else:
                conn.chi = (seq + plen + 1) & MASK
                conn.cb += plen
                st |= S_CSEQ
            conn.st = st | S_CFIN
        else:
            if st & S_SSEQ:
                end = (seq + plen + 1) & MASK
                adv = (end - conn.shi) & MASK
                if 0 < adv < HALF:
                    conn.sb += adv - 1
                    conn.shi = end
            else:
                conn.shi = (seq + plen + 1) & MASK
                conn.sb += plen
                st |= S_SSEQ
            conn.st = st | S_SFIN

    def _new(
        self,
        ts: float,
        key: int,
        half: int,
        sport: int,
        dport: int,
        seq: int,
        flags: int,
        plen: int,
    ) -> None:
        """First packet of an unknown connection."""
        if flags & RST:
            self.ignored["stray_rst"] += 1
            return
        if len(self.table) >= self.max_connections:
            self._evict_for_capacity(ts)
        if flags & SYN:
            if flags & ACK:  # SYN-ACK without the SYN: the sender is the server
                conn = Connection(key, half, False, S_MID | S_SYNACK | S_SSEQ | S_ESTAB, ts)
                conn.shi = (seq + 1 + plen) & MASK
                conn.sb = plen
            else:
                conn = Connection(key, half, True, S_SYN | S_CSEQ, ts)
                conn.chi = (seq + 1 + plen) & MASK
                conn.cb = plen
        else:
            client = sender_is_client(sport, dport)
            fin = 1 if flags & FIN else 0
            conn = Connection(key, half, client, S_MID, ts)
            if client:
                conn.chi = (seq + plen + fin) & MASK
                conn.cb = plen
                conn.st = S_MID | S_CSEQ | (S_CFIN if fin else 0)
            else:
                conn.shi = (seq + plen + fin) & MASK
                conn.sb = plen
                conn.st = S_MID | S_SSEQ | (S_SFIN if fin else 0)
        self.table[key] = conn
        self.connections += 1

    # ----------------------------------------------------------------- records
    def _record(self, conn: Connection, close: str | None, end: float) -> ConnectionRecord:
        if end < conn.t0:  # capture timestamps that go backwards: never end before the start
            end = conn.t0
        a, pa, b, pb = key_endpoints(conn.key, conn.half)
        if conn.cf:
            src, sport, dst, dport = a, pa, b, pb
        else:
            src, sport, dst, dport = b, pb, a, pa
        st = conn.st
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
        rec = ConnectionRecord(
            src=src,
            src_port=sport,
            dst=dst,
            dst_port=dport,
            bytes_sent=conn.cb,
            bytes_received=conn.sb,
            handshake_seconds=None if conn.hs is None else round(conn.hs, 6),
            duration_seconds=round(max(0.0, end - conn.t0), 6),
            outcome=outcome,
            close=close,  # type: ignore[arg-type]
            start=conn.t0,
            end=end,
            reporter=reporter,  # type: ignore[arg-type]
            first=not st & S_REPORTED,
        )
        conn.cb = 0
        conn.sb = 0
        conn.rep = end
        conn.st = st | S_REPORTED
        self.records += 1
        return rec

    def _final(self, conn: Connection, close: str) -> None:
        self.sink(self._record(conn, close, conn.t1))
        conn.st |= S_CLOSED

    # ------------------------------------------------------------------ time
    def sweep(self, now: float) -> None:
        """Flush idle connections, emit interim records, drop closed entries.

        Called from :meth:`add` whenever packet time passes the next flush point,
        and by the live agent from a timer.
        """
        self.next_sweep = now + self.flush_period
        idle_before = now - self.close_older_than
        linger_before = now - CLOSED_LINGER
        report_before = now - self.flush_period
        table = self.table
        dead: list[int] = []
        for key, conn in table.items():
            st = conn.st
            if st & S_CLOSED:
                if conn.t1 <= linger_before:
                    dead.append(key)
            elif st & S_CFIN and st & S_SFIN:
                self._final(conn, "fin")
            elif conn.t1 <= idle_before:
                self.sink(self._record(conn, "idle", conn.t1))
                conn.st |= S_CLOSED
                self.evicted["idle"] += 1
                dead.append(key)
            elif conn.rep <= report_before:
                self.sink(self._record(conn, None, now))
        for key in dead:
            del table[key]

    def _evict_for_capacity(self, now: float) -> None:
        """The table is full: drop closed entries, then the least recently active 5%."""
        table = self.table
        for key in [k for k, c in table.items() if c.st & S_CLOSED]:
            del table[key]
        excess = len(table) - self.max_connections + 1
        if excess <= 0:
            return
        n = max(excess, self.max_connections // 20)
        for conn in heapq.nsmallest(n, table.values(), key=attrgetter("t1")):
            self.sink(self._record(conn, "idle", conn.t1))
            del table[conn.key]
            self.evicted["capacity"] += 1

    def flush_all(self, now: float | None = None) -> None:
        """Report every connection still in the table (end of a capture, shutdown).

        Open connections get a record with ``close=None`` (still open when the
        capture ended); connections that only saw a SYN are ``unanswered``.
        """
        for conn in self.table.values():
            st = conn.st
            if st & S_CLOSED:
                continue
            if st & S_CFIN and st & S_SFIN:
                self._final(conn, "fin")
                continue
            end = conn.t1 if now is None else max(now, conn.t1)
            if st & S_REPORTED and conn.cb == 0 and conn.sb == 0 and end <= conn.rep:
                continue
            self.sink(self._record(conn, None, end))
        self.table.clear()
