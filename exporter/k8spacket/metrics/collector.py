"""The Prometheus collector: fresh metric families from a snapshot on every scrape.

:class:`K8spacketCollector` is a prometheus_client custom collector. Each
``collect()`` takes one :meth:`TrafficMetrics.snapshot` (a copy made under the
store's lock, idle series expired first), reads the self-metric sources once,
and yields newly built families. Nothing is cached between scrapes and no
prometheus_client object lives on the record path.

Family names, types and labels are the contract of docs/design.md ("Metrics") and
are listed in ``docs/metrics.md`` (a test holds that table against this
output). Counters and histograms add up across nodes; the only gauges are
``k8spacket_tcp_open_connections``, ``k8spacket_capture_interfaces``,
``k8spacket_flows_tracked`` and ``k8spacket_build_info``. Label names within a
sample are written in sorted order by prometheus_client's exposition.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, cast

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from k8spacket import __version__
from k8spacket.decode import SKIP_REASONS
from k8spacket.metrics.exposition import Encoder, TrafficWriter, negotiate
from k8spacket.metrics.sources import SelfMetricSources
from k8spacket.metrics.traffic import (
    CLOSED,
    CONNECTIONS,
    DURATION,
    FAMILIES,
    HANDSHAKE,
    OPEN,
    RECEIVED,
    SENT,
    TrafficMetrics,
    TrafficSnapshot,
)

log = logging.getLogger(__name__)

BUILD_INFO = "k8spacket_build_info"
CAPTURE_PACKETS = "k8spacket_capture_packets_total"
CAPTURE_DROPS = "k8spacket_capture_drops_total"
CAPTURE_INTERFACES = "k8spacket_capture_interfaces"
DECODE_ERRORS = "k8spacket_decode_errors_total"
FLOWS_TRACKED = "k8spacket_flows_tracked"
FLOWS_EVICTED = "k8spacket_flows_evicted_total"
TRACKER_IGNORED = "k8spacket_tracker_ignored_packets_total"
SERIES_OVERFLOW = "k8spacket_series_overflow_total"
ENRICHMENT_LOOKUPS = "k8spacket_enrichment_lookups_total"
K8S_WATCH_EVENTS = "k8spacket_k8s_watch_events_total"
THREAD_RESTARTS = "k8spacket_thread_restarts_total"

#: family → (type, help). The help text is what ``# HELP`` says.
CATALOGUE: dict[str, tuple[str, str]] = {
    SENT: ("counter", "TCP payload bytes sent from client to server."),
    RECEIVED: ("counter", "TCP payload bytes sent from server back to client."),
    CONNECTIONS: ("counter", "TCP connections seen, by outcome."),
    CLOSED: ("counter", "TCP connections that ended, by how they closed."),
    HANDSHAKE: ("histogram", "TCP handshake time: first SYN to the client's ACK of the SYN-ACK."),
    DURATION: ("histogram", "TCP connection lifetime: first packet to last packet or close."),
    OPEN: ("gauge", "TCP connections open now."),
    BUILD_INFO: ("gauge", "Always 1; labels carry the k8spacket and Python versions."),
    CAPTURE_PACKETS: ("counter", "Packets read from the capture ring, by interface."),
    CAPTURE_DROPS: ("counter", "Packets the kernel dropped before capture, by interface."),
    CAPTURE_INTERFACES: ("gauge", "Interfaces being captured now."),
    DECODE_ERRORS: ("counter", "Captured packets the decoder could not use, by reason."),
    FLOWS_TRACKED: ("gauge", "Connections in the tracker's table now."),
    FLOWS_EVICTED: (
        "counter",
        "Connections removed from the tracker before they closed, by reason.",
    ),
    TRACKER_IGNORED: (
        "counter",
        "Packets the connection tracker could not attribute, by reason.",
    ),
    SERIES_OVERFLOW: (
        "counter",
        'Updates folded into workload "__other__" because a family was over its series budget.',
    ),
    ENRICHMENT_LOOKUPS: ("counter", "Identity lookups, by source and result."),
    K8S_WATCH_EVENTS: ("counter", "Kubernetes watch events received, by resource."),
    THREAD_RESTARTS: (
        "counter",
        "Background threads restarted after an unexpected exception, by thread.",
    ),
}

T = TypeVar("T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]
_go_float = cast(Callable[[float], str], floatToGoString)


def _family(name: str) -> Metric:
    mtype, doc = CATALOGUE[name]
    base = name[: -len("_total")] if mtype == "counter" else name
    return Metric(base, doc, mtype)


class K8spacketCollector(Collector):
    """Yields the traffic families and the self-metrics, built fresh per scrape."""

    def __init__(
        self,
        traffic: TrafficMetrics | None,
        sources: SelfMetricSources | None = None,
        *,
        version: str = __version__,
        python_version: str | None = None,
    ) -> None:
        self.traffic = traffic
        self.sources = sources if sources is not None else SelfMetricSources()
        self._writer = TrafficWriter()
        self.build_labels = {
            "version": version,
            "python_version": python_version or platform.python_version(),
        }

    # ------------------------------------------------------------------ names
    def family_names(self) -> list[str]:
        """The families this collector yields, in exposition order."""
        s = self.sources
        names: list[str] = []
        if self.traffic is not None:
            names += FAMILIES
        names.append(BUILD_INFO)
        for name, source in (
            (CAPTURE_PACKETS, s.capture_packets),
            (CAPTURE_DROPS, s.capture_drops),
            (CAPTURE_INTERFACES, s.capture_interfaces),
            (DECODE_ERRORS, s.decode_errors),
            (FLOWS_TRACKED, s.flows_tracked),
            (FLOWS_EVICTED, s.flows_evicted),
            (TRACKER_IGNORED, s.tracker_ignored),
            (SERIES_OVERFLOW, self.traffic),
            (ENRICHMENT_LOOKUPS, s.enrichment_lookups),
            (K8S_WATCH_EVENTS, s.k8s_watch_events),
            (THREAD_RESTARTS, s.thread_restarts),
        ):
            if source is not None:
                names.append(name)
        return names

    def describe(self) -> Iterable[Metric]:
        """Empty families with the names this collector yields (duplicate check)."""
        return [_family(n) for n in self.family_names()]

    # ---------------------------------------------------------------- collect
    def collect(self) -> Iterable[Metric]:
        snap = self.traffic.snapshot() if self.traffic is not None else None
        if snap is not None:
            yield from traffic_families(snap)
        yield from self._self_families(snap)

    def exposition(
        self, *others: Collector, encoder: Encoder = generate_latest, openmetrics: bool = False
    ) -> bytes:
        """One scrape's body (what /metrics answers), fast.

        Byte-identical to ``encoder`` (prometheus_client's text or OpenMetrics
        ``generate_latest``; ``openmetrics`` says which) over a registry holding
        this collector, then ``others``; but the traffic families are written by
        :class:`TrafficWriter`, which keeps each label set's text.
        """
        return b"".join(self.exposition_chunks(*others, encoder=encoder, openmetrics=openmetrics))

    def exposition_chunks(
        self, *others: Collector, encoder: Encoder = generate_latest, openmetrics: bool = False
    ) -> list[bytes]:
        """:meth:`exposition` in chunks of a few hundred kilobytes (what the server writes)."""
        snap = self.traffic.snapshot() if self.traffic is not None else None
        header = _om_header if openmetrics else _header
        chunks = self._writer.render(snap, header) if snap is not None else []
        families = list(self._self_families(snap))
        for other in others:
            families.extend(other.collect())
        chunks.append(encoder(_Families(families)))
        return chunks

    def _self_families(self, snap: TrafficSnapshot | None) -> Iterator[Metric]:
        yield _info(BUILD_INFO, self.build_labels)
        s = self.sources
        if (v := _read(s.capture_packets)) is not None:
            yield _by_label(CAPTURE_PACKETS, "interface", v)
        if (v := _read(s.capture_drops)) is not None:
            yield _by_label(CAPTURE_DROPS, "interface", v)
        if (n := _read(s.capture_interfaces)) is not None:
            yield _single(CAPTURE_INTERFACES, n)
        if (v := _read(s.decode_errors)) is not None:
            counts: dict[str, float] = dict.fromkeys(SKIP_REASONS.values(), 0)
            counts.update(v)
            yield _by_label(DECODE_ERRORS, "reason", counts)
        if (n := _read(s.flows_tracked)) is not None:
            yield _single(FLOWS_TRACKED, n)
        if (v := _read(s.flows_evicted)) is not None:
            yield _by_label(FLOWS_EVICTED, "reason", v)
        if (v := _read(s.tracker_ignored)) is not None:
            yield _by_label(TRACKER_IGNORED, "reason", v)
        if snap is not None:
            yield _by_label(SERIES_OVERFLOW, "metric", snap.overflow)
        if (lookups := _read(s.enrichment_lookups)) is not None:
            yield _lookups(lookups)
        if (v := _read(s.k8s_watch_events)) is not None:
            yield _by_label(K8S_WATCH_EVENTS, "resource", v)
        if (v := _read(s.thread_restarts)) is not None:
            yield _by_label(THREAD_RESTARTS, "thread", v)


class _Families(Collector):
    """Already built families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _header(name: str) -> str:
    mtype, doc = CATALOGUE[name]
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n"


def _om_header(name: str) -> str:
    mtype, doc = CATALOGUE[name]
    base = name[: -len("_total")] if mtype == "counter" else name
    doc = doc.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return f"# HELP {base} {doc}\n# TYPE {base} {mtype}\n"


class ScrapeRegistry(CollectorRegistry):
    """A registry whose first collector is a :class:`K8spacketCollector`, served fast.

    ``generate_latest(registry)`` and ``get_sample_value`` work as on any
    registry; :meth:`scrape` answers ``/metrics``: the negotiated format, the
    traffic families through the fast writer, every other registered collector
    (in registration order) through prometheus_client's encoder.
    """

    def __init__(self, collector: K8spacketCollector) -> None:
        super().__init__()
        self.collector = collector
        self._others: list[Collector] = []
        super().register(collector)

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self._others.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self._others.remove(collector)

    def render(self, encoder: Encoder, openmetrics: bool) -> list[bytes]:
        return self.collector.exposition_chunks(
            *self._others, encoder=encoder, openmetrics=openmetrics
        )

    def scrape_chunks(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[list[bytes], list[tuple[str, str]]]:
        """(body chunks, headers) answering a request with these ``Accept*`` headers."""
        return negotiate(accept, accept_encoding, self.render)

    def scrape(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """:meth:`scrape_chunks` with the body in one piece."""
        chunks, headers = self.scrape_chunks(accept, accept_encoding)
        return b"".join(chunks), headers


def make_wsgi_app(registry: ScrapeRegistry) -> WSGIApp:
    """A WSGI app answering every request with ``registry.scrape_chunks`` (negotiated)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        chunks, headers = registry.scrape_chunks(
            environ.get("HTTP_ACCEPT", ""), environ.get("HTTP_ACCEPT_ENCODING", "")
        )
        length = sum(len(c) for c in chunks)
        start_response("200 OK", [*headers, ("Content-Length", str(length))])
        return chunks

    return app


def traffic_families(snap: TrafficSnapshot) -> Iterator[Metric]:
    """The seven traffic families of one snapshot."""
    names = snap.label_names
    for fam in (SENT, RECEIVED):
        m = _family(fam)
        m.samples = [
            Sample(fam, dict(zip(names, k, strict=True)), v[0]) for k, v in snap.series[fam]
        ]
        yield m
    for fam, tail in ((CONNECTIONS, "outcome"), (CLOSED, "close")):
        m = _family(fam)
        tnames = (*names, tail)
        m.samples = [
            Sample(fam, dict(zip(tnames, k, strict=True)), v[0]) for k, v in snap.series[fam]
        ]
        yield m
    yield _histogram(HANDSHAKE, names, snap.handshake_buckets, snap.series[HANDSHAKE])
    yield _histogram(DURATION, names, snap.duration_buckets, snap.series[DURATION])
    m = _family(OPEN)
    m.samples = [Sample(OPEN, dict(zip(names, k, strict=True)), v[0]) for k, v in snap.series[OPEN]]
    yield m


def _histogram(
    fam: str,
    names: tuple[str, ...],
    bounds: tuple[float, ...],
    series: list[tuple[tuple[str, ...], tuple[float, ...]]],
) -> Metric:
    m = _family(fam)
    les = [_go_float(b) for b in bounds] + ["+Inf"]
    nb = len(les)
    bucket, count, total = fam + "_bucket", fam + "_count", fam + "_sum"
    out = m.samples
    for key, v in series:
        labels = dict(zip(names, key, strict=True))
        acc = 0.0
        for i in range(nb):
            acc += v[i]
            out.append(Sample(bucket, {**labels, "le": les[i]}, acc))
        out.append(Sample(count, labels, acc))
        out.append(Sample(total, labels, v[nb]))
    return m


def _read(source: Callable[[], T] | None) -> T | None:
    if source is None:
        return None
    try:
        return source()
    except Exception:
        log.exception("self-metric source %r failed; its family is left out of this scrape", source)
        return None


def _by_label(fam: str, label: str, values: Mapping[str, float]) -> Metric:
    m = _family(fam)
    m.samples = [Sample(fam, {label: str(k)}, float(v)) for k, v in sorted(values.items())]
    return m


def _single(fam: str, value: float) -> Metric:
    m = _family(fam)
    m.samples = [Sample(fam, {}, float(value))]
    return m


def _info(fam: str, labels: Mapping[str, str]) -> Metric:
    m = _family(fam)
    m.samples = [Sample(fam, dict(labels), 1.0)]
    return m


def _lookups(
    counts: Mapping[tuple[str, str], float] | Mapping[str, Mapping[str, float]],
) -> Metric:
    flat: dict[tuple[str, str], float] = {}
    for k, v in counts.items():
        if isinstance(k, tuple):
            flat[(str(k[0]), str(k[1]))] = float(v)  # type: ignore[arg-type]
        else:
            for result, n in v.items():  # type: ignore[union-attr]
                flat[(str(k), str(result))] = float(n)
    m = _family(ENRICHMENT_LOOKUPS)
    m.samples = [
        Sample(ENRICHMENT_LOOKUPS, {"source": s, "result": r}, n)
        for (s, r), n in sorted(flat.items())
    ]
    return m


def build_registry(
    traffic: TrafficMetrics | None,
    sources: SelfMetricSources | None = None,
    **kwargs: str,
) -> ScrapeRegistry:
    """A fresh registry holding one :class:`K8spacketCollector` (what /metrics serves)."""
    return ScrapeRegistry(K8spacketCollector(traffic, sources, **kwargs))
