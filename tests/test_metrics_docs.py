"""``docs/metrics.md`` against the real exposition: names, types and labels.

The table is held against the ``/metrics`` of a real agent (``k8spacket run`` in
a lab node namespace, capturing real veths, naming from a Kubernetes API served
by kmock and from a GeoIP database): every family the agent exposes must have a
row, every row must be exposed with samples, with the same type and the same
label names. The label-policy and bucket tables are held against the code that
makes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentproc import AgentProc, connect
from conftest import REPO, require
from k8spacket.metrics.labels import DEFAULT_LABELS, LabelPolicy
from k8spacket.metrics.traffic import TrafficMetrics
from kmockserver import kubeconfig, pod
from netlab import NetLab, tcptool_argv
from test_agent_wiring import NodeCluster
from test_metrics_factories import ManualClock, collector, full_sources, rec

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(k8spacket_\w+)` \| (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$")
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? \S+$")
MAXMIND = REPO / "tests" / "fixtures" / "maxmind"
NODE = "lab-n1"


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """family → (type, label names) from the table."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        name, mtype, _unit, labels, meaning = (g.strip() for g in m.groups())
        assert meaning, f"{name}: no meaning"
        names: set[str] = set()
        for part in labels.split(","):
            part = part.strip()
            if part == "_traffic labels_":
                names |= set(DEFAULT_LABELS)
            elif part != "—":
                names.add(part.strip("`"))
        assert name not in rows, f"{name} documented twice"
        rows[name] = (mtype, frozenset(names))
    return rows


def exposed(policy: LabelPolicy) -> dict[str, tuple[str, frozenset[str]]]:
    """family → (type, label names) from a fully wired collector's exposition."""
    traffic = TrafficMetrics(policy, clock=ManualClock())
    traffic.record(rec(close=None))
    traffic.record(rec())
    registry = CollectorRegistry()
    registry.register(collector(traffic, full_sources()))
    text = generate_latest(registry).decode()
    families: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, mtype = line.split(" ")
            families[name] = (mtype, set())
        elif not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            name = m.group(1)
            base = next(f for f in families if name == f or name.removeprefix(f)[:1] == "_")
            labels = {kv.split("=", 1)[0] for kv in (m.group(2) or "").split('",') if kv}
            families[base][1].update(labels - {"le"})
    return {k: (t, frozenset(ls)) for k, (t, ls) in families.items()}


def agent_exposition(body: str) -> dict[str, tuple[str, frozenset[str], int]]:
    """family → (type, label names, number of samples) from a real ``/metrics`` body."""
    out: dict[str, tuple[str, frozenset[str], int]] = {}
    for fam in text_string_to_metric_families(body):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for s in fam.samples for k in s.labels} - {"le"}
        out[name] = (fam.type, frozenset(labels), len(fam.samples))
    return out


@pytest.fixture(scope="module")
def real_agent_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``/metrics`` of a real agent after pod-to-pod, internet and refused traffic, with
    one pod interface down, names from kmock's Kubernetes API and the GeoIP test DB."""
    require(__import__("os").geteuid() == 0, "needs root for network namespaces")
    city = MAXMIND / "GeoLite2-City-Test.mmdb"
    require(city.is_file(), f"{city} missing: run tests/fixtures/fetch_maxmind_test_dbs.sh")
    tmp = tmp_path_factory.mktemp("docs-agent")
    with NetLab() as lab:
        cart = lab.add_pod("cart", "10.214.1.2/24")
        redis = lab.add_pod("redis", "10.214.1.3/24")
        lab.add_pod("idle", "10.214.1.4/24", up=False)  # a candidate interface that is DOWN
        inet = lab.add_pod("inet", "81.2.69.142/24", node="n2")  # "the internet"
        lab.popen_in(redis, tcptool_argv("serve", "--port", "6379", "--reply", "300"))
        lab.popen_in(inet, tcptool_argv("serve", "--port", "443", "--reply", "900"))
        lab.wait_listening(redis, 6379)
        lab.wait_listening(inet, 443)
        cluster = NodeCluster(lab.nodes["n1"].netns)
        agent: AgentProc | None = None
        try:
            cluster.create("pods", pod("cart-1", ("10.214.1.2",), node=NODE,
                                       owner=("ReplicaSet", "cart-5d8f9")))  # fmt: skip
            cluster.create("pods", pod("redis-0", ("10.214.1.3",), node=NODE,
                                       owner=("StatefulSet", "redis")))  # fmt: skip
            agent = AgentProc(
                lab,
                tmp,
                f"enrichment: {{geoip: {{dbPath: '{city}'}}}}\n",
                env={
                    "KUBECONFIG": str(kubeconfig(tmp / "kubeconfig", cluster.url)),
                    "NODE_NAME": NODE,
                },
            )
            a = agent
            a.wait("ready", lambda: a.get("/readyz")[0] == 200)
            connect(lab, cart, "10.214.1.3", "6379", "--send", "700")
            connect(lab, cart, "10.214.1.3", "6380")  # refused: nobody listens
            connect(lab, cart, "81.2.69.142", "443", "--send", "10")
            # one connection stays open past the flush period: the open gauge has a sample
            held = lab.popen_in(cart, tcptool_argv("connect", "10.214.1.3", "6379", "--send",
                                                   "5", "--hold", "60"))  # fmt: skip

            def complete() -> str:
                status, body = a.get("/metrics")
                fams = agent_exposition(body) if status == 200 else {}
                done = all(fams.get(n, ("", (), 0))[2] for n in (
                    "k8spacket_tcp_connections_closed_total",
                    "k8spacket_capture_not_owner_total",
                    "k8spacket_enrichment_lookups_total",
                    "k8spacket_k8s_watch_events_total",
                    "k8spacket_tcp_open_connections",
                ))  # fmt: skip
                return body if done else ""

            body: str = a.wait("every family with samples", complete)
            held.kill()
            held.wait(timeout=10)
            assert a.terminate() == 0
            return body
        finally:
            if agent is not None:
                agent.close()
            cluster.shutdown()


@pytest.mark.netns
@pytest.mark.kmock
@pytest.mark.slow
def test_every_family_the_agent_exposes_is_documented_and_the_other_way(
    real_agent_metrics: str,
) -> None:
    doc, real = documented(), agent_exposition(real_agent_metrics)
    assert sorted(set(real) - set(doc)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(doc) - set(real)) == [], "in docs/metrics.md but not exposed"
    assert [n for n, (_, _, samples) in real.items() if not samples] == [], "no samples"


@pytest.mark.netns
@pytest.mark.kmock
@pytest.mark.slow
def test_types_and_labels_match_the_agent(real_agent_metrics: str) -> None:
    doc, real = documented(), agent_exposition(real_agent_metrics)
    assert {n: doc.get(n) for n in real} == {n: (t, ls) for n, (t, ls, _) in real.items()}


@pytest.mark.parametrize(
    "policy",
    [
        LabelPolicy("pod"),
        LabelPolicy(
            "workload",
            ("src_ip", "dst_ip", "src_port", "dst_country", "dst_service"),
            hide_source_port=False,
        ),
    ],
    ids=["pod-level", "all-opt-ins"],
)
def test_opt_in_labels_are_documented(policy: LabelPolicy) -> None:
    text = DOC.read_text()
    real = exposed(policy)
    extra = real["k8spacket_tcp_sent_bytes_total"][1] - set(DEFAULT_LABELS)
    assert extra == set(policy.opt_in)
    for name in extra:
        assert f"`{name}`" in text


def test_documented_buckets_are_the_real_ones() -> None:
    from k8spacket.metrics.traffic import DURATION_BUCKETS, HANDSHAKE_BUCKETS

    text = DOC.read_text()
    for name, buckets in (
        ("k8spacket_tcp_handshake_seconds", HANDSHAKE_BUCKETS),
        ("k8spacket_tcp_connection_duration_seconds", DURATION_BUCKETS),
    ):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{name}` | 0"))
        listed = row.split("|")[2].strip().removesuffix(", +Inf").split(", ")
        assert tuple(float(v) for v in listed) == buckets
