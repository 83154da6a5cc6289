"""Which tuples kube-proxy's DNAT joined: one conntrack lookup per connection, raw netlink.

A connection to a Service through kube-proxy (iptables or IPVS mode) shows two
4-tuples on one node: ``client → ClusterIP:port`` on the client's interface
(before DNAT) and ``client → backend:port`` on the backend's interface (after
it). The kernel's connection tracking table holds both as one entry (the
original tuple and the reply tuple), so one lookup tells whether a tuple seen on
the wire belongs to a destination-NATed connection, and what its other side is:

* look up the tuple as an *original* tuple: when the entry's reply comes from
  another address or port than the tuple's destination, the tuple is the
  client's view of a Service, and the reply's source is the backend;
* otherwise look it up as a *reply* tuple (its reverse): when the entry's
  original destination differs, the tuple is the backend's view, and the
  original destination is the Service address.

Why conntrack and not the Kubernetes cache's endpoints: it is exact (the
kernel's own pairing, whatever the load-balancing mode picked), needs no
timing heuristics, works without Kubernetes (plain DNAT rules, the lab) and for
IPVS and NodePorts alike. It costs one or two netlink round trips per
connection (never per packet). It needs ``CAP_NET_ADMIN`` (every NFNETLINK
request does): without it the first lookup fails with ``EPERM``, one warning is
logged and the client turns itself off (Service pairs on one node are then
counted twice; docs/agent.md).

Entries of closed connections stay in the table for a while (``TIME_WAIT``
120 s, ``CLOSE`` 10 s by default), longer than the publisher's settle delay,
so short connections are found too. Requests are built with ``struct`` on a
plain ``AF_NETLINK`` socket: ``IPCTNL_MSG_CT_GET`` with ``CTA_TUPLE_ORIG`` or
``CTA_TUPLE_REPLY`` (nfnetlink_conntrack.h). Limits: conntrack zones other than
the default are not asked; one socket, used from one thread (the publisher).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Iterator

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
IPS_DST_NAT = 1 << 5

_nlmsghdr = struct.Struct("=IHHII")
_nlattr = struct.Struct("=HH")
_nfgenmsg = struct.Struct("=BBH")
_port = struct.Struct("!H")
_u32be = struct.Struct("!I")
_err = struct.Struct("=i")

Tuple = tuple[str, int, str, int]  # src, sport, dst, dport


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _nlattr.pack(_nlattr.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def encode_tuple(kind: int, t: Tuple) -> bytes:
    """A nested ``CTA_TUPLE_ORIG``/``CTA_TUPLE_REPLY`` attribute for a TCP tuple."""
    src, sport, dst, dport = t
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    ip = _attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, socket.inet_pton(fam, src)) + _attr(
        CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, socket.inet_pton(fam, dst)
    )
    proto = (
        _attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))
        + _attr(CTA_PROTO_SRC_PORT, _port.pack(sport))
        + _attr(CTA_PROTO_DST_PORT, _port.pack(dport))
    )
    return _attr(
        kind | NLA_F_NESTED,
        _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto),
    )


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``buf[start:end]``."""
    while start + _nlattr.size <= end:
        length, kind = _nlattr.unpack_from(buf, start)
        if length < _nlattr.size or start + length > end:
            return  # malformed or cut short: what follows is not trusted
        yield kind & NLA_TYPE_MASK, start + _nlattr.size, start + length
        start += (length + 3) & ~3


def decode_tuple(buf: bytes, start: int, end: int) -> Tuple | None:
    src = dst = ""
    sport = dport = -1
    for kind, a, b in _attrs(buf, start, end):
        if kind == CTA_TUPLE_IP:
            for k, x, y in _attrs(buf, a, b):
                if k in (CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST):
                    fam = socket.AF_INET if k in (CTA_IP_V4_SRC, CTA_IP_V4_DST) else socket.AF_INET6
                    if y - x != (4 if fam == socket.AF_INET else 16):
                        return None
                    text = socket.inet_ntop(fam, buf[x:y])
                    if k in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                        src = text
                    else:
                        dst = text
        elif kind == CTA_TUPLE_PROTO:
            for k, x, _y in _attrs(buf, a, b):
                if k == CTA_PROTO_SRC_PORT:
                    (sport,) = _port.unpack_from(buf, x)
                elif k == CTA_PROTO_DST_PORT:
                    (dport,) = _port.unpack_from(buf, x)
    if not src or not dst or sport < 0 or dport < 0:
        return None
    return src, sport, dst, dport


class ConntrackEntry:
    """The two tuples and the status of one conntrack entry."""

    __slots__ = ("original", "reply", "status")

    def __init__(self, original: Tuple, reply: Tuple, status: int) -> None:
        self.original = original
        self.reply = reply
        self.status = status

    @property
    def dst_nat(self) -> bool:
        """True when the destination was rewritten (DNAT: the reply comes from elsewhere)."""
        o, r = self.original, self.reply
        return bool(self.status & IPS_DST_NAT) or (r[0], r[1]) != (o[2], o[3])


def decode_entry(buf: bytes, start: int, end: int) -> ConntrackEntry | None:
    """An ``IPCTNL_MSG_CT_NEW`` payload (after the nfgenmsg) as an entry."""
    orig = reply = None
    status = 0
    for kind, a, b in _attrs(buf, start, end):
        if kind == CTA_TUPLE_ORIG:
            orig = decode_tuple(buf, a, b)
        elif kind == CTA_TUPLE_REPLY:
            reply = decode_tuple(buf, a, b)
        elif kind == CTA_STATUS and b - a >= 4:
            (status,) = _u32be.unpack_from(buf, a)
    if orig is None or reply is None:
        return None
    return ConntrackEntry(orig, reply, status)


class ConntrackClient:
    """Conntrack lookups over NFNETLINK (see the module docstring).

    ``enabled`` turns False for good after a permission error (one warning).
    """

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.enabled = True
        self.lookups = 0
        self._seq = 0
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              NETLINK_NETFILTER)  # fmt: skip
            s.settimeout(self.timeout)
            s.bind((0, 0))
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def get(self, t: Tuple, *, as_reply: bool = False) -> ConntrackEntry | None:
        """The entry whose original (or reply) tuple is ``t``, or ``None`` (ENOENT).

        Raises :class:`OSError` for anything but "no such entry".
        """
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        fam = socket.AF_INET6 if ":" in t[0] else socket.AF_INET
        body = _nfgenmsg.pack(fam, 0, 0) + encode_tuple(
            CTA_TUPLE_REPLY if as_reply else CTA_TUPLE_ORIG, t
        )
        msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        s = self._socket()
        s.send(_nlmsghdr.pack(_nlmsghdr.size + len(body), msg_type, NLM_F_REQUEST, seq, 0) + body)
        self.lookups += 1
        while True:
            buf = s.recv(65536)
            off = 0
            while off + _nlmsghdr.size <= len(buf):
                length, kind, _flags, mseq, _pid = _nlmsghdr.unpack_from(buf, off)
                if length < _nlmsghdr.size:
                    raise OSError(errno.EPROTO, "conntrack: malformed netlink message")
                end = min(off + length, len(buf))
                if mseq == seq:
                    if kind == NLMSG_ERROR:
                        (code,) = _err.unpack_from(buf, off + _nlmsghdr.size)
                        if code == 0:
                            return None
                        if -code == errno.ENOENT:
                            return None
                        raise OSError(-code, f"conntrack: {os.strerror(-code)}")
                    if kind & 0xFF == IPCTNL_MSG_CT_NEW:
                        return decode_entry(buf, off + _nlmsghdr.size + _nfgenmsg.size, end)
                off += (length + 3) & ~3

    def original_destination(self, src: str, sport: int, dst: str, dport: int) -> Tuple | None:
        """``(Service address, port, backend address, port)`` when the wire tuple
        ``src:sport → dst:dport`` belongs to a destination-NATed connection, else ``None``."""
        if not self.enabled:
            return None
        if self._sock is None:
            try:
                self._socket()
            except OSError as err:
                self.enabled = False
                log.warning("conntrack is not available (%s): Service pairs are not joined", err)
                return None
        try:
            e = self.get((src, sport, dst, dport))
            if e is not None:
                if not e.dst_nat:
                    return None
                return dst, dport, e.reply[0], e.reply[1]
            e = self.get((dst, dport, src, sport), as_reply=True)
        except PermissionError:
            self.enabled = False
            self.close()
            log.warning(
                "conntrack lookups need CAP_NET_ADMIN: Service (DNAT) connections whose "
                "client and backend are both on this node will be counted twice"
            )
            return None
        if e is not None and e.dst_nat:
            return e.original[2], e.original[3], dst, dport
        return None
