"""The ``k8spacket`` command line: run, replay, demo, dashboards, version.

User mistakes (a missing file, a bad option value, a file that is not a
capture) end with one line on stderr and a non-zero exit status, never a
traceback. Bugs still raise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from k8spacket import __version__
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker

if TYPE_CHECKING:
    from k8spacket.enrich.naming import Namer

EXIT_USAGE = 2
EXIT_INPUT = 1


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _positive_seconds(text: str) -> float:
    from k8spacket.durations import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8spacket",
        description="TCP traffic visibility for Kubernetes: connection records, "
        "Prometheus metrics and a Node Graph API.",
    )
    parser.add_argument("--version", action="version", version=f"k8spacket {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rp = sub.add_parser(
        "replay",
        help="turn capture files (pcap, pcapng) into connection records",
        description="Replay capture files through the decoder and connection tracker.",
    )
    rp.add_argument(
        "files", nargs="+", metavar="FILE", help="pcap or pcapng files (may be gzipped)"
    )
    rp.add_argument(
        "--format",
        choices=("jsonl", "table", "prom"),
        default="jsonl",
        help="jsonl: one record per line (default); table: aligned columns; "
        "prom: Prometheus exposition text of the resulting metrics",
    )
    rp.add_argument("--inventory", metavar="FILE", help="YAML inventory naming addresses")
    rp.add_argument(
        "--geoip-db",
        metavar="FILE",
        help="GeoLite2/GeoIP2 City database naming external addresses by country "
        "(default: the GeoLite2-City bundled with the maxminddb-geolite2 package); "
        "an ASN database named GeoLite2-ASN.mmdb beside it adds the organisation",
    )
    rp.add_argument("--no-geoip", action="store_true", help="do not name external addresses")
    rp.add_argument(
        "--close-older-than",
        type=_positive_seconds,
        default=20.0,
        metavar="DURATION",
        help="flush connections idle this long (default 20s, like closeOlderThanDuration)",
    )
    rp.add_argument(
        "--flush-period",
        type=_positive_seconds,
        default=10.0,
        metavar="DURATION",
        help="interim records for connections open longer than this (default 10s)",
    )
    rp.add_argument(
        "--capture-mode",
        choices=("full", "lean"),
        default="full",
        help="full: every packet of the files (default); lean: only what the agent's lean "
        "capture filter passes (SYN/FIN/RST and sequence-boundary crossings), to check it",
    )
    rp.add_argument(
        "--lean-boundary",
        type=_positive_int,
        default=1 << 16,
        metavar="BYTES",
        help="sequence-space boundary of the lean filter, a power of two (default 65536)",
    )
    rp.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1_000_000,
        metavar="N",
        help="hard cap on tracked connections (default 1000000)",
    )
    rp.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    rp.add_argument("--no-summary", action="store_true", help="do not print the summary line")

    run = sub.add_parser(
        "run",
        help="the node agent: capture, connection records, metrics and the HTTP API",
        description="Capture TCP on the pods' interfaces and serve metrics and records. "
        "Settings: --config file, then K8S_PACKET_* environment, then flags.",
    )
    run.add_argument("--config", metavar="FILE", help="YAML settings (ours or the seed's)")
    run.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (default 0.0.0.0:6676)")
    run.add_argument("--inventory", metavar="FILE", help="YAML inventory naming addresses")
    run.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
        help="override one setting by its YAML path, e.g. capture.ringSize=16MiB",
    )  # fmt: skip
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    dg = sub.add_parser(
        "dashboards",
        help="regenerate the Grafana dashboards, their ConfigMaps and the app plugin manifest",
        description="Render dashboards-gen/templates into grafana-provisioning/ and the chart.",
    )
    dg.add_argument("--root", metavar="DIR", help="source checkout (default: found from here)")
    dg.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    dg.add_argument("--plugin-zip", metavar="DIR", help="also pack the app plugin zip into DIR")
    _add_demo_parser(sub)
    sub.add_parser("version", help="print the version")
    return parser


def _add_demo_parser(sub: Any) -> None:
    from k8spacket.demo.topology import DEFAULT_BASE_PORT

    dp = sub.add_parser(
        "demo",
        help="a mini-cluster of network namespaces with the real agent and traffic (root)",
        description="Build two nodes and five pods out of network namespaces, run the agent "
        "on each node and a traffic plan, show the result live; Ctrl-C tears it all down.",
    )
    dp.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="DURATION",
        help="stop after this long (default: run until Ctrl-C)",
    )
    dp.add_argument(
        "--summary", metavar="FILE", help="write what the demo saw as JSON before teardown"
    )
    dp.add_argument(
        "--picture",
        metavar="FILE.svg",
        default="k8spacket-demo-graph.svg",
        help="where the last picture of the graph goes (a .png beside it too)",
    )
    dp.add_argument(
        "--prefix",
        default="kpd",
        help="prefix of every namespace and link (kpd + up to 2 characters)",
    )
    dp.add_argument(
        "--port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="PORT",
        help=f"first loopback port of the URLs (default {DEFAULT_BASE_PORT}; 0: any)",
    )
    dp.add_argument(
        "--view",
        choices=("auto", "always", "never"),
        default="auto",
        help="live terminal view (auto: when stdout is a terminal)",
    )
    dp.add_argument(
        "--no-prometheus",
        action="store_true",
        help="do not start Prometheus even when it is installed",
    )
    dp.add_argument("--keep-logs", action="store_true", help="keep the agents' logs")
    dp.add_argument("--seed", type=int, help="seed of the traffic's randomness")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "dashboards":
            return cmd_dashboards(args)
        if args.command == "version":
            print(f"k8spacket {__version__}")
            return 0
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except UserError as e:
        print(f"k8spacket: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("k8spacket: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): not an error
        sys.stderr.close()
        return 0


# ------------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal

    from k8spacket.agent import Agent
    from k8spacket.config import ConfigError, load_settings
    from k8spacket.server import ListenError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(
            args.config, os.environ, listen=args.listen, inventory=args.inventory, sets=args.sets
        )
        agent = Agent(settings)
    except (ConfigError, ListenError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        if e.filename is None:
            raise  # not a file the user named: a bug, with its traceback
        raise UserError(f"{e.filename}: {e.strerror or e}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()
    return 0


# ------------------------------------------------------------------------ demo
#: exit status of ``k8spacket demo`` when it cannot run here (``make demo`` replays instead)
EXIT_DEMO_UNAVAILABLE = 3


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from k8spacket.demo.runner import DemoError, DemoOptions, DemoUnavailable, run_demo
    from k8spacket.demo.topology import PrefixError, check_prefix

    try:
        check_prefix(args.prefix)
    except PrefixError as e:
        raise UserError(str(e)) from None
    if not 0 <= args.port <= 65000:
        raise UserError(f"--port {args.port}: expected 0..65000")
    opts = DemoOptions(
        duration=args.duration,
        summary=Path(args.summary) if args.summary else None,
        prefix=args.prefix,
        base_port=args.port,
        picture=Path(args.picture),
        view=args.view,
        prometheus=not args.no_prometheus,
        keep_logs=args.keep_logs,
        seed=args.seed,
    )
    try:
        return run_demo(opts)
    except DemoUnavailable as e:
        raise UserError(f"demo: {e}", EXIT_DEMO_UNAVAILABLE) from None
    except DemoError as e:
        raise UserError(f"demo: {e}", EXIT_INPUT) from None


# ------------------------------------------------------------------ dashboards
def cmd_dashboards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from k8spacket import dashboards

    try:
        root = (
            dashboards.find_root(Path(args.root), explicit=True)
            if args.root
            else dashboards.find_root(Path.cwd())
        )
        if args.check:
            stale = dashboards.stale_files(root)
            for rel in stale:
                print(f"k8spacket: stale: {rel}", file=sys.stderr)
            return EXIT_INPUT if stale else 0
        for rel in dashboards.write_all(root):
            print(f"wrote {rel}")
        if args.plugin_zip:
            print(f"wrote {dashboards.plugin_zip(root, Path(args.plugin_zip))}")
    except dashboards.GeneratorError as e:
        raise UserError(str(e), EXIT_INPUT) from None
    return 0


# ---------------------------------------------------------------------- replay
def cmd_replay(args: argparse.Namespace) -> int:
    from k8spacket.replay import replay_files

    b = args.lean_boundary
    if b & (b - 1) or not 2 <= b <= 1 << 31:
        raise UserError(f"--lean-boundary: must be a power of two, got {b}")
    records: list[ConnectionRecord] = []
    out = sys.stdout
    # A file that cannot be opened at all is a mistake in the command: say so before
    # any output (a table or an exposition of nothing would come first otherwise).
    for path in args.files:
        try:
            open(path, "rb").close()
        except OSError as e:
            raise UserError(f"error: {path}: cannot open: {e.strerror or e}", EXIT_INPUT) from None
    namer = _load_namer(args.inventory, None if args.no_geoip else (args.geoip_db or ""))

    if args.format == "jsonl":

        def sink(rec: ConnectionRecord) -> None:
            if namer is not None:
                namer(rec)
            out.write(json.dumps(rec.to_dict(), separators=(",", ":")))
            out.write("\n")

    else:

        def sink(rec: ConnectionRecord) -> None:
            if namer is not None:
                namer(rec)
            records.append(rec)

    tracker = ConnectionTracker(
        sink,
        close_older_than=args.close_older_than,
        flush_period=args.flush_period,
        max_connections=args.max_connections,
    )
    progress = _progress_bar(args.progress, args.files)
    try:
        stats = replay_files(
            args.files,
            tracker,
            progress=progress,
            capture_mode=args.capture_mode,
            lean_boundary=args.lean_boundary,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.format == "table":
        write_table(records, out)
    elif args.format == "prom":
        from k8spacket.metrics.replay import records_to_exposition

        out.write(records_to_exposition(records, tracker=tracker, stats=stats))
    out.flush()
    if not args.no_summary:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items())) or "none"
        evicted = ", ".join(f"{k}={v}" for k, v in sorted(tracker.evicted.items()) if v)
        print(
            f"k8spacket: {stats.files} file(s), {stats.packets} packets, "
            f"{stats.tcp_packets} TCP, {tracker.connections} connections, "
            f"{tracker.records} records; skipped: {skipped}"
            + (f"; evicted: {evicted}" if evicted else "")
            + (f"; lean filter left out: {stats.filtered}" if args.capture_mode == "lean" else ""),
            file=sys.stderr,
        )
    for err in stats.errors:
        print(f"k8spacket: error: {err}", file=sys.stderr)
    return EXIT_INPUT if stats.errors else 0


def _load_namer(inventory_path: str | None, geoip_path: str | None) -> Namer | None:
    """The record namer of a replay: the agent's naming chain (enrich/naming.py),
    offline, without Kubernetes.

    ``geoip_path`` ``None`` switches GeoIP off; ``""`` means the bundled database
    (opened when the first public address shows up); a database the user named
    is opened now, so a bad path fails before any output.
    """
    from k8spacket.config import ConfigError, Settings
    from k8spacket.enrich.naming import Naming

    settings = Settings()
    settings.kubernetes.enabled = "false"
    settings.inventory = inventory_path or ""
    settings.enrichment.geoip_enabled = geoip_path is not None
    settings.enrichment.geoip_db_path = geoip_path or ""
    settings.origins["enrichment.geoip_db_path"] = "--geoip-db"
    settings.origins["enrichment.geoip_asn_db_path"] = "--geoip-db (the ASN database beside it)"
    try:
        naming = Naming.from_settings(settings, None, offline=True)
    except ConfigError as e:
        raise UserError(str(e)) from None
    namers = naming.namers()
    if not namers:
        return None
    if len(namers) == 1:
        return namers[0]

    def name(rec: ConnectionRecord) -> None:
        for namer in namers:
            namer(rec)

    return name


class _Progress:
    """A tqdm bar over the bytes of all files, updated once per read buffer."""

    def __init__(self, files: Sequence[str]) -> None:
        import os

        from tqdm import tqdm

        total = 0
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(f)
        self._bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        self._done: dict[str, int] = {}

    def __call__(self, done: int, size: int, path: str) -> None:
        prev = self._done.get(path, 0)
        if done > prev:
            self._bar.update(done - prev)
            self._done[path] = done

    def close(self) -> None:
        self._bar.close()


def _progress_bar(mode: str, files: Sequence[str]) -> _Progress | None:
    if mode == "never" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    return _Progress(files)


# ----------------------------------------------------------------------- table
_TABLE_COLUMNS = (
    ("src", "src"),
    ("sport", "src_port"),
    ("dst", "dst"),
    ("dport", "dst_port"),
    ("sent", "bytes_sent"),
    ("received", "bytes_received"),
    ("handshake", "handshake_seconds"),
    ("duration", "duration_seconds"),
    ("outcome", "outcome"),
    ("close", "close"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.6f}"
    return str(value)


def write_table(records: Sequence[ConnectionRecord], out: TextIO) -> None:
    """Records as aligned columns (identity columns added when any record has names)."""
    cols = list(_TABLE_COLUMNS)
    if any(r.src_workload or r.dst_workload for r in records):
        cols[1:1] = [("src_workload", "src_workload")]
        cols.insert(4, ("dst_workload", "dst_workload"))
    if any(r.dst_country for r in records):
        cols.insert(cols.index(("dport", "dst_port")) + 1, ("country", "dst_country"))
    rows = [[_cell(getattr(r, field)) for _, field in cols] for r in records]
    widths = [len(h) for h, _ in cols]
    for row in rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    out.write("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
