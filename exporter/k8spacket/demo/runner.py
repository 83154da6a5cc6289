"""``k8spacket demo``: build the mini-cluster, run the agents and the traffic, show it, clean up.

Order of a run (:func:`run_demo`):

1. refuse without root or network namespaces (:class:`DemoUnavailable`, one
   line); refuse when a demo with the same prefix is running (its pid file);
2. remove what an earlier run with the same prefix left (namespaces, links,
   processes inside them), then build the cluster (:mod:`~k8spacket.demo.netns`);
3. name the internet endpoint from packaged GeoLite2 data
   (:mod:`~k8spacket.demo.geo`), write the inventory and one agent config per node;
4. start Prometheus when the binary exists (inside node 1, scraping both agents,
   ``node`` label), then the real agent on each node: ``python -m k8spacket.cli
   run --inventory … --listen <node address>:6676`` under ``ip netns exec``;
5. open loopback forwarders to them (:mod:`~k8spacket.demo.forward`), wait until
   both agents are ready, start the servers and the traffic plan
   (:mod:`~k8spacket.demo.traffic`), and the batch pod's come-and-go cycle;
6. refresh the live view until ``--duration`` is over or Ctrl-C / SIGTERM;
7. before teardown: write ``--summary`` (pairs, bytes, outcomes, names, URLs)
   and the last picture of the graph (SVG, and PNG: Graphviz draws both);
8. stop the traffic, the agents and Prometheus, delete every namespace, and
   check that nothing with the prefix is left; the last lines name the picture.

Processes started here get ``PR_SET_PDEATHSIG``, so they end with the demo even
when it is killed; namespaces a killed demo leaves are removed by the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from k8spacket.demo import geo, observe, report
from k8spacket.demo.forward import Forwarder
from k8spacket.demo.netns import (
    DemoNetwork,
    NetnsError,
    demo_links,
    demo_namespaces,
    netns_unavailable,
    remove_leftovers,
)
from k8spacket.demo.plan import BATCH, FLOWS, BatchSchedule, Flow, servers
from k8spacket.demo.topology import AGENT_PORT, DEFAULT_BASE_PORT, PODS, PROMETHEUS_PORT, Topology
from k8spacket.demo.traffic import TrafficError, TrafficRunner
from k8spacket.demo.view import ViewState, edge_label, progress_line, render_view

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
VIEW_PERIOD = 2.0
READY_TIMEOUT = 40.0
#: seconds between stopping the traffic and writing the results: the agents'
#: publish delay (0.25 s + the block timeout) and one Prometheus scrape (2 s)
QUIESCE_SECONDS = 3.0


class DemoUnavailable(RuntimeError):
    """The demo cannot run here (no root, no network namespaces); one line."""


class DemoError(RuntimeError):
    """The demo started but a part failed (one line; logs are kept)."""


@dataclass
class DemoOptions:
    duration: float | None = None
    summary: Path | None = None
    prefix: str = "kpd"
    base_port: int = DEFAULT_BASE_PORT  # 0: any free ports
    picture: Path = field(default_factory=lambda: Path("k8spacket-demo-graph.svg"))
    view: str = "auto"  # auto | always | never
    prometheus: bool = True
    keep_logs: bool = False
    seed: int | None = None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pidfile(prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"k8spacket-demo-{prefix}.pid"


@contextlib.contextmanager
def single_run(prefix: str) -> Iterator[None]:
    """Hold the prefix's pid file; refuse when a live demo holds it."""
    path = pidfile(prefix)
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"demo" in cmdline:
                raise DemoError(
                    f"another demo with prefix {prefix!r} is running (pid {pid}); "
                    "stop it or choose another --prefix"
                )
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


class Demo:
    """One demo run; :meth:`run` does everything, :meth:`teardown` always runs after it."""

    def __init__(self, opts: DemoOptions, out: IO[str]) -> None:
        self.opts = opts
        self.out = out
        self.topo = Topology(opts.prefix)
        self.network = DemoNetwork(self.topo)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"k8spacket-{opts.prefix}-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[IO[bytes]] = []
        self.forwarders: dict[str, Forwarder] = {}
        self.traffic: TrafficRunner | None = None
        self.facts: geo.GeoFacts | None = None
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.batch_cycles = 0
        self.notes: list[str] = []
        self._prev: dict[str, tuple[float, float, float]] = {}
        self._batch_thread: threading.Thread | None = None
        self.traffic_started = time.time()

    # ------------------------------------------------------------ building
    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def build(self) -> None:
        removed = remove_leftovers(self.opts.prefix)
        if removed:
            self.say(f"k8spacket demo: removed leftovers of an earlier run: {', '.join(removed)}")
        self.network.build()
        self.facts = geo.write_databases(geo.lookup_packaged(self.topo.internet_ip), self.workdir)
        inventory = self.workdir / "inventory.yaml"
        inventory.write_text(
            "# k8spacket demo inventory: every address of the demo cluster but the internet\n"
            + yaml.safe_dump(self.topo.inventory(), sort_keys=False)
        )
        self.inventory_path = inventory
        prom = self.opts.prometheus and shutil.which("prometheus") is not None
        if prom:
            self._start_prometheus()
        elif self.opts.prometheus:
            self.notes.append("prometheus is not installed: the graphs are each agent's own")
        for n in self.topo.nodes:
            self._start_agent(n, prom)
        base = self.opts.base_port
        for n in self.topo.nodes:
            self.forwarders[f"node{n}"] = Forwarder(
                base + n - 1 if base else 0,
                self.topo.node_netns(n),
                (self.topo.node_ip(n), AGENT_PORT),
            )
        if "prometheus" in self.procs:
            self.forwarders["prometheus"] = Forwarder(
                base + 3414 if base else 0, self.topo.node_netns(1),
                (self.topo.node_ip(1), PROMETHEUS_PORT),
            )  # fmt: skip
        self._wait_ready()

    def _popen(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logf = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(logf)
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "NODE_NAME")}
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
        self.procs[name] = p
        return p

    def _start_prometheus(self) -> None:
        t = self.topo
        config = self.workdir / "prometheus.yml"
        targets = [
            {"targets": [f"{t.node_ip(n)}:{AGENT_PORT}"], "labels": {"node": t.node_name(n)}}
            for n in t.nodes
        ]
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
                    "scrape_configs": [{"job_name": "k8spacket", "static_configs": targets}],
                },
                sort_keys=False,
            )
        )
        binary = shutil.which("prometheus")
        assert binary is not None
        self._popen("prometheus", ["ip", "netns", "exec", t.node_netns(1), binary,
                                   f"--config.file={config}",
                                   f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                                   f"--web.listen-address={t.prometheus_listen}",
                                   "--log.level=warn"])  # fmt: skip

    def agent_config(self, node: int, prometheus: bool) -> dict[str, Any]:
        assert self.facts is not None
        http: dict[str, Any] = {}
        if prometheus:
            http["prometheusURL"] = f"http://{self.topo.prometheus_listen}"
        return {
            "capture": {
                "interfaces": {"exclude": [self.topo.capture_exclude], "refreshPeriod": "2s"}
            },
            "tracker": {"flushPeriod": "2s", "closeOlderThan": "5s"},
            "kubernetes": {"enabled": "false", "nodeName": self.topo.node_name(node)},
            "enrichment": {"geoip": {"dbPath": self.facts.city_db, "asnDBPath": self.facts.asn_db}},
            "metrics": {"labels": ["dst_country"]},
            # 5 s buckets for a demo that lasts a minute; the agents source asks both agents
            "graph": {
                "bucket": "5s",
                "peers": [f"{self.topo.node_ip(n)}:{AGENT_PORT}" for n in self.topo.nodes],
            },
            **({"http": http} if http else {}),
        }

    def _start_agent(self, node: int, prometheus: bool) -> None:
        config = self.workdir / f"agent-node{node}.yaml"
        config.write_text(yaml.safe_dump(self.agent_config(node, prometheus), sort_keys=False))
        self._popen(f"agent-node{node}", ["ip", "netns", "exec", self.topo.node_netns(node),
                    sys.executable, "-m", "k8spacket.cli", "run", "--config", str(config),
                    "--inventory", str(self.inventory_path),
                    "--listen", f"{self.topo.node_ip(node)}:{AGENT_PORT}",
                    "--log-level", "warning"])  # fmt: skip

    def _check_processes(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace").strip()
                last = tail.splitlines()[-1] if tail else "(no output)"
                raise DemoError(f"{name} exited with status {p.returncode}: {last}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = [f"node{n}" for n in self.topo.nodes]
        while waiting:
            self._check_processes()
            name = waiting[0]
            with contextlib.suppress(OSError):
                status, _ = observe.http_get(self.forwarders[name].url + "/readyz", timeout=2)
                if status == 200:
                    waiting.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise DemoError(f"the agent on {name} is not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.2)
        if "prometheus" in self.forwarders:
            while time.monotonic() < deadline:
                self._check_processes()
                with contextlib.suppress(OSError, ValueError):
                    doc = observe.http_json(self.forwarders["prometheus"].url + "/api/v1/targets")
                    ups = [t for t in doc["data"]["activeTargets"] if t.get("health") == "up"]
                    if len(ups) >= len(self.topo.nodes):
                        return
                time.sleep(0.5)
            self.notes.append("prometheus has not scraped both agents yet")

    # ------------------------------------------------------------- traffic
    def start_traffic(self, flows: tuple[Flow, ...] = FLOWS, batch: BatchSchedule = BATCH) -> None:
        self.traffic = TrafficRunner(self.topo, flows, seed=self.opts.seed)
        self.traffic_started = time.time()
        self.traffic.start_servers(servers(flows))
        self.traffic.start_flows()
        self._batch_thread = threading.Thread(target=self._batch_cycle, args=(batch,),
                                              name="demo-batch", daemon=True)  # fmt: skip
        self._batch_thread.start()

    def _batch_cycle(self, sched: BatchSchedule) -> None:
        assert self.traffic is not None
        pod = self.topo.pod(sched.pod)
        if self.stop.wait(sched.first):
            return
        while not self.stop.is_set():
            try:
                self.network.add_pod(pod)
            except Exception as e:  # a failed pod creation is shown, not fatal
                self.notes.append(f"batch pod: {e}")
                return
            self.batch_cycles += 1
            done = threading.Event()
            threads = self.traffic.start_flows(sched.pod, stop=done)
            self.stop.wait(sched.life)
            done.set()
            for t in threads:
                t.join(timeout=5)
            if self.stop.is_set():
                return  # the teardown deletes it
            self.network.remove_pod(pod)
            if self.stop.wait(max(0.0, sched.every - sched.life)):
                return

    # ---------------------------------------------------------------- look
    @property
    def endpoints(self) -> report.Endpoints:
        prom = self.forwarders.get("prometheus")
        return report.Endpoints(
            {n: self.forwarders[f"node{n}"].url for n in self.topo.nodes},
            prom.url if prom is not None else None,
        )

    def urls(self) -> dict[str, str]:
        return self.endpoints.urls()

    def view_state(self) -> ViewState:
        scrapes = self.endpoints.scrapes()
        edges = observe.edges_from_metrics(scrapes)
        now = time.monotonic()
        state = ViewState(elapsed=now - self.started, duration=self.opts.duration, edges=edges,
                          drops=observe.drops(scrapes), urls=self.urls(),
                          notes=list(self.notes))  # fmt: skip
        for e in edges:
            label = edge_label(e)
            prev = self._prev.get(label)
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                state.byte_rates[label] = max(0.0, (e.bytes - prev[1]) / dt)
                state.conn_rates[label] = max(0.0, (e.total_connections - prev[2]) / dt)
            self._prev[label] = (now, e.bytes, e.total_connections)
        if self.traffic is not None and self.traffic.thread_errors:
            state.notes.append(f"{self.traffic.thread_errors} traffic thread(s) failed (see log)")
        return state

    def wait(self) -> None:
        """Show the view until the duration is over or a signal arrives."""
        mode = self.opts.view
        live = mode == "always" or (mode == "auto" and self.out.isatty())
        end = None if self.opts.duration is None else self.started + self.opts.duration
        show: Callable[[ViewState], None]
        ctx: contextlib.AbstractContextManager[Any]
        if live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.out)
            ctx = Live(console=console, refresh_per_second=1, transient=False)
            live_ctx = ctx

            def show(state: ViewState) -> None:
                live_ctx.update(render_view(state))

        else:
            ctx = contextlib.nullcontext()
            last_line = [0.0]

            def show(state: ViewState) -> None:
                if state.elapsed - last_line[0] >= 10:
                    last_line[0] = state.elapsed
                    self.say(progress_line(state))

        with ctx:
            while not self.stop.is_set():
                self._check_processes()
                try:
                    show(self.view_state())
                except OSError as e:
                    self.notes.append(f"could not read an agent: {e}")
                left = VIEW_PERIOD if end is None else min(VIEW_PERIOD, end - time.monotonic())
                if left <= 0 or self.stop.wait(left):
                    break

    # ------------------------------------------------------------- results
    def quiesce(self) -> None:
        """Stop opening short connections and give the agents time to publish the last.

        The summary then compares what the generator did with what the agents
        counted at a quiet moment (a burst started just before the end would
        otherwise be counted by the generator and still be in flight at the
        agents). Long-lived connections stay open; the agents and Prometheus
        keep running until :meth:`teardown`.
        """
        self.stop.set()  # the batch pod's cycle ends
        if self.traffic is not None:
            self.traffic.pause_short()
        if self._batch_thread is not None:
            self._batch_thread.join(timeout=10)
        time.sleep(QUIESCE_SECONDS)

    def results(self) -> list[Path]:
        """Write ``--summary`` and the exit picture (the agents still run); the files."""
        assert self.facts is not None and self.traffic is not None
        ep = self.endpoints
        since = self.traffic_started - 2
        answers = report.graph_answers(ep, since, time.time() + 1)
        if self.opts.summary is not None:
            doc = report.summary(self.topo, ep, self.facts, traffic=self.traffic.stats,
                                 batch_cycles=self.batch_cycles,
                                 elapsed=time.monotonic() - self.started, answers=answers)  # fmt: skip
            self.opts.summary.write_text(json.dumps(doc, indent=1) + "\n")
        title = f"k8spacket demo: the whole cluster, {time.time() - self.traffic_started:.0f} s of traffic"
        return report.write_picture(answers, ep, self.opts.picture, title)

    # ------------------------------------------------------------ teardown
    def teardown(self) -> list[str]:
        """Stop everything and delete every namespace; what is still there (should be nothing)."""
        self.stop.set()
        if self.traffic is not None:
            self.traffic.stop()
        if self._batch_thread is not None:
            self._batch_thread.join(timeout=10)
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in self.forwarders.values():
            f.close()
        for logf in self.logs:
            logf.close()
        self.network.teardown()
        left = [f"namespace {n}" for n in demo_namespaces(self.opts.prefix)]
        left += [f"link {n}" for n in demo_links(self.opts.prefix, [p.short for p in PODS])]
        return left


def run_demo(opts: DemoOptions, out: IO[str] = sys.stdout) -> int:
    why = netns_unavailable()
    if why is not None:
        raise DemoUnavailable(why)
    if shutil.which("dot") is None:
        raise DemoUnavailable("the demo draws its graph with Graphviz: apt-get install graphviz")
    with single_run(opts.prefix):
        demo = Demo(opts, out)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def on_signal(signum: int, frame: Any) -> None:
            demo.stop.set()

        for s in previous:
            signal.signal(s, on_signal)
        pictures: list[Path] = []
        failed = True
        try:
            demo.say(f"k8spacket demo: building the cluster (prefix {opts.prefix}) …")
            try:
                demo.build()
                demo.start_traffic()
            except (NetnsError, geo.GeoDataError, TrafficError) as e:
                raise DemoError(str(e)) from None
            demo.say("k8spacket demo: running; open " + demo.urls()["graph page"])
            for name, url in demo.urls().items():
                demo.say(f"  {name}: {url}")
            demo.wait()
            demo.quiesce()
            pictures = demo.results()
            failed = False
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            left = demo.teardown()
            if failed or opts.keep_logs:
                demo.say(f"k8spacket demo: logs kept in {demo.workdir}")
            else:
                shutil.rmtree(demo.workdir, ignore_errors=True)
            if left:
                demo.say(f"k8spacket demo: could not remove: {', '.join(left)}")
        demo.say(f"k8spacket demo: torn down (no {opts.prefix}-* namespace, link or process left)")
        if opts.summary is not None:
            demo.say(f"k8spacket demo: summary written to {opts.summary}")
        demo.say(
            "k8spacket demo: last picture of the graph: " + ", ".join(str(p) for p in pictures)
        )
        return 1 if left else 0
