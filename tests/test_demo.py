"""``k8spacket demo``: one real run (30 s) serves every end-to-end check.

The module fixture starts ``k8spacket demo --duration 30 --summary F`` with a
prefix of its own (``kpd`` + two random characters, so a demo a person runs
with the default ``kpd`` is never touched) and reads its output. While it runs,
headless Chromium opens the topology page; after it ends, the summary, the
picture and the machine are checked: every pair of the plan in the metrics and
the graph with bytes, the internet endpoint named with organisation and country,
refused and reset connections counted as such, and no namespace, link or
process of the prefix left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from browser import artifacts_dir, dump_dom, ink, png_pixels, screenshot
from conftest import require_tool
from k8spacket import cli
from k8spacket.demo import netns as demo_netns
from k8spacket.demo import observe, runner
from k8spacket.demo.plan import FLOWS, INTERNET, pairs
from k8spacket.demo.topology import PODS, PrefixError, Topology, check_prefix
from k8spacket.demo.view import ViewState, progress_line, render_view
from k8spacket.enrich.inventory import Inventory

DURATION = 30
PREFIX = "kpd" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(2))
WORKLOADS = sorted({p.workload for p in PODS})


# ----------------------------------------------------------------- quick tests
@pytest.mark.parametrize(
    ("prefix", "ok"),
    [("kpd", True), ("kpdq7", True), ("kp12", False), ("kpdabc", False), ("KPD", False),
     ("kpd-x", False), ("pp_demo", False)],
    ids=["default", "two-more", "netlab-style", "too-long", "upper", "dash", "other-tool"],
)  # fmt: skip
def test_prefix_rule(prefix: str, ok: bool) -> None:
    if ok:
        assert check_prefix(prefix) == prefix
    else:
        with pytest.raises(PrefixError):
            check_prefix(prefix)


def test_inventory_names_every_pod_and_node_but_not_the_internet() -> None:
    topo = Topology("kpdzz")
    inv = Inventory.from_data(topo.inventory())
    for pod in PODS:
        ident = inv.lookup(pod.ip)
        assert ident is not None
        assert (ident.namespace, ident.workload, ident.kind) == (pod.namespace, pod.workload, "pod")
    for node in topo.nodes:
        ident = inv.lookup(topo.node_ip(node))
        assert ident is not None and ident.kind == "node"
    assert inv.lookup(topo.internet_ip) is None  # GeoIP names it
    assert all(len(n) <= 15 for n in (topo.host_if(p) for p in PODS))


def test_without_root_one_line_and_status_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "netns_unavailable", lambda: "the demo needs root")
    assert cli.main(["demo", "--duration", "1"]) == cli.EXIT_DEMO_UNAVAILABLE
    err = capsys.readouterr().err
    assert err == "k8spacket: demo: the demo needs root\n"


def test_makefile_demo_falls_back_to_the_replay() -> None:
    text = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    target = text[text.index("\ndemo:") :].split("\n\n")[0]
    assert "k8spacket demo" in target and "k8spacket replay" in target and "-eq 3" in target


EXPOSITION = """\
# TYPE k8spacket_tcp_sent_bytes_total counter
k8spacket_tcp_sent_bytes_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8080"} 300
# TYPE k8spacket_tcp_received_bytes_total counter
k8spacket_tcp_received_bytes_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8080"} 9000
# TYPE k8spacket_tcp_connections_total counter
k8spacket_tcp_connections_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8080",outcome="established"} 3
k8spacket_tcp_connections_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8081",outcome="refused"} 2
# TYPE k8spacket_tcp_connections_closed_total counter
k8spacket_tcp_connections_closed_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8081",close="rst"} 2
k8spacket_tcp_connections_closed_total{src_namespace="shop",src_workload="web",src_kind="pod",dst_namespace="shop",dst_workload="api",dst_kind="pod",dst_port="8080",close="rst"} 1
# TYPE k8spacket_flows_evicted_total counter
k8spacket_flows_evicted_total{reason="idle"} 4
"""


def test_edges_summed_over_agents_and_resets_apart_from_refusals() -> None:
    one = observe.Scrape(
        [(s.name, dict(s.labels), float(s.value))
         for f in text_string_to_metric_families(EXPOSITION) for s in f.samples]
    )  # fmt: skip
    edges = {(e.dst_port): e for e in observe.edges_from_metrics([one, one])}
    ok, refused = edges["8080"], edges["8081"]
    assert (ok.bytes_sent, ok.bytes_received, ok.connections) == (600, 18000, {"established": 6})
    assert (ok.resets, ok.failures) == (2, 0)
    assert (refused.failures, refused.resets) == (4, 0)  # refused closes by RST: not a reset
    assert all(v == 0 for v in observe.drops([one]).values())  # idle evictions are normal


def test_live_view_shows_edges_failures_and_urls() -> None:
    from rich.console import Console

    e = observe.Edge("shop", "web", "pod", "shop", "api", "pod", "8081",
                     connections={"refused": 3}, closed={"rst": 3})  # fmt: skip
    state = ViewState(elapsed=5, duration=30, edges=[e], urls={"graph page": "http://x/graph"},
                      drops={"k8spacket_capture_drops_total": 0})  # fmt: skip
    console = Console(record=True, width=120)
    console.print(render_view(state))
    text = console.export_text()
    for expected in ("5s of 30s", "http://x/graph", "Top edges by bytes", "Failures",
                     "shop/web → shop/api:8081", "capture_drops_total=0"):  # fmt: skip
        assert expected in text
    assert "progress" not in progress_line(state) and "3 connections" in progress_line(state)


@pytest.mark.netns
def test_leftovers_of_this_prefix_only_are_removed() -> None:
    """A crashed run's namespaces and the process inside go; another prefix's stay."""
    mine, other = f"{PREFIX}-node1", f"{PREFIX}x-node1"  # other: a longer prefix
    subprocess.run(["ip", "netns", "add", mine], check=True)
    subprocess.run(["ip", "netns", "add", other], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", mine, "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while not demo_netns.netns_pids(mine) and time.monotonic() < deadline:
            time.sleep(0.05)
        removed = demo_netns.remove_leftovers(PREFIX)
        assert f"namespace {mine}" in removed
        assert any(r.startswith("process ") for r in removed)
        assert sleeper.wait(timeout=5) != 0
        names = demo_netns.demo_namespaces(PREFIX)
        assert mine not in names
        assert other in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True, check=True).stdout  # fmt: skip
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "del", mine], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", other], capture_output=True, check=False)


# ------------------------------------------------------------- one demo run
@dataclass
class DemoRun:
    proc: subprocess.Popen[str]
    directory: Path
    summary_path: Path
    picture: Path
    lines: list[str] = field(default_factory=list)
    graph_url: str = ""
    _summary: dict[str, Any] | None = None

    def finish(self) -> dict[str, Any]:
        """Wait for the demo to end by itself (``--duration``); its summary."""
        if self._summary is None:
            rc = self.proc.wait(timeout=DURATION + 150)
            time.sleep(0.2)  # the output reader's last lines
            assert rc == 0, "\n".join(self.lines[-30:])
            self._summary = json.loads(self.summary_path.read_text())
        return self._summary


def _read_lines(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for tool in ("ip", "dot", "prometheus"):
        require_tool(tool)
    d = tmp_path_factory.mktemp("demo")
    run = DemoRun(proc=None, directory=d, summary_path=d / "summary.json",  # type: ignore[arg-type]
                  picture=d / "graph.svg")  # fmt: skip
    argv = [sys.executable, "-m", "k8spacket.cli", "demo", "--duration", str(DURATION),
            "--summary", str(run.summary_path), "--picture", str(run.picture),
            "--prefix", PREFIX, "--port", "0", "--view", "never", "--seed", "7"]  # fmt: skip
    run.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=d)  # fmt: skip
    reader = threading.Thread(target=_read_lines, args=(run.proc, run.lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not run.graph_url:
            for line in run.lines:
                m = re.search(r"running; open (\S+)", line)
                if m:
                    run.graph_url = m.group(1)
            if run.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the demo did not start:\n" + "\n".join(run.lines[-30:]))
            time.sleep(0.2)
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
            try:
                run.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()
        reader.join(timeout=10)
        if run.proc.stdout is not None:
            run.proc.stdout.close()  # else an unclosed-pipe warning fails a later test
        demo_netns.remove_leftovers(PREFIX)  # only if the checks below already failed


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as answer:
        return bytes(answer.read())


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_graph_page_in_chromium(demo: DemoRun) -> None:
    """While the demo runs, a real browser draws the page with every workload on it."""
    require_tool("chromium")
    sep = "&" if "?" in demo.graph_url else "?"
    deadline = time.monotonic() + DURATION
    svg = ""
    while time.monotonic() < deadline:
        svg = _fetch(f"{demo.graph_url}{sep}format=svg").decode()
        if all(f">{w}</text>" in svg for w in ("web", "api", "cache", "postgres")):
            break
        time.sleep(1)
    dom = dump_dom(f"{demo.graph_url}{sep}refresh=0")
    assert "<svg" in dom
    page_svg = dom[dom.index("<svg") :]
    for w in ("web", "api", "cache", "postgres"):
        assert f">{w}</text>" in page_svg, f"{w} not on the page"
    shot = screenshot(f"{demo.graph_url}{sep}refresh=0", artifacts_dir() / "demo-graph-page.png")
    _, _, pixels = png_pixels(shot)
    assert ink(pixels) > 0.02


def _summary(demo: DemoRun) -> dict[str, Any]:
    return demo.finish()


def _pair(summary: dict[str, Any], client: str, server: str, port: int) -> dict[str, Any]:
    for p in summary["pairs"]:
        if (p["client"], p["server"], p["port"]) == (client, server, port):
            return dict(p)
    raise AssertionError(f"{client} → {server}:{port} not in the summary")


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_every_pair_of_the_plan_in_the_metrics_with_bytes(demo: DemoRun) -> None:
    s = _summary(demo)
    refused_only = {(f.client, f.server, f.port) for f in FLOWS if f.kind == "refused"}
    for client, server, port in pairs(FLOWS):
        m = _pair(s, client, server, port)["metrics"]
        assert m is not None, f"{client} → {server}:{port} missing from the metrics"
        if (client, server, port) in refused_only:
            assert m["connections"].get("refused", 0) > 0
            continue
        assert m["bytes_sent"] > 0 and m["bytes_received"] > 0, (client, server, port, m)
        assert m["connections"].get("established", 0) > 0
    assert s["batch_cycles"] >= 1  # the batch pod came (and went)
    assert all(v == 0 for v in s["drops"].values()), s["drops"]


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_each_connection_counted_once(demo: DemoRun) -> None:
    """The agents' counts never exceed what the generator attempted (exactly-once across
    nodes and veths) and miss little (only what was still in flight at the end)."""
    s = _summary(demo)
    for client, server, port in pairs(FLOWS):
        flows = [t for t in s["traffic"] if (t["client"], t["server"], t["port"]) ==
                 (client, server, port)]  # fmt: skip
        attempts = sum(int(t["attempts"]) for t in flows)
        m = _pair(s, client, server, port)["metrics"]
        seen = sum(m["connections"].values())
        assert 0.75 * attempts - 2 <= seen <= attempts, (client, server, port, seen, flows)
        resets = sum(int(t["reset"]) for t in flows)
        rst = m["closed"].get("rst", 0) - m["connections"].get("refused", 0)
        assert rst <= resets, (client, server, port, m, flows)


def _graph(s: dict[str, Any], stats: str) -> dict[str, Any]:
    prom = s["graph"].get(f"prometheus/{stats}") or {}
    if prom.get("edges"):
        return dict(prom)
    nodes: dict[str, Any] = {}
    edges: list[Any] = []
    for n in (1, 2):
        doc = s["graph"].get(f"node{n}/{stats}") or {}
        assert "error" not in doc, doc
        nodes.update({str(x["id"]): x for x in doc.get("nodes", [])})
        edges += doc.get("edges", [])
    return {"nodes": list(nodes.values()), "edges": edges}


def _numbers(edge: dict[str, Any]) -> list[float]:
    out = []
    for k, v in edge.items():
        if k in ("id", "source", "target", "color") or not (
            k in ("mainStat", "secondaryStat", "thickness") or k.startswith("detail__")
        ):
            continue
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
        elif isinstance(v, str):
            out += [float(x) for x in re.findall(r"[0-9]*\.?[0-9]+", v)]
    return out


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_every_pair_of_the_plan_in_the_graph_with_bytes(demo: DemoRun) -> None:
    s = _summary(demo)
    graph = _graph(s, "bytes")
    titles = {str(n["id"]): str(n.get("title")) for n in graph["nodes"]}
    org = s["names"]["internet"]["org"]
    names = {p.short: p.workload for p in PODS} | {INTERNET: org}
    for client, server, port in pairs(FLOWS):
        if any(f.kind == "refused" for f in FLOWS if (f.client, f.server, f.port) ==
               (client, server, port)):  # fmt: skip
            continue
        found = [e for e in graph["edges"]
                 if titles.get(str(e["source"])) == names[client]
                 and titles.get(str(e["target"])) == names[server]]  # fmt: skip
        assert found, f"no graph edge {names[client]} → {names[server]}: {graph['edges']}"
        assert any(x > 0 for e in found for x in _numbers(e)), found


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_internet_endpoint_has_organisation_and_country(demo: DemoRun) -> None:
    s = _summary(demo)
    inet = s["names"]["internet"]
    assert (inet["org"], inet["country"]) == ("GITHUB", "US")
    assert "GeoLite2" in inet["data"]
    assert inet["records_named"] > 0
    assert (inet["record_org"], inet["record_country"]) == ("GITHUB", "US")
    m = _pair(s, "api", INTERNET, 443)["metrics"]
    assert (m["dst_kind"], m["dst_workload"], m["dst_country"]) == ("external", "GITHUB", "US")
    graph = _graph(s, "connection")
    node = [n for n in graph["nodes"] if n.get("title") == "GITHUB"]
    assert node, graph["nodes"]
    assert "US" in json.dumps(node[0])


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_refused_reset_and_long_lived_counted_as_such(demo: DemoRun) -> None:
    s = _summary(demo)
    refused = _pair(s, "web", "api", 8081)["metrics"]
    assert refused["connections"].get("refused", 0) > 0
    assert refused["connections"].get("established", 0) == 0
    reset = _pair(s, "web", "cache", 6379)["metrics"]
    assert reset["closed"].get("rst", 0) > 0
    long = _pair(s, "api", "db", 5432)["metrics"]
    assert long["open"] >= 1 and long["bytes_received"] > 0  # seen before it closed


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_exit_picture_names_the_workloads(demo: DemoRun) -> None:
    _summary(demo)
    svg = demo.picture.read_text()
    for w in ("web", "api", "cache", "postgres", "GITHUB"):
        assert f">{w}</text>" in svg, w
    png = demo.picture.with_suffix(".png")
    _, _, pixels = png_pixels_any(png)
    assert ink(pixels) > 0.01
    assert str(demo.picture) in demo.lines[-1] and str(png) in demo.lines[-1]


def png_pixels_any(path: Path) -> tuple[int, int, list[tuple[int, ...]]]:
    """Graphviz writes RGBA PNGs; same decoder as the browser screenshots."""
    return png_pixels(path)


@pytest.mark.netns
@pytest.mark.prometheus
@pytest.mark.slow
def test_nothing_left_behind(demo: DemoRun) -> None:
    _summary(demo)
    assert demo_netns.demo_namespaces(PREFIX) == []
    assert demo_netns.demo_links(PREFIX, [p.short for p in PODS]) == []
    marker = f"k8spacket-{PREFIX}-".encode()
    procs = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                procs.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    assert procs == []
    assert any("torn down" in line for line in demo.lines)
    assert not runner.pidfile(PREFIX).exists()
