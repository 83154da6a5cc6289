"""Classic BPF filters for the capture sockets: compile, set the snap length, attach.

The kernel runs the filter before a packet is copied into the ring, so only TCP
headers ever reach Python: the filter's accept value is the snap length
(96 bytes by default: Ethernet + IPv6 + TCP with options). Filters are compiled
by libpcap through scapy's ``compile_filter`` (once per interface, never per
packet); the accept values of the compiled program are rewritten to the snap
length. When libpcap is not installed, the default expression ``tcp`` falls
back to a built-in program (the one ``tcpdump -dd -s 96 tcp`` prints for
Ethernet); any other expression then is a configuration error.

Capture modes (``capture.mode``): ``full`` attaches the ``tcp`` program (every
TCP segment); ``lean`` attaches :func:`lean_program`, built here by hand (libpcap
cannot index TCP headers behind IPv6), which passes only what the tracker needs
to stay exact: packets with SYN, FIN or RST, and data packets whose payload
crosses a boundary of sequence space, ``(seq + len) >> B != seq >> B`` with
``2**B`` = ``capture.leanBoundary`` (64 KiB). Also passed, to stay on the safe
side: IPv4 fragments (the decoder counts and skips them, as in full mode),
IPv4 frames with total length 0 (BIG TCP: only the wire length tells the
size), and IPv6 packets whose first next-header is an extension header
(hop-by-hop, routing, fragment, destination options, AH, mobility): a classic
BPF program cannot walk the chain, so these are passed whole and judged by the
tracker exactly as in full mode. :func:`lean_passes` is the same rule on a
decoded packet (replay applies it; a test holds it against this program).

Limits: link type Ethernet only (veths and every CNI interface this agent
watches); VLAN-tagged frames do not match ``tcp`` (as with tcpdump).
"""

from __future__ import annotations

import ctypes
import socket
import struct

Instruction = tuple[int, int, int, int]  # (code, jt, jf, k)
Program = tuple[Instruction, ...]

SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06
DEFAULT_FILTER = "tcp"
DEFAULT_SNAPLEN = 96
LINKTYPE_ETHERNET = 1

#: ``tcpdump -y EN10MB -dd -s 96 tcp``: IPv4 or IPv6 (direct or after a fragment header).
_TCP_ETHERNET: Program = (
    (0x28, 0, 0, 0x0000000C),
    (0x15, 0, 2, 0x00000800),
    (0x30, 0, 0, 0x00000017),
    (0x15, 6, 7, 0x00000006),
    (0x15, 0, 6, 0x000086DD),
    (0x30, 0, 0, 0x00000014),
    (0x15, 3, 0, 0x00000006),
    (0x15, 0, 3, 0x0000002C),
    (0x30, 0, 0, 0x00000036),
    (0x15, 0, 1, 0x00000006),
    (0x06, 0, 0, DEFAULT_SNAPLEN),
    (0x06, 0, 0, 0x00000000),
)


class FilterError(ValueError):
    """The filter expression does not compile (message names the expression)."""


CAPTURE_MODES = ("lean", "full")
DEFAULT_LEAN_BOUNDARY = 1 << 16
_MASK32 = 0xFFFFFFFF

# classic BPF opcodes (linux/filter.h)
_LDH_ABS, _LDB_ABS, _LDW_ABS = 0x28, 0x30, 0x20
_LDB_IND, _LDW_IND = 0x50, 0x40
_LDXB_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf)
_LD_MEM, _LDX_MEM, _ST = 0x60, 0x61, 0x02
_JA, _JEQ_K, _JSET_K, _JEQ_X = 0x05, 0x15, 0x45, 0x1D
_AND_K, _RSH_K, _ADD_X, _SUB_X = 0x54, 0x74, 0x0C, 0x1C
_TAX = 0x07

#: IPv6 next-header values of extension headers (passed whole in lean mode)
_V6_EXTENSIONS = (0, 43, 44, 51, 60, 135)


def _assemble(lines: list[tuple[str, int, int, str, str]]) -> Program:
    """(label, code, k, jump-if-true label, jump-if-false label) → a program."""
    where = {label: i for i, (label, *_rest) in enumerate(lines) if label}
    out: list[Instruction] = []
    for i, (_label, code, k, jt, jf) in enumerate(lines):
        if code == _JA:
            out.append((code, 0, 0, where[jt] - i - 1))
            continue
        t = where[jt] - i - 1 if jt else 0
        f = where[jf] - i - 1 if jf else 0
        if not (0 <= t < 256 and 0 <= f < 256):
            raise AssertionError("jump out of range")  # a bug in the program below
        out.append((code, t, f, k))
    return tuple(out)


def lean_program(boundary: int = DEFAULT_LEAN_BOUNDARY, snaplen: int = DEFAULT_SNAPLEN) -> Program:
    """The lean-mode filter for Ethernet (see the module docstring)."""
    bits = boundary.bit_length() - 1
    if boundary < 2 or boundary != 1 << bits or bits > 31:
        raise FilterError(f"lean boundary must be a power of two up to 2 GiB, got {boundary}")
    ext = [
        (f"x{i}", _JEQ_K, nh, "accept", f"x{i + 1}" if i + 1 < len(_V6_EXTENSIONS) else "reject")
        for i, nh in enumerate(_V6_EXTENSIONS)
    ]
    ext[0] = ("ext6", *ext[0][1:])
    lines: list[tuple[str, int, int, str, str]] = [
        ("", _LDH_ABS, 12, "", ""),  # EtherType
        ("", _JEQ_K, 0x0800, "v4", "notv4"),
        ("v4", _LDB_ABS, 23, "", ""),  # IPv4 protocol
        ("", _JEQ_K, 6, "tcp4", "reject"),
        ("tcp4", _LDH_ABS, 20, "", ""),  # flags + fragment offset
        ("", _JSET_K, 0x3FFF, "accept", "whole4"),
        ("whole4", _LDH_ABS, 16, "", ""),  # total length
        ("", _JEQ_K, 0, "accept", "len4"),
        ("len4", _ST, 1, "", ""),  # M1 = total length
        ("", _LDXB_MSH, 14, "", ""),  # X = IP header length
        ("", _LDB_IND, 14 + 13, "", ""),  # TCP flags
        ("", _JSET_K, 0x07, "accept", "data4"),
        ("data4", _LDB_IND, 14 + 12, "", ""),  # TCP data offset
        ("", _AND_K, 0xF0, "", ""),
        ("", _RSH_K, 2, "", ""),
        ("", _ADD_X, 0, "", ""),  # A = IP + TCP header length
        ("", _TAX, 0, "", ""),
        ("", _LD_MEM, 1, "", ""),
        ("", _SUB_X, 0, "", ""),  # A = payload length
        ("", _ST, 1, "", ""),
        ("", _LDXB_MSH, 14, "", ""),
        ("", _LDW_IND, 14 + 4, "", ""),  # A = sequence number
        ("", _JA, 0, "cross", ""),
        ("notv4", _JEQ_K, 0x86DD, "v6", "reject"),
        ("v6", _LDB_ABS, 20, "", ""),  # next header
        ("", _JEQ_K, 6, "tcp6", "ext6"),
        *ext,
        ("tcp6", _LDB_ABS, 54 + 13, "", ""),  # TCP flags
        ("", _JSET_K, 0x07, "accept", "data6"),
        ("data6", _LDB_ABS, 54 + 12, "", ""),
        ("", _AND_K, 0xF0, "", ""),
        ("", _RSH_K, 2, "", ""),
        ("", _TAX, 0, "", ""),  # X = TCP header length
        ("", _LDH_ABS, 18, "", ""),  # payload length
        ("", _JEQ_K, 0, "accept", "len6"),
        ("len6", _SUB_X, 0, "", ""),
        ("", _ST, 1, "", ""),
        ("", _LDW_ABS, 54 + 4, "", ""),  # sequence number
        ("cross", _ST, 2, "", ""),  # M2 = seq; M1 = payload length
        ("", _LDX_MEM, 1, "", ""),
        ("", _ADD_X, 0, "", ""),
        ("", _RSH_K, bits, "", ""),
        ("", _TAX, 0, "", ""),  # X = (seq + len) >> bits
        ("", _LD_MEM, 2, "", ""),
        ("", _RSH_K, bits, "", ""),  # A = seq >> bits
        ("", _JEQ_X, 0, "reject", "accept"),
        ("accept", BPF_RET_K, snaplen, "", ""),
        ("reject", BPF_RET_K, 0, "", ""),
    ]
    return _assemble(lines)


def lean_passes(seq: int, flags: int, plen: int, bits: int) -> bool:
    """The lean rule on a decoded TCP packet (what :func:`lean_program` decides)."""
    return bool(flags & 0x07) or ((seq + plen) & _MASK32) >> bits != seq >> bits


def chain(first: Program, then: Program) -> Program:
    """``first`` as a pre-filter: what it accepts goes on to ``then``."""
    n = len(first)
    out: list[Instruction] = []
    for i, (code, jt, jf, k) in enumerate(first):
        if code == BPF_RET_K and k:
            out.append((_JA, 0, 0, n - i - 1))
        else:
            out.append((code, jt, jf, k))
    return (*out, *then)


def capture_programs(
    mode: str,
    expression: str = DEFAULT_FILTER,
    snaplen: int = DEFAULT_SNAPLEN,
    boundary: int = DEFAULT_LEAN_BOUNDARY,
) -> tuple[Program, Program | None]:
    """(program to attach first, program to switch to after the warm-up or None).

    ``full``: the expression's program, no switch. ``lean``: the full program
    first (connections already open are learned), then the lean program
    (behind the expression unless it is the default ``tcp``).
    """
    if mode not in CAPTURE_MODES:
        raise FilterError(f"capture mode must be one of {', '.join(CAPTURE_MODES)}, got {mode!r}")
    full = compile_filter(expression, snaplen)
    if mode == "full":
        return full, None
    lean = lean_program(boundary, snaplen)
    if expression.strip() != DEFAULT_FILTER:
        lean = chain(full, lean)
    return full, lean


def with_snaplen(program: Program, snaplen: int) -> Program:
    """The same program with every non-zero accept value set to ``snaplen``."""
    return tuple(
        (code, jt, jf, snaplen if code == BPF_RET_K and k else k) for code, jt, jf, k in program
    )


def compile_filter(expression: str = DEFAULT_FILTER, snaplen: int = DEFAULT_SNAPLEN) -> Program:
    """Compile a tcpdump-style expression for Ethernet, accepting ``snaplen`` bytes."""
    if not 0 < snaplen <= 262144:
        raise FilterError(f"snap length must be 1..262144, got {snaplen}")
    try:
        from scapy.arch.common import compile_filter as scapy_compile
        from scapy.error import Scapy_Exception

        try:
            bpf = scapy_compile(expression, linktype=LINKTYPE_ETHERNET)
        except Scapy_Exception as e:
            if "libpcap is not available" not in str(e):
                raise FilterError(f"capture filter {expression!r} does not compile: {e}") from None
            raise ImportError(str(e)) from None
        program: Program = tuple(
            (ins.code, ins.jt, ins.jf, ins.k) for ins in bpf.bf_insns[: bpf.bf_len]
        )
    except ImportError:
        if expression.strip() != DEFAULT_FILTER:
            raise FilterError(
                f"capture filter {expression!r} needs libpcap (only {DEFAULT_FILTER!r} is built in)"
            ) from None
        program = _TCP_ETHERNET
    return with_snaplen(program, snaplen)


def attach(sock: socket.socket, program: Program) -> None:
    """Attach ``program`` to ``sock`` (SO_ATTACH_FILTER; no capability needed)."""
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
