"""The agent's settings: one typed tree from defaults, a YAML file, environment, flags.

Sources are applied in that order, later ones winning (docs/design.md,
"Configuration"). Every setting has one row in :data:`FIELDS`: its YAML path in
our own tree, its spelling in the seed's Helm values (``k8sPacket:`` …), the
upstream ``K8S_PACKET_*`` environment variables that set it, and a parser. A
bad value raises :class:`ConfigError` whose message is one line naming the key
(as the user wrote it: YAML path, variable or flag) and what is wrong.

The YAML file may hold our tree (``capture:``, ``tracker:``, ``metrics:``,
``enrichment:``, ``kubernetes:``, ``inventory:``, ``http:``), the seed's
``k8sPacket:`` tree, or a whole Helm values file (then the chart's own keys such
as ``image:`` or ``resources:`` are ignored). Unknown keys are errors, except
the seed's gopacket tuning ``k8sPacket.tcp.assembler.maxPagesPerConnection`` and
``maxPagesTotal``, which are accepted and have no effect (no reassembly here).

Flags: ``--listen HOST:PORT``, ``--inventory FILE`` and ``--set PATH=VALUE``
(a YAML path of our tree, e.g. ``--set capture.ringSize=16MiB``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from k8spacket.durations import parse_duration


class ConfigError(ValueError):
    """A bad setting: one line naming the key and what is wrong."""


# ------------------------------------------------------------------ the tree
@dataclass
class InterfacesSettings:
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    command: str = ""
    refresh_period: float = 10.0


@dataclass
class CaptureSettings:
    interfaces: InterfacesSettings = field(default_factory=InterfacesSettings)
    ring_size: int = 4 << 20  # bytes per interface
    block_size: int = 1 << 18
    block_timeout: float = 0.02
    snap_length: int = 96
    filter: str = "tcp"
    mode: str = "lean"  # lean | full (docs/capture.md)
    lean_boundary: int = 1 << 16  # bytes of sequence space; a power of two
    lean_warmup: float = 30.0  # full capture after a ring opens, then lean
    #: conntrack lookups to pair Service (DNAT) tuples: auto (when permitted), true, false
    conntrack: str = "auto"


@dataclass
class TrackerSettings:
    flush_period: float = 10.0
    close_older_than: float = 20.0
    forget_after: float = 0.0  # 0: 10 minutes, or close_older_than when that is longer
    max_connections: int = 500_000


@dataclass
class MetricsSettings:
    hide_source_port: bool = True
    level: str = "workload"
    labels: list[str] = field(default_factory=list)
    series_budget: int = 10_000
    series_ttl: float = 600.0


#: The seed chart's default ``geoipDBPath``; the seed never shipped that file, so when
#: it is missing the agent falls back to the packaged GeoLite2-City (with a warning).
SEED_GEOIP_DB_PATH = "/home/k8spacket/GeoLite2-City.mmdb"


@dataclass
class EnrichmentSettings:
    geoip_enabled: bool = True
    geoip_db_path: str = ""  # empty: the packaged GeoLite2-City
    geoip_asn_db_path: str = ""  # empty: GeoLite2-ASN.mmdb beside the City file, if there
    whois_enabled: bool = False
    whois_regexp: str = r"(?:OrgName:|org-name:)\s*(.*)"
    reverse_dns: bool = False


@dataclass
class KubernetesSettings:
    enabled: str = "auto"  # auto | true | false
    kubeconfig: str = ""
    node_name: str = ""


@dataclass
class HttpSettings:
    host: str = "0.0.0.0"
    port: int = 6676
    connection_store: int = 10_000  # records kept for /nodegraph/connections
    graph_source: str = "auto"  # auto | local | agents | prometheus (see resolve_graph_source)
    prometheus_url: str = ""


@dataclass
class GraphSettings:
    window: float = 3600.0  # seconds the local graph store keeps
    bucket: float = 60.0  # its time resolution
    peers: list[str] = field(default_factory=list)  # static agent list (host[:port])
    peer_selector: str = "app.kubernetes.io/name=k8spacket"  # the DaemonSet's pods
    peer_namespace: str = ""  # their namespace (POD_NAMESPACE); empty: every namespace
    peer_port: int = 0  # 0: http.port
    peer_timeout: float = 2.0
    prometheus_timeout: float = 5.0


@dataclass
class Settings:
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    enrichment: EnrichmentSettings = field(default_factory=EnrichmentSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    inventory: str = ""
    http: HttpSettings = field(default_factory=HttpSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    #: attribute path (``enrichment.geoip_db_path``) → the key the user set it with
    #: (``--set enrichment.geoip.dbPath``, ``FILE: k8sPacket.…``, a variable), so
    #: errors found later (a database that will not open) name what the user typed
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def origin(self, attr: str) -> str:
        """The key the user set ``attr`` with, else its YAML path in our tree."""
        if attr in self.origins:
            return self.origins[attr]
        return next(f.yaml for f in FIELDS if f.attr == attr)

    @property
    def listen(self) -> str:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"{host}:{self.http.port}"


# ------------------------------------------------------------------ parsers
Parser = Callable[[Any], Any]


def _text(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"expected a string, got {v!r}")
    return str(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "yes", "on", "1"):
        return True
    if s in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _duration(v: Any) -> float:
    seconds = parse_duration(v if isinstance(v, int | float | str) else _text(v))
    if seconds <= 0:
        raise ValueError(f"must be positive, got {v!r}")
    return seconds


def _duration_or_zero(v: Any) -> float:
    if not isinstance(v, bool) and str(v).strip() in ("0", "0s", "0.0"):
        return 0.0
    return _duration(v)


def _int_range(lo: int, hi: int) -> Parser:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected a whole number, got {v!r}")
        try:
            n = int(str(v).strip()) if not isinstance(v, int) else v
        except ValueError:
            raise ValueError(f"expected a whole number, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {n}")
        return n

    return parse


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(v: Any) -> int:
    m = _SIZE.match(str(v)) if not isinstance(v, bool) else None
    if m is None:
        raise ValueError(f"expected a size such as 4MiB or 262144, got {v!r}")
    n = int(m.group(1)) * _SIZE_UNIT[(m.group(2) or "")[:1].lower()]
    if n < 4096:
        raise ValueError(f"must be at least 4KiB, got {v!r}")
    return n


def _regexps(v: Any) -> list[str]:
    items = v if isinstance(v, list) else [p for p in _text(v).split(",") if p.strip()]
    out = []
    for p in items:
        s = _text(p)
        try:
            re.compile(s)
        except re.error as e:
            raise ValueError(f"bad regexp {s!r}: {e}") from None
        out.append(s)
    return out


def _regexp(v: Any) -> str:
    return _regexps([v])[0]


def _strings(v: Any) -> list[str]:
    if isinstance(v, list):
        return [_text(x) for x in v]
    return [s.strip() for s in _text(v).split(",") if s.strip()]


def _choice(*allowed: str) -> Parser:
    def parse(v: Any) -> str:
        s = str(v).strip().lower() if isinstance(v, bool) else _text(v).strip()
        if s not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {v!r}")
        return s

    return parse


def _host(v: Any) -> str:
    s = _text(v).strip().strip("[]")
    if not s:
        raise ValueError("empty host")
    return s


def parse_listen(v: Any) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` → (host, port)."""
    s = _text(v).strip()
    host, sep, port = s.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return (host.strip("[]") or "0.0.0.0", _int_range(1, 65535)(port))


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class FieldSpec:
    """One setting: where it lives and how it is spelled in each source."""

    attr: str  # dotted attribute path in Settings
    yaml: str  # dotted YAML path of our tree
    parse: Parser
    seed: str = ""  # dotted path under the seed's ``k8sPacket:``
    env: tuple[str, ...] = ()


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("capture.interfaces.include", "capture.interfaces.include", _regexps),
    FieldSpec("capture.interfaces.exclude", "capture.interfaces.exclude", _regexps),
    FieldSpec(
        "capture.interfaces.command",
        "capture.interfaces.command",
        _text,
        "tcp.listener.interfaces.command",
        ("K8S_PACKET_TCP_LISTENER_INTERFACES_COMMAND",),
    ),
    FieldSpec(
        "capture.interfaces.refresh_period",
        "capture.interfaces.refreshPeriod",
        _duration,
        "tcp.listener.interfaces.refreshPeriod",
        ("K8S_PACKET_TCP_LISTENER_INTERFACES_REFRESH_PERIOD",),
    ),
    FieldSpec("capture.ring_size", "capture.ringSize", _size),
    FieldSpec("capture.block_size", "capture.blockSize", _size),
    FieldSpec("capture.block_timeout", "capture.blockTimeout", _duration),
    FieldSpec("capture.snap_length", "capture.snapLength", _int_range(64, 65535)),
    FieldSpec("capture.filter", "capture.filter", _text),
    FieldSpec("capture.mode", "capture.mode", _choice("lean", "full")),
    FieldSpec("capture.lean_boundary", "capture.leanBoundary", _size),
    FieldSpec("capture.lean_warmup", "capture.leanWarmup", _duration_or_zero),
    FieldSpec("capture.conntrack", "capture.conntrack", _choice("auto", "true", "false")),
    FieldSpec(
        "tracker.flush_period",
        "tracker.flushPeriod",
        _duration,
        "tcp.assembler.flushing.periodDuration",
        ("K8S_PACKET_TCP_ASSEMBLER_FLUSHING_PERIOD_DURATION",),
    ),
    FieldSpec(
        "tracker.close_older_than",
        "tracker.closeOlderThan",
        _duration,
        "tcp.assembler.flushing.closeOlderThanDuration",
        ("K8S_PACKET_TCP_ASSEMBLER_FLUSHING_CLOSE_OLDER_THAN_DURATION",),
    ),
    FieldSpec("tracker.forget_after", "tracker.forgetAfter", _duration_or_zero),
    FieldSpec("tracker.max_connections", "tracker.maxConnections", _int_range(1, 100_000_000)),
    FieldSpec(
        "metrics.hide_source_port",
        "metrics.hideSourcePort",
        _bool,
        "metrics.hideSourcePort",
        ("K8S_PACKET_HIDE_SRC_PORT",),
    ),
    FieldSpec("metrics.level", "metrics.level", _choice("workload", "pod")),
    FieldSpec("metrics.labels", "metrics.labels", _strings),
    FieldSpec("metrics.series_budget", "metrics.seriesBudget", _int_range(1, 10_000_000)),
    FieldSpec("metrics.series_ttl", "metrics.seriesTTL", _duration),
    FieldSpec(
        "enrichment.geoip_db_path",
        "enrichment.geoip.dbPath",
        _text,
        "metrics.reverseLookup.geoipDBPath",
        ("K8S_PACKET_REVERSE_GEOIP2_DB_PATH",),
    ),
    FieldSpec(
        "enrichment.geoip_asn_db_path",
        "enrichment.geoip.asnDBPath",
        _text,
        "metrics.reverseLookup.geoipASNDBPath",
    ),
    FieldSpec("enrichment.geoip_enabled", "enrichment.geoip.enabled", _bool),
    FieldSpec("enrichment.whois_enabled", "enrichment.whois.enabled", _bool),
    FieldSpec("enrichment.reverse_dns", "enrichment.reverseDNS.enabled", _bool),
    FieldSpec(
        "enrichment.whois_regexp",
        "enrichment.whois.regexp",
        _regexp,
        "metrics.reverseLookup.whoisRegexp",
        ("K8S_PACKET_REVERSE_WHOIS_REGEXP",),
    ),
    FieldSpec("kubernetes.enabled", "kubernetes.enabled", _choice("auto", "true", "false")),
    FieldSpec("kubernetes.kubeconfig", "kubernetes.kubeconfig", _text, env=("KUBECONFIG",)),
    FieldSpec(
        "kubernetes.node_name",
        "kubernetes.nodeName",
        _text,
        env=("K8S_PACKET_NODE_NAME", "NODE_NAME", "K8S_NODE_NAME"),
    ),
    FieldSpec("inventory", "inventory.path", _text, env=("K8S_PACKET_INVENTORY",)),
    FieldSpec("http.host", "http.host", _host),
    FieldSpec(
        "http.port",
        "http.port",
        _int_range(1, 65535),
        "tcp.listener.port",
        ("K8S_PACKET_TCP_LISTENER_PORT",),
    ),
    FieldSpec("http.connection_store", "http.connectionStore", _int_range(1, 10_000_000)),
    FieldSpec(
        "http.graph_source",
        "http.graphSource",
        _choice("auto", "local", "agents", "prometheus"),
        env=("K8S_PACKET_GRAPH_SOURCE",),
    ),
    FieldSpec(
        "http.prometheus_url", "http.prometheusURL", _text, env=("K8S_PACKET_PROMETHEUS_URL",)
    ),
    FieldSpec("graph.window", "graph.window", _duration),
    FieldSpec("graph.bucket", "graph.bucket", _duration),
    FieldSpec("graph.peers", "graph.peers", _strings),
    FieldSpec("graph.peer_selector", "graph.peerSelector", _text),
    FieldSpec(
        "graph.peer_namespace",
        "graph.peerNamespace",
        _text,
        env=("K8S_PACKET_POD_NAMESPACE", "POD_NAMESPACE"),
    ),
    FieldSpec("graph.peer_port", "graph.peerPort", _int_range(0, 65535)),
    FieldSpec("graph.peer_timeout", "graph.peerTimeout", _duration),
    FieldSpec("graph.prometheus_timeout", "graph.prometheusTimeout", _duration),
)
#: seed keys accepted without effect (gopacket's reassembly tuning)
SEED_IGNORED = frozenset({"tcp.assembler.maxPagesPerConnection", "tcp.assembler.maxPagesTotal"})
ENV_IGNORED = (
    "K8S_PACKET_TCP_ASSEMBLER_MAX_PAGES_PER_CONN",
    "K8S_PACKET_TCP_ASSEMBLER_MAX_PAGES_TOTAL",
)
_BY_YAML = {f.yaml: f for f in FIELDS}
_BY_SEED = {f.seed: f for f in FIELDS if f.seed}
_OURS = frozenset(p.split(".")[0] for p in _BY_YAML)


# ------------------------------------------------------------------ loading
def _set(settings: Settings, spec: FieldSpec, value: Any, key: str) -> None:
    try:
        parsed = spec.parse(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    settings.origins[spec.attr] = key
    obj: Any = settings
    *parents, last = spec.attr.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, parsed)


def _flatten(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Leaves of a YAML mapping as dotted paths (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        path = f"{where}.{k}" if where else str(k)
        if isinstance(v, Mapping):
            if not v:
                continue
            out.update(_flatten(v, path))
        else:
            out[path] = v
    return out


def _unknown(where: str, key: str, known: Sequence[str]) -> ConfigError:
    """``WHERE: KEY: unknown key``, with the nearest known key when one is close."""
    import difflib

    near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return ConfigError(f"{where}{key}: unknown key{hint}")


def apply_document(settings: Settings, doc: Any, source: str = "config") -> None:
    """Apply a parsed YAML document (our tree, the seed's ``k8sPacket:`` tree, or both)."""
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    helm_values = "k8sPacket" in doc
    for path, value in _flatten(doc, "").items():
        if path.startswith("k8sPacket."):
            sub = path[len("k8sPacket.") :]
            if sub in SEED_IGNORED:
                continue
            spec = _BY_SEED.get(sub)
            if spec is None:
                raise _unknown(f"{source}: ", path, [f"k8sPacket.{k}" for k in _BY_SEED])
            if value is not None:
                _set(settings, spec, value, f"{source}: {path}")
            continue
        spec = _BY_YAML.get(path)
        if spec is None:
            if helm_values and path.split(".")[0] not in _OURS:
                continue  # a chart key of a Helm values file (image, resources, …)
            raise _unknown(f"{source}: ", path, list(_BY_YAML))
        if value is not None:
            _set(settings, spec, value, f"{source}: {path}")


def apply_file(settings: Settings, path: str | Path) -> None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark is not None else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        if context:
            reason = f"{reason} ({context})"
        raise ConfigError(f"{path}:{where} not valid YAML: {reason}") from None
    apply_document(settings, doc, str(path))


def apply_env(settings: Settings, env: Mapping[str, str]) -> None:
    for spec in FIELDS:
        for name in spec.env:
            if name in env:
                _set(settings, spec, env[name], name)
                break


def apply_sets(settings: Settings, assignments: Sequence[str]) -> None:
    """``--set PATH=VALUE`` flags (YAML paths of our tree; VALUE is read as YAML)."""
    for item in assignments:
        path, sep, raw = item.partition("=")
        path = path.strip()
        if not sep or not path:
            raise ConfigError(f"--set {item}: expected PATH=VALUE, e.g. capture.ringSize=16MiB")
        spec = _BY_YAML.get(path)
        if spec is None:
            raise _unknown("--set ", path, list(_BY_YAML))
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(settings, spec, value, f"--set {path}")


def validate(settings: Settings) -> None:
    """Cross-field checks (one line each)."""
    c = settings.capture
    if c.block_size % 4096:
        raise ConfigError("capture.blockSize: must be a multiple of 4KiB")
    if c.ring_size < 2 * c.block_size:
        raise ConfigError("capture.ringSize: must hold at least two blocks (2 x blockSize)")
    b = c.lean_boundary
    if b < 4096 or b & (b - 1) or b > 1 << 30:
        raise ConfigError(
            f"capture.leanBoundary: must be a power of two from 4KiB to 1GiB, got {b}"
        )
    t = settings.tracker
    if t.forget_after and t.forget_after < t.close_older_than:
        # a dormant connection cannot be forgotten before it is dormant: equal
        # values are the old "idle means closed" rule
        t.forget_after = t.close_older_than
    if "src_port" in settings.metrics.labels and settings.metrics.hide_source_port:
        raise ConfigError("metrics.labels: src_port needs metrics.hideSourcePort: false")
    if settings.http.graph_source == "prometheus" and not settings.http.prometheus_url:
        raise ConfigError("http.graphSource: prometheus needs http.prometheusURL")
    url = settings.http.prometheus_url
    if url and not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"http.prometheusURL: expected http(s)://HOST[:PORT][/path], got {url!r}")
    g = settings.graph
    if g.bucket > g.window:
        raise ConfigError("graph.bucket: must not be longer than graph.window")
    if g.window / g.bucket > 10_000:
        raise ConfigError(
            "graph.bucket: graph.window holds more than 10000 buckets; make it longer"
        )


def resolve_graph_source(settings: Settings, in_cluster: bool) -> str:
    """The graph source ``http.graphSource: auto`` means (docs/nodegraph.md, "Sources").

    ``prometheus`` when a Prometheus URL is given; ``agents`` in a cluster (or with a
    static ``graph.peers`` list); ``local`` otherwise.
    """
    chosen = settings.http.graph_source
    if chosen != "auto":
        return chosen
    if settings.http.prometheus_url:
        return "prometheus"
    if in_cluster or settings.graph.peers:
        return "agents"
    return "local"


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    listen: str | None = None,
    inventory: str | None = None,
    sets: Sequence[str] = (),
) -> Settings:
    """Defaults, then the file, then environment, then flags; validated."""
    settings = Settings()
    if config_file is not None:
        apply_file(settings, config_file)
    if env is not None:
        apply_env(settings, env)
    apply_sets(settings, sets)
    if listen is not None:
        try:
            settings.http.host, settings.http.port = parse_listen(listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
    if inventory is not None:
        settings.inventory = inventory
    validate(settings)
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (for logs and ``/debug``-style dumps)."""
    out = dataclasses.asdict(settings)
    out.pop("origins", None)
    return out
