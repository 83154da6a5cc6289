"""Can this process capture packets? Asked once at start-up, answered in one line.

Capture needs ``CAP_NET_RAW`` (an ``AF_PACKET`` socket). Without it every ring
fails to open, each interface is skipped as ``open_failed``, and the agent would
serve empty metrics while looking healthy. :func:`capture_denied` tries what
capture does (open and close one ``AF_PACKET`` socket) and, when that is refused,
says why, naming the capability and whether the process's effective set
(``/proc/self/status``, ``CapEff``) holds it; the agent logs that line and keeps
``/readyz`` failing with it.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

CAP_NET_RAW = 13


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int | None:
    """The effective capability mask of this process, or ``None`` if unknown."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def capture_denied(status: Path = Path("/proc/self/status")) -> str | None:
    """``None`` when packet sockets can be opened; else one line saying why not."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES):
            return f"cannot open a packet socket: {e}"
        caps = effective_capabilities(status)
        held = (
            ""
            if caps is None
            else (
                " (it is in the effective set, but the kernel refused)"
                if caps >> CAP_NET_RAW & 1
                else " (not in the effective capability set)"
            )
        )
        return f"no CAP_NET_RAW: packet capture is not permitted{held}"
    return None
