"""Reading capture files: classic pcap and pcapng, plain or gzip-compressed.

Classic pcap is read here with one ``struct`` unpack per record over large
buffered reads: it is the replay hot path and the format is a fixed 16-byte
record header (scapy's ``RawPcapReader`` costs a namedtuple and two reads per
packet). pcapng goes through scapy's ``RawPcapNgReader``, which handles its block
structure, options and per-interface link types.

Both readers stop with :class:`CaptureError` on a file that is not a capture, and
with :class:`CaptureTruncated` (a subclass) when the file ends in the middle of a
record; every complete packet before the cut has been yielded by then, so callers
report what they read and then the error.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from typing import IO, TypeAlias

#: (timestamp seconds, captured bytes, original wire length, pcap link type)
Packet: TypeAlias = tuple[float, bytes, int, int]

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
#: Largest record tcpdump itself accepts (its MAXIMUM_SNAPLEN); larger is corruption.
MAX_RECORD = 262144
_CHUNK = 1 << 22


class CaptureError(Exception):
    """The file is not a readable capture (one line, shown to the user)."""


class CaptureTruncated(CaptureError):
    """The capture ends in the middle of a record."""


class CaptureFile:
    """An open capture file; iterate :meth:`packets` once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        self._read_error: BaseException | None = None
        try:
            raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise CaptureError(f"{path}: cannot open: {e.strerror or e}") from None
        self.size = os.fstat(raw.fileno()).st_size
        self._raw = raw
        head = raw.read(4)
        self._f: IO[bytes] | gzip.GzipFile = raw
        if head[:2] == _GZIP_MAGIC:
            raw.seek(0)
            self._f = gzip.GzipFile(fileobj=raw)
            try:
                head = self._f.read(4)
            except (OSError, EOFError, zlib.error) as e:
                raise CaptureError(f"{path}: broken gzip stream: {e}") from None
        self.magic = head
        self.linktype = -1
        self.tick = 1e-6
        self.record_header = struct.Struct("<IIII")
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self._pcap_header()
        elif head == _PCAPNG_MAGIC:
            self.format = "pcapng"
        elif len(head) < 4:
            raise CaptureError(f"{path}: empty or too short to be a capture file")
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {head.hex()})")

    def position(self) -> int:
        """Bytes consumed from the underlying file (for progress bars)."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def packets(self) -> Iterator[Packet]:
        """Every packet as (timestamp, bytes, wire length, link type)."""
        if self.format == "pcapng":
            yield from self._pcapng_packets()
            return
        rec = self.record_header.unpack_from
        tick = self.tick
        lt = self.linktype
        for buf, pos, end in self.pcap_chunks():
            while pos < end:
                sec, frac, caplen, wirelen = rec(buf, pos)
                yield sec + frac * tick, buf[pos + 16 : pos + 16 + caplen], wirelen, lt
                pos += 16 + caplen

    # ---------------------------------------------------------------- pcap
    def _pcap_header(self) -> None:
        endian, self.tick = _PCAP_MAGICS[self.magic]
        try:
            hdr = self._f.read(20)
        except (OSError, EOFError, zlib.error) as e:
            raise CaptureError(f"{self.path}: {e}") from None
        if len(hdr) < 20:
            raise CaptureTruncated(f"{self.path}: truncated file header")
        self.linktype = struct.unpack(endian + "HHIIII", hdr)[5] & 0x0FFFFFFF
        self.record_header = struct.Struct(endian + "IIII")

    def pcap_chunks(self) -> Iterator[tuple[bytes, int, int]]:
        """Classic pcap in large buffers: ``(buf, start, end)`` holds whole records.

        Each record in ``buf[start:end]`` is a 16-byte header (unpack it with
        :attr:`record_header`: seconds, fraction in :attr:`tick` units, captured
        length, wire length) followed by the packet. The hot loop of replay walks
        these in place, with no per-packet copy.
        """
        rec = self.record_header.unpack_from
        f = self._f
        buf = b""
        pos = 0
        n = 0
        eof = False
        while not eof:
            try:
                more = self._read_salvaging(f, _CHUNK)
            except (OSError, EOFError, zlib.error) as e:
                raise CaptureTruncated(f"{self.path}: read error after {n} packets: {e}") from None
            buf = buf[pos:] + more
            pos = 0
            eof = not more
            end = len(buf)
            scan = 0
            while scan + 16 <= end:
                caplen = rec(buf, scan)[2]
                if caplen > MAX_RECORD:
                    if scan:
                        yield buf, pos, scan
                    raise CaptureError(
                        f"{self.path}: corrupt record after {n} packets "
                        f"(captured length {caplen} > {MAX_RECORD})"
                    )
                nxt = scan + 16 + caplen
                if nxt > end:
                    break
                n += 1
                scan = nxt
            if scan > pos:
                yield buf, pos, scan
            pos = scan
        if pos < len(buf):
            raise CaptureTruncated(
                f"{self.path}: truncated after {n} packets "
                f"({len(buf) - pos} bytes of an incomplete record)"
            )

    def _read_salvaging(self, f: IO[bytes] | gzip.GzipFile, n: int) -> bytes:
        """Up to ``n`` bytes. A gzip stream cut short (or corrupt) first returns what
        it decompressed before the bad spot and raises on the next call, so the
        records before a cut are replayed (``GzipFile.read`` would drop them)."""
        error = self._read_error
        if error is not None:
            self._read_error = None
            raise error
        if not isinstance(f, gzip.GzipFile):
            return f.read(n)
        parts: list[bytes] = []
        got = 0
        while got < n:
            try:
                more = f.read1(n - got)
            except (OSError, EOFError, zlib.error) as e:
                if not parts:
                    raise
                self._read_error = e
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    # -------------------------------------------------------------- pcapng
    def _pcapng_packets(self) -> Iterator[Packet]:
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        try:
            problem = self._pcapng_problem()
        except (OSError, EOFError, zlib.error) as e:
            problem = f"unreadable ({e})"
        f = self._f
        f.seek(0)
        try:
            # scapy's reader metaclass takes one argument: a path or an open file
            # (positioned at the start; it reads the magic itself).
            reader = RawPcapNgReader(f)  # type: ignore[arg-type]  # (its stubs say str)
        except (Scapy_Exception, EOFError, OSError, struct.error) as e:
            raise CaptureError(f"{self.path}: bad pcapng section header: {e}") from None
        n = 0
        while True:
            try:
                data, meta = reader._read_packet()
            except EOFError:
                break
            except (Scapy_Exception, struct.error, OSError, ValueError, IndexError) as e:
                raise CaptureError(f"{self.path}: corrupt block after {n} packets: {e}") from None
            resol = meta.tsresol or 1000000
            ts = ((meta.tshigh << 32) | meta.tslow) / resol
            wirelen = meta.wirelen if meta.wirelen is not None else len(data)
            n += 1
            yield ts, data, wirelen, meta.linktype
        if problem:
            raise CaptureTruncated(f"{self.path}: {problem} after {n} packets")

    def _pcapng_problem(self) -> str | None:
        """Walk the pcapng block lengths: what is wrong with the file's end, if anything.

        scapy's reader takes a block cut short for a clean end of file, so the
        structure is checked here first (seeking over block bodies; a gzipped file
        is read through once).
        """
        f = self._f
        f.seek(0)
        endian = "<"
        offset = 0
        while True:
            head = f.read(8)
            if not head:
                return None
            if len(head) < 8:
                return f"truncated block header at byte {offset}"
            if head[:4] == _PCAPNG_MAGIC:
                bom = f.read(4)
                if len(bom) < 4:
                    return f"truncated section header at byte {offset}"
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                consumed = 12
            else:
                consumed = 8
            blocklen = struct.unpack(endian + "I", head[4:8])[0]
            if blocklen < 12 or blocklen % 4:
                return f"corrupt block length {blocklen} at byte {offset}"
            rest = blocklen - consumed
            if isinstance(f, gzip.GzipFile):
                got = len(f.read(rest))
            else:
                here = f.tell()
                got = min(rest, max(0, self.size - here))
                f.seek(here + got)
            if got < rest:
                return (
                    f"truncated block at byte {offset} ({blocklen - consumed - got} bytes missing)"
                )
            offset += blocklen
