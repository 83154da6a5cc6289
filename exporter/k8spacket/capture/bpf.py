"""Classic BPF filters for the capture sockets: compile, set the snap length, attach.

The kernel runs the filter before a packet is copied into the ring, so only TCP
headers ever reach Python: the filter's accept value is the snap length
(96 bytes by default: Ethernet + IPv6 + TCP with options). Filters are compiled
by libpcap through scapy's ``compile_filter`` (once per interface, never per
packet); the accept values of the compiled program are rewritten to the snap
length. When libpcap is not installed, the default expression ``tcp`` falls
back to a built-in program (the one ``tcpdump -dd -s 96 tcp`` prints for
Ethernet); any other expression then is a configuration error.

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
