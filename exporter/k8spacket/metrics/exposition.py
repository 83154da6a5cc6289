"""What ``/metrics`` answers: negotiated format, fast traffic families, gzip.

**Negotiation** is prometheus_client's own (:func:`negotiate` calls its
``choose_encoder`` and ``gzip_accepted``): a scraper that asks for OpenMetrics
(Prometheus 2.x puts ``application/openmetrics-text;version=1.0.0`` first in its
``Accept`` header) gets OpenMetrics 1.0.0, anything else the text format 0.0.4;
the body is gzipped when ``Accept-Encoding`` allows it.

**Speed.** prometheus_client's encoders build a dict and format, sort and escape
every label of every sample on every scrape: about 25 µs per sample here, ~2 s
at the full series budget. Label sets of the traffic families change rarely, so
:class:`TrafficWriter` renders each label set's text once and keeps it for as
long as the label set exists (the cache is rebuilt from the snapshot on every
scrape, so it never outgrows the series budget). A scrape is then one string
join per sample. Sample lines are the same in both formats (same label
escaping, same float formatting); only the ``# HELP``/``# TYPE`` lines differ
(OpenMetrics names a counter family without ``_total`` and escapes ``"`` in
help text) and OpenMetrics ends with ``# EOF``. The few self-metric families
are left to prometheus_client's encoder of the negotiated format, which also
writes the ``# EOF``.

The output is byte-identical to what the negotiated prometheus_client encoder
writes for the same families; ``tests/test_metrics_exposition.py`` holds the
two against each other in both formats.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any, cast

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.utils import floatToGoString

from k8spacket.metrics.budget import Key
from k8spacket.metrics.traffic import (
    CLOSED,
    CONNECTIONS,
    DURATION,
    HANDSHAKE,
    OPEN,
    RECEIVED,
    SENT,
    TrafficSnapshot,
)

fmt = cast(Callable[[float], str], floatToGoString)
#: HELP/TYPE lines are written by the caller (they come from the catalogue).
HeaderFor = Callable[[str], str]
#: prometheus_client's encoder of the negotiated format (registry → bytes)
Encoder = Callable[[Any], bytes]
#: (encoder, openmetrics?) → the body, in chunks
Render = Callable[[Encoder, bool], list[bytes]]
OPENMETRICS_TYPE = "application/openmetrics-text"
#: the Accept header of Prometheus 2.42's scrapes (captured from the real server)
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
#: lines per chunk of the traffic text (~200 KB: ~0.1 ms to join and encode)
CHUNK_LINES = 1000
#: gzip level of /metrics answers: 1 is ~5x faster than 9 and ~25% bigger here
GZIP_LEVEL = 1


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _pairs(names: tuple[str, ...], key: Key) -> list[str]:
    return [f'{n}="{_escape(v)}"' for n, v in sorted(zip(names, key, strict=True))]


class TrafficWriter:
    """Renders the traffic families of a snapshot, caching each label set's text.

    The text comes out in chunks of about :data:`CHUNK_LINES` lines (bytes,
    UTF-8), never as one string: joining or encoding tens of megabytes is one C
    call that holds the interpreter lock for tens of milliseconds, and the
    capture thread must not wait that long.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[str, ...], dict[Key, str]] = {}
        self._split: dict[Key, tuple[str, str, str]] = {}
        self._lock = threading.Lock()

    def render(self, snap: TrafficSnapshot, header: HeaderFor) -> list[bytes]:
        with self._lock:
            return self._render(snap, header)

    def _render(self, snap: TrafficSnapshot, header: HeaderFor) -> list[bytes]:
        names = snap.label_names
        out: list[bytes] = []
        parts: list[str] = []
        flat_cache_in_use: dict[tuple[str, ...], dict[Key, str]] = {}
        for fam, lnames in (
            (SENT, names),
            (RECEIVED, names),
            (CONNECTIONS, (*names, "outcome")),
            (CLOSED, (*names, "close")),
        ):
            parts.append(header(fam))
            series = snap.series[fam]
            cache = flat_cache_in_use.setdefault(lnames, {})
            old = self._flat.get(lnames, {})
            for key, v in series:
                s = cache.get(key) or old.get(key)
                if s is None:
                    s = "{" + ",".join(_pairs(lnames, key)) + "}"
                cache[key] = s
                parts.append(f"{fam}{s} {fmt(v[0])}\n")
                if len(parts) >= CHUNK_LINES:
                    out.append("".join(parts).encode())
                    parts.clear()
        split_in_use: dict[Key, tuple[str, str, str]] = {}
        for fam, bounds in ((HANDSHAKE, snap.handshake_buckets), (DURATION, snap.duration_buckets)):
            parts.append(header(fam))
            les = [fmt(b) for b in bounds] + ["+Inf"]
            nb = len(les)
            bucket, count, total = fam + "_bucket", fam + "_count", fam + "_sum"
            for key, v in snap.series[fam]:
                sp = split_in_use.get(key) or self._split.get(key)
                if sp is None:
                    pairs = sorted(zip(names, key, strict=True))
                    pre = ",".join(f'{n}="{_escape(x)}"' for n, x in pairs if n < "le")
                    post = ",".join(f'{n}="{_escape(x)}"' for n, x in pairs if n >= "le")
                    head = "{" + pre + ("," if pre else "") + 'le="'
                    tail = '"' + ("," + post if post else "") + "}"
                    full = "{" + ",".join(p for p in (pre, post) if p) + "}"
                    sp = (head, tail, full)
                split_in_use[key] = sp
                head, tail, full = sp
                acc = 0.0
                for i in range(nb):
                    acc += v[i]
                    parts.append(f"{bucket}{head}{les[i]}{tail} {fmt(acc)}\n")
                parts.append(f"{count}{full} {fmt(acc)}\n")
                parts.append(f"{total}{full} {fmt(v[nb])}\n")
                if len(parts) >= CHUNK_LINES:
                    out.append("".join(parts).encode())
                    parts.clear()
        parts.append(header(OPEN))
        cache = flat_cache_in_use.setdefault(names, {})
        old = self._flat.get(names, {})
        for key, v in snap.series[OPEN]:
            s = cache.get(key) or old.get(key)
            if s is None:
                s = "{" + ",".join(_pairs(names, key)) + "}"
            cache[key] = s
            parts.append(f"{OPEN}{s} {fmt(v[0])}\n")
            if len(parts) >= CHUNK_LINES:
                out.append("".join(parts).encode())
                parts.clear()
        out.append("".join(parts).encode())
        self._flat = flat_cache_in_use
        self._split = split_in_use
        return out


def negotiate(
    accept: str, accept_encoding: str, render: Render
) -> tuple[list[bytes], list[tuple[str, str]]]:
    """(body chunks, headers) of one scrape, in the format ``accept`` asks for.

    Gzip (when ``accept_encoding`` allows it) compresses chunk by chunk; zlib
    lets go of the interpreter lock while it works.
    """
    encoder, content_type = choose_encoder(accept)
    chunks = render(encoder, content_type.startswith(OPENMETRICS_TYPE))
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
        chunks = [z.compress(c) for c in chunks]
        chunks.append(z.flush())
        headers.append(("Content-Encoding", "gzip"))
    return chunks, headers
