"""Headless Chromium for page tests: a screenshot, the DOM, and a look at the pixels.

:func:`screenshot` and :func:`dump_dom` run Debian's ``chromium`` with the flags a
root test run needs (``--no-sandbox``) and none of its background networking;
:func:`png_pixels` decodes the screenshot (8-bit RGB/RGBA, not interlaced: what
Chromium writes) with zlib alone, so a test can count what is on it.
Screenshots are kept under ``tmp/artifacts/`` in the repository (or
``$K8SPACKET_ARTIFACTS``) for a person to look at after the run.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from conftest import REPO, require_tool

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def artifacts_dir() -> Path:
    d = Path(os.environ.get("K8SPACKET_ARTIFACTS") or REPO / "tmp" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    binary = require_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="k8spacket-chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def screenshot(url: str, out: Path, size: str = "1280,900", timeout: float = 90) -> Path:
    r = _chromium([f"--screenshot={out}", f"--window-size={size}", url], timeout)
    assert out.is_file(), (
        f"chromium wrote no screenshot: {r.stderr.decode(errors='replace')[-2000:]}"
    )
    return out


def dump_dom(url: str, timeout: float = 90) -> str:
    r = _chromium(["--dump-dom", url], timeout)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r.stdout.decode(errors="replace")


def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, ...]]]:
    """(width, height, pixels as RGB tuples) of an 8-bit RGB or RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        pixels.extend(tuple(line[x : x + 3]) for x in range(0, stride, channels))
        prev = line
    return width, height, pixels


def ink(pixels: list[tuple[int, ...]]) -> float:
    """Share of pixels that are not (near) white."""
    return sum(1 for p in pixels if min(p) < 235) / max(1, len(pixels))


def reddish(pixels: list[tuple[int, ...]]) -> int:
    """Pixels close to the page's red (failing edges)."""
    return sum(1 for r, g, b in pixels if r > 170 and g < 90 and b < 90)
