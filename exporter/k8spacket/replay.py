"""Offline replay: capture files through the same decode and tracking path as live.

The classic-pcap loop walks the reader's buffers in place (no per-packet copy,
no per-packet generator step); pcapng goes packet by packet through scapy's
reader. Packets the decoder cannot use are counted by reason, never dropped
silently.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterable

from k8spacket.decode import SKIP_REASONS, decoder_for
from k8spacket.flows.tracker import ConnectionTracker
from k8spacket.pcapfile import CaptureError, CaptureFile

#: progress(bytes done in this file, file size, file path)
Progress = Callable[[int, int, str], None]


@dataclasses.dataclass
class ReplayStats:
    """What a replay read, and what it skipped by reason."""

    files: int = 0
    packets: int = 0
    tcp_packets: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    def add_skips(self, counts: list[int]) -> None:
        for code, n in enumerate(counts):
            if n:
                reason = SKIP_REASONS.get(code, f"code_{code}")
                self.skipped[reason] = self.skipped.get(reason, 0) + n


def replay_capture(
    cf: CaptureFile,
    tracker: ConnectionTracker,
    stats: ReplayStats,
    progress: Progress | None = None,
) -> None:
    """Feed every packet of one open capture to ``tracker``.

    Raises :class:`CaptureError` (after accounting every packet read before
    the problem) when the file is corrupt or truncated.
    """
    skips = [0] * (max(SKIP_REASONS) + 1)
    add = tracker.add
    packets = 0
    try:
        if cf.format == "pcap":
            dec = decoder_for(cf.linktype)
            rec = cf.record_header.unpack_from
            tick = cf.tick
            for buf, pos, end in cf.pcap_chunks():
                while pos < end:
                    sec, frac, caplen, wirelen = rec(buf, pos)
                    r = dec(buf, pos + 16, caplen, wirelen)
                    if r.__class__ is tuple:
                        add(sec + frac * tick, r)
                    else:
                        skips[r] += 1  # type: ignore[index]
                    pos += 16 + caplen
                    packets += 1
                if progress is not None:
                    progress(cf.position(), cf.size, cf.path)
        else:
            cur = -1
            dec = decoder_for(0)
            for n, (ts, data, wirelen, linktype) in enumerate(cf.packets(), 1):
                if linktype != cur:
                    dec = decoder_for(linktype)
                    cur = linktype
                r = dec(data, 0, len(data), wirelen)
                if r.__class__ is tuple:
                    add(ts, r)
                else:
                    skips[r] += 1  # type: ignore[index]
                packets += 1
                if progress is not None and not n & 0x3FFF:
                    progress(cf.position(), cf.size, cf.path)
    finally:
        stats.packets += packets
        stats.tcp_packets += packets - sum(skips)
        stats.add_skips(skips)
    if progress is not None:
        progress(cf.size, cf.size, cf.path)


def replay_files(
    paths: Iterable[str],
    tracker: ConnectionTracker,
    progress: Progress | None = None,
) -> ReplayStats:
    """Replay files in order through one tracker, then flush what is still open.

    A file that cannot be read is recorded in ``stats.errors`` (one line each)
    and the replay goes on with the next one.
    """
    stats = ReplayStats()
    # The tracker makes no reference cycles; with a million live objects the
    # cyclic collector would otherwise rescan them over and over.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in paths:
            try:
                with CaptureFile(path) as cf:
                    stats.files += 1
                    replay_capture(cf, tracker, stats, progress)
            except CaptureError as e:
                stats.errors.append(str(e))
    finally:
        if was_enabled:
            gc.enable()
    tracker.flush_all()
    return stats
