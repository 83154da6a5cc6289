"""Offline replay: capture files through the same decode and tracking path as live.

The classic-pcap loop walks the reader's buffers in place (no per-packet copy,
no per-packet generator step); pcapng goes packet by packet through scapy's
reader. Packets the decoder cannot use are counted by reason, never dropped
silently.

``capture_mode="lean"`` applies the lean capture filter's rule
(:func:`k8spacket.capture.bpf.lean_passes`) to every decoded packet before the
tracker sees it, so every accuracy check that replays a capture also checks
the lean mode. The rule is applied to the decoded fields rather than by
running the kernel program, so it works for every link type the decoder reads
(a test holds the two against each other on Ethernet frames). Packets the
filter leaves out are counted in ``ReplayStats.filtered``. ``lean_warmup``
plays the live agent's warm-up (full capture for the first
``capture.leanWarmup`` seconds, counted from the first packet); by default it
is 0: replay is the lean mode at its strictest.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterable

from k8spacket.capture.bpf import CAPTURE_MODES, DEFAULT_LEAN_BOUNDARY, FilterError
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
    #: TCP packets the lean filter left out (``capture_mode="lean"``)
    filtered: int = 0
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
    lean_bits: int = 0,
    lean_after: float = float("-inf"),
) -> None:
    """Feed every packet of one open capture to ``tracker``.

    ``lean_bits`` (log2 of the lean boundary; 0 for the full mode) applies the
    lean filter's rule to packets stamped at or after ``lean_after``.

    Raises :class:`CaptureError` (after accounting every packet read before
    the problem) when the file is corrupt or truncated.
    """
    skips = [0] * (max(SKIP_REASONS) + 1)
    add = tracker.add
    packets = 0
    filtered = 0
    bits = lean_bits
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
                        ts = sec + frac * tick
                        if (
                            bits
                            and ts >= lean_after
                            and not (
                                r[6] & 7 or ((r[4] + r[7]) & 0xFFFFFFFF) >> bits != r[4] >> bits
                            )
                        ):
                            filtered += 1
                        else:
                            add(ts, r)
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
                    if (
                        bits
                        and ts >= lean_after
                        and not (r[6] & 7 or ((r[4] + r[7]) & 0xFFFFFFFF) >> bits != r[4] >> bits)
                    ):
                        filtered += 1
                    else:
                        add(ts, r)
                else:
                    skips[r] += 1  # type: ignore[index]
                packets += 1
                if progress is not None and not n & 0x3FFF:
                    progress(cf.position(), cf.size, cf.path)
    finally:
        stats.packets += packets
        stats.tcp_packets += packets - sum(skips)
        stats.filtered += filtered
        stats.add_skips(skips)
    if progress is not None:
        progress(cf.size, cf.size, cf.path)


def replay_files(
    paths: Iterable[str],
    tracker: ConnectionTracker,
    progress: Progress | None = None,
    *,
    capture_mode: str = "full",
    lean_boundary: int = DEFAULT_LEAN_BOUNDARY,
    lean_warmup: float = 0.0,
) -> ReplayStats:
    """Replay files in order through one tracker, then flush what is still open.

    A file that cannot be read is recorded in ``stats.errors`` (one line each)
    and the replay goes on with the next one. ``capture_mode`` ``lean`` filters
    as the lean capture does (and tells the tracker so).
    """
    if capture_mode not in CAPTURE_MODES:
        raise FilterError(f"capture mode must be one of {', '.join(CAPTURE_MODES)}")
    bits = lean_boundary.bit_length() - 1
    if lean_boundary < 2 or lean_boundary != 1 << bits or bits > 31:
        raise FilterError(f"lean boundary must be a power of two up to 2 GiB, got {lean_boundary}")
    lean_bits = bits if capture_mode == "lean" else 0
    tracker.lean = capture_mode == "lean"
    paths = list(paths)
    lean_after = float("-inf")
    if lean_bits and lean_warmup > 0:
        lean_after = _first_timestamp(paths) + lean_warmup
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
                    replay_capture(cf, tracker, stats, progress, lean_bits, lean_after)
            except CaptureError as e:
                stats.errors.append(str(e))
    finally:
        if was_enabled:
            gc.enable()
    tracker.flush_all()
    return stats


def _first_timestamp(paths: list[str]) -> float:
    """The time of the first packet of the first readable file (0.0 when none)."""
    for path in paths:
        try:
            with CaptureFile(path) as cf:
                for ts, _data, _wirelen, _linktype in cf.packets():
                    return float(ts)
        except CaptureError:
            continue
    return 0.0
