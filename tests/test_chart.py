"""The Helm chart, rendered by the real helm and read back by the agent's own loader.

Every scenario (the defaults, each ``charts/k8spacket/ci/*-values.yaml`` and the
seed's values file) is linted with ``helm lint --strict``, rendered with ``helm
template`` and validated offline by ``kubernetes-validate --strict`` (the
Prometheus Operator kinds, which it has no schema for, are checked structurally).
The rendered configuration file, environment and ``--listen`` argument are
loaded with :func:`k8spacket.config.load_settings`, so a value the agent does not
read, or reads differently, fails here rather than in a cluster.

helm comes from ``scripts/deps.d/30-helm.sh`` (PATH, or its cache directory).
The dashboards are the generated ones committed in ``charts/k8spacket/dashboards/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, require
from k8spacket.cli import build_parser
from k8spacket.config import FIELDS, SEED_IGNORED, Settings, as_dict, load_settings

CHART = REPO / "charts/k8spacket"
SEED = REPO / "tests/data/seed/k8spacket-values.yaml"
GRAFANA_SEED = REPO / "tests/data/seed/grafana-values-excerpt.yaml"
CI_FILES = sorted(CHART.glob("ci/*-values.yaml"))
SCENARIOS: dict[str, Path | None] = {
    "chart-defaults": None,
    **{p.name.removesuffix("-values.yaml"): p for p in CI_FILES},
    "seed": SEED,
}
RELEASE, NAMESPACE = "k8spacket", "k8spacket"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
#: settings of the agent's tree the chart sets itself (not under ``config:``)
CHART_MANAGED = {"kubernetes.kubeconfig", "kubernetes.nodeName", "inventory.path",
                 "graph.peerNamespace"}  # fmt: skip
#: values keys accepted for compatibility with the seed and used by no template
COMPAT_ONLY = {
    "replicaCount",
    "k8sPacket.tcp.assembler.maxPagesPerConnection",
    "k8sPacket.tcp.assembler.maxPagesTotal",
}
#: container env vars that are not agent settings: expanded by Kubernetes into args
ARG_ONLY_ENV = {"HOST_IP"}
FAKE_DOWNWARD = {"spec.nodeName": "node-a", "status.hostIP": "10.0.0.7",
                 "metadata.namespace": NAMESPACE}  # fmt: skip


# ----------------------------------------------------------------- helm plumbing
def helm_binary() -> str:
    tools = os.environ.get("K8SPACKET_TOOLS") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "k8spacket-tools"
    )
    for candidate in (shutil.which("helm"), f"{tools}/bin/helm"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    require(False, "helm is not installed (scripts/deps.d/30-helm.sh installs it)")
    raise AssertionError("unreachable")


class Helm:
    def __init__(self, binary: str, chart: Path, home: Path) -> None:
        self.binary, self.chart = binary, chart
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def run(self, *args: str, chart: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args, str(chart or self.chart)],
            capture_output=True, text=True, env=self.env, check=False, timeout=120,
        )  # fmt: skip

    def template_args(self, values: Path | None, sets: tuple[str, ...]) -> list[str]:
        args = ["template", RELEASE, "--namespace", NAMESPACE]
        if values is not None:
            args += ["-f", str(values)]
        for s in sets:
            args += ["--set", s]
        return args

    def render(self, values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
        key = (values, sets)
        if key not in self._cache:
            r = self.run(*self.template_args(values, sets))
            assert r.returncode == 0, r.stderr
            self._cache[key] = [d for d in yaml.safe_load_all(r.stdout) if d]
        return self._cache[key]

    def fails(self, values: Path | None = None, *sets: str) -> str:
        r = self.run(*self.template_args(values, sets))
        assert r.returncode != 0, "helm template was expected to refuse these values"
        return r.stderr


@pytest.fixture(scope="module")
def helm() -> Iterator[Helm]:
    binary = helm_binary()
    home = Path(tempfile.mkdtemp(prefix="kphelm"))
    try:
        yield Helm(binary, CHART, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def kind(docs: list[dict[str, Any]], k: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == k]


def one(docs: list[dict[str, Any]], k: str) -> dict[str, Any]:
    found = kind(docs, k)
    assert len(found) == 1, f"{len(found)} {k}"
    return found[0]


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    ds = one(docs, "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def agent_settings(docs: list[dict[str, Any]], tmp: Path) -> Settings:
    """What ``k8spacket run`` would load from the rendered pod (downward API faked)."""
    c = agent_container(docs)
    (cm,) = [d for d in kind(docs, "ConfigMap") if "config.yaml" in d.get("data", {})]
    assert c["command"][1:] == ["-m", "k8spacket.cli"]
    build_parser().parse_args(c["args"])  # every flag is one `k8spacket run` takes
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"][1:])
    assert c["args"][0] == "run"
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert args["config"] == f"{config_mount}/config.yaml"
    config = tmp / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    env = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = FAKE_DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]]
    listen = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], args["listen"])
    return load_settings(config, {k: v for k, v in env.items() if k not in ARG_ONLY_ENV},
                         listen=listen)  # fmt: skip


def leaves(doc: Any, where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            out.update(leaves(v, f"{where}.{k}" if where else str(k)))
    else:
        out[where] = doc
    return out


VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
OUR_TREE = {f.yaml for f in FIELDS if not f.seed} - CHART_MANAGED


# ------------------------------------------------------------------ every scenario
@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_lint_strict(helm: Helm, values: Path | None) -> None:
    args = ["lint", "--strict"] + (["-f", str(values)] if values else [])
    r = helm.run(*args)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_rendering_validates(helm: Helm, values: Path | None, tmp_path: Path) -> None:
    validator = shutil.which("kubernetes-validate")
    require(validator is not None, "kubernetes-validate is not installed (test extras)")
    assert validator is not None
    docs = helm.render(values)
    plain = [d for d in docs if d["kind"] not in CRD_KINDS]
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    r = subprocess.run([validator, "--strict", "-k", "1.30.0", str(out)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" passed for resource ") == len(plain), r.stdout
    for d in docs:
        if d["kind"] in CRD_KINDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(d) == {"apiVersion", "kind", "metadata", "spec"}
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_agent_loads_the_rendered_settings(helm: Helm, values: Path | None, tmp_path: Path) -> None:
    docs = helm.render(values)
    settings = agent_settings(docs, tmp_path)
    assert settings.kubernetes.node_name == "node-a"
    # every variable handed to the agent is one the loader reads (or an args expansion)
    read = {name for f in FIELDS for name in f.env}
    for e in agent_container(docs)["env"]:
        assert e["name"] in read | ARG_ONLY_ENV, f"env {e['name']} is read by nothing"


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_exactly_one_scrape_configuration(helm: Helm, values: Path | None) -> None:
    docs = helm.render(values)
    pod = one(docs, "DaemonSet")["spec"]["template"]
    annotations = pod["metadata"].get("annotations", {})
    ways = kind(docs, "ServiceMonitor") + kind(docs, "PodMonitor")
    assert len(ways) + ("prometheus.io/scrape" in annotations) == 1
    port = agent_container(docs)["ports"][0]["containerPort"]
    if "prometheus.io/scrape" in annotations:
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
    for monitor in ways:
        (endpoint,) = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node",
                "action": "replace"} in endpoint["relabelings"]  # fmt: skip
        sel = monitor["spec"]["selector"]["matchLabels"]
        assert sel.items() <= pod["metadata"]["labels"].items()


def test_two_scrape_configurations_are_refused(helm: Helm) -> None:
    assert "twice" in helm.fails(None, "serviceMonitor.enabled=true", "podMonitor.enabled=true")
    assert "twice" in helm.fails(
        None, "serviceMonitor.enabled=true", "prometheusAnnotations.enabled=true"
    )


# ----------------------------------------------------------------- the pod itself
def test_daemonset_runs_on_every_node_in_the_host_network(helm: Helm) -> None:
    ds = one(helm.render(), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}
    }  # fmt: skip
    # selectors never carry the chart version (immutable on upgrade)
    assert not any("chart" in k or "version" in k for k in ds["spec"]["selector"]["matchLabels"])
    c = agent_container(helm.render())
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "HOST_IP": "status.hostIP",
                   "POD_NAMESPACE": "metadata.namespace"}  # fmt: skip
    assert "--listen=$(HOST_IP):6676" in c["args"]
    assert "priorityClassName" not in spec
    sm = one(helm.render(CHART / "ci/servicemonitor-values.yaml"), "DaemonSet")
    assert sm["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"


@pytest.mark.parametrize(
    ("sets", "caps", "interpreter"),
    [
        ((), ["NET_RAW", "NET_ADMIN"], "/opt/k8spacket/bin/k8spacket-python-conntrack"),
        (("config.capture.conntrack=true",), ["NET_RAW", "NET_ADMIN"],
         "/opt/k8spacket/bin/k8spacket-python-conntrack"),
        (("config.capture.conntrack=false",), ["NET_RAW"], "/opt/k8spacket/bin/k8spacket-python"),
        (("config.capture.conntrack=false", "securityContext.capabilities.add={SYS_PTRACE}"),
         ["NET_RAW", "SYS_PTRACE"], "/opt/k8spacket/bin/k8spacket-python"),
    ],
    ids=["defaults-conntrack-auto", "conntrack-true", "conntrack-false", "extra-cap-from-values"],
)  # fmt: skip
def test_capabilities_are_exactly_what_the_agent_uses(
    helm: Helm, sets: tuple[str, ...], caps: list[str], interpreter: str
) -> None:
    docs = helm.render(None, *sets)
    c = agent_container(docs)
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": caps}
    assert c["command"] == [interpreter, "-m", "k8spacket.cli"]
    assert sc["readOnlyRootFilesystem"] is True
    # the file capability needs no_new_privs off (docs/chart.md, "Privileges")
    assert sc["allowPrivilegeEscalation"] is True
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    # the one writable place is an emptyDir
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/k8spacket"]]["configMap"]["name"] == RELEASE


def test_seed_security_context_keeps_its_grants(helm: Helm) -> None:
    c = agent_container(helm.render(SEED))
    sc = c["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert sc["allowPrivilegeEscalation"] is True
    assert c["command"][0] == "/opt/k8spacket/bin/k8spacket-python-conntrack"


def test_probes_are_http_and_generous(helm: Helm) -> None:
    c = agent_container(helm.render())
    port = c["ports"][0]
    assert port == {"name": "http", "containerPort": 6676, "protocol": "TCP"}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):  # fmt: skip
        p = c[probe]
        assert p["httpGet"] == {"path": path, "port": "http"}, probe
        assert p["timeoutSeconds"] >= 5, probe
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 120  # 2 minutes unanswered
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300


def test_resources_have_a_memory_limit_above_the_measured_peak(helm: Helm) -> None:
    res = agent_container(helm.render())["resources"]
    mib = {"Mi": 1, "Gi": 1024}

    def to_mib(q: str) -> int:
        return int(q[:-2]) * mib[q[-2:]]

    # bench/agent_memory.py: ~316 MiB resident, ~544 MiB at a full-budget scrape
    assert to_mib(res["requests"]["memory"]) >= 316
    assert to_mib(res["limits"]["memory"]) >= 544 * 1.5
    assert "cpu" not in res.get("limits", {})


def test_rbac_is_exactly_docs_kubernetes(helm: Helm) -> None:
    docs_md = (REPO / "docs/kubernetes.md").read_text()
    block = re.search(r"```yaml\n(apiVersion: rbac.*?)```", docs_md, re.DOTALL)
    assert block
    documented = next(d for d in yaml.safe_load_all(block.group(1)) if d["kind"] == "ClusterRole")
    docs = helm.render()
    role = one(docs, "ClusterRole")
    assert role["rules"] == documented["rules"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}  # fmt: skip
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]  # fmt: skip
    ds = one(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_service_maps_8080_to_the_agent_port(helm: Helm) -> None:
    docs = helm.render()
    svc = one(docs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 6676,
                                     "protocol": "TCP"}]  # fmt: skip
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    moved = one(helm.render(None, "k8sPacket.tcp.listener.port=7000"), "Service")
    assert moved["spec"]["ports"][0]["targetPort"] == 7000


# ------------------------------------------------------------ seed values, no drift
SEED_MEANINGS = [
    ("k8sPacket.tcp.listener.port", "http.port"),
    ("k8sPacket.metrics.hideSourcePort", "metrics.hide_source_port"),
    ("k8sPacket.metrics.reverseLookup.geoipDBPath", "enrichment.geoip_db_path"),
    ("k8sPacket.metrics.reverseLookup.whoisRegexp", "enrichment.whois_regexp"),
    ("k8sPacket.tcp.listener.interfaces.command", "capture.interfaces.command"),
    ("k8sPacket.tcp.listener.interfaces.refreshPeriod", "capture.interfaces.refresh_period"),
    ("k8sPacket.tcp.assembler.flushing.periodDuration", "tracker.flush_period"),
    ("k8sPacket.tcp.assembler.flushing.closeOlderThanDuration", "tracker.close_older_than"),
]


def chart_only(d: dict[str, Any], rendered: bool = True) -> dict[str, Any]:
    """Settings as a dict without what the chart takes from the pod (checked here):
    the listening host, the node name, the graph's peer selector and namespace."""
    host, node = d["http"].pop("host"), d["kubernetes"].pop("node_name")
    selector, namespace = d["graph"].pop("peer_selector"), d["graph"].pop("peer_namespace")
    if rendered:
        assert (host, node) == (FAKE_DOWNWARD["status.hostIP"], FAKE_DOWNWARD["spec.nodeName"])
        assert selector == f"app.kubernetes.io/name=k8spacket,app.kubernetes.io/instance={RELEASE}"
        assert namespace == NAMESPACE
    return d


def _attr(settings: Settings, dotted: str) -> Any:
    obj: Any = settings
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_seed_values_mean_the_same_through_the_chart(helm: Helm, tmp_path: Path) -> None:
    through_chart = agent_settings(helm.render(SEED), tmp_path)
    direct = load_settings(SEED)  # the agent reads the seed's values file itself
    seed = leaves(yaml.safe_load(SEED.read_text()))
    for key, attr in SEED_MEANINGS:
        assert key in seed, key
        assert _attr(through_chart, attr) == _attr(direct, attr), key
    assert through_chart.http.port == 6676 and through_chart.metrics.hide_source_port is True
    assert (
        through_chart.capture.interfaces.command
        == seed["k8sPacket.tcp.listener.interfaces.command"]
    )
    assert through_chart.tracker.close_older_than == 20.0
    # and nothing else differs, except what the chart knows about the pod
    assert chart_only(as_dict(through_chart)) == chart_only(as_dict(direct), rendered=False)


def test_chart_defaults_are_the_agent_defaults(helm: Helm, tmp_path: Path) -> None:
    assert chart_only(as_dict(agent_settings(helm.render(), tmp_path))) == chart_only(
        as_dict(Settings()), rendered=False
    )


def test_graph_peers_are_this_releases_pods(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render(None, "nameOverride=pkt")
    settings = agent_settings(docs, tmp_path)
    labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    wanted = dict(term.split("=") for term in settings.graph.peer_selector.split(","))
    assert wanted == {"app.kubernetes.io/name": "pkt", "app.kubernetes.io/instance": RELEASE}
    assert wanted.items() <= labels.items()
    assert settings.graph.peer_namespace == NAMESPACE
    assert settings.http.graph_source == "auto"


def test_config_tree_is_the_agents_tree() -> None:
    """values.yaml ``config:`` and the schema hold exactly the loader's own settings."""
    in_values = set(leaves(VALUES["config"]))
    schema = json.loads((CHART / "values.schema.json").read_text())

    def schema_leaves(node: dict[str, Any], where: str = "") -> set[str]:
        if "properties" not in node:
            return {where}
        out: set[str] = set()
        for k, sub in node["properties"].items():
            out |= schema_leaves(sub, f"{where}.{k}" if where else k)
        return out

    assert in_values == OUR_TREE | {"http.host"}
    assert schema_leaves(schema["properties"]["config"]) == OUR_TREE | {"http.host"}
    seed_tree = {f"k8sPacket.{f.seed}" for f in FIELDS if f.seed} | {
        f"k8sPacket.{k}" for k in SEED_IGNORED
    }
    assert set(leaves(VALUES["k8sPacket"], "k8sPacket")) == seed_tree
    assert schema_leaves(schema["properties"]["k8sPacket"], "k8sPacket") == seed_tree


def _template_references() -> set[str]:
    refs: set[str] = set()
    for tpl in (CHART / "templates").rglob("*"):
        if not tpl.is_file():
            continue
        text = tpl.read_text()
        alias = re.compile(r"\$(\w+) := \(?\.Values\.([\w.]+)")
        aliases = dict(alias.findall(text))
        # an alias is not a use of its whole subtree; what is read through it is
        refs |= set(re.findall(r"\.Values\.([\w.]+)", alias.sub("", text)))
        rest_of_text = alias.sub("", text)
        for name, base in aliases.items():
            refs |= {f"{base}.{rest}" for rest in re.findall(rf"\${name}\.([\w.]+)", text)}
            if re.search(rf"\${name}(?![\w.])", rest_of_text):
                refs.add(base)  # the alias itself is used
    # .Values.config goes to the agent whole (deepCopy); the loader reads each key
    return refs


def test_every_values_key_is_used_or_marked_compatibility_only() -> None:
    refs = _template_references()
    notes = (CHART / "templates/NOTES.txt").read_text()
    text = (CHART / "values.yaml").read_text()
    for key in leaves(VALUES):
        used = any(key == r or key.startswith(r + ".") for r in refs)
        if key in COMPAT_ONLY:
            assert not used, f"{key} is marked compatibility-only but a template uses it"
            assert key.rsplit(".", 1)[-1] in notes, f"{key} not named in NOTES.txt"
            leaf = key.rsplit(".", 1)[-1]
            comment = text[: text.index(f"{leaf}:")].rstrip().splitlines()[-1]
            assert "compatibility only" in comment or "compatibility only" in "\n".join(
                text[: text.index(f"{leaf}:")].splitlines()[-3:]
            ), key
        else:
            assert used, f"values key {key} is used by no template"


def test_every_values_key_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    # Kubernetes objects handed over whole are documented by the comment on their key
    passthrough = {"podSecurityContext", "securityContext", "resources", "tolerations"}
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside = any(name in passthrough for _, name in stack) or (
            stack and stack[-1][1] in {"startup", "liveness", "readiness"}
        )
        stack.append((indent, m.group(2)))
        if inside:
            continue
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#"), f"values.yaml line {i + 1}: {m.group(2)} has no comment"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("config.tracker.maxConnectons=5",), "maxConnectons"),
        (("config.tracker.maxConnections=lots",), "maxConnections"),
        (("config.metrics.level=cluster",), "level"),
        (("config.metrics.labels={src_pod,pod_uid}",), "labels"),
        (("k8sPacket.tcp.listener.port=http",), "port"),
        (("k8sPacket.tcp.listner.port=1",), "listner"),
        (("serviceMonitor.enable=true",), "enable"),
        (("grafana.dashboards.enabled=yes",), "enabled"),
        (("prometheusRules.enabled=true",), "prometheusRules"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_schema_rejects_wrong_types_and_unknown_keys(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    assert message in helm.fails(None, *sets)


# ------------------------------------------------------------ Prometheus and Grafana
def test_prometheus_rules_pass_promtool(helm: Helm, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (apt package prometheus)")
    assert promtool is not None
    rule = one(helm.render(CHART / "ci/servicemonitor-values.yaml"), "PrometheusRule")
    groups = rule["spec"]["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {"K8spacketKernelDrops", "K8spacketSeriesOverflow", "K8spacketThreadRestarts",
            "K8spacketRecordsNotReportedWhileAgentMissing", "K8spacketAgentNotReady"} <= alerts  # fmt: skip
    assert all(r.get("labels", {}).get("team") == "platform"
               for g in groups for r in g["rules"] if "alert" in r)  # fmt: skip
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    assert "workload_pair:k8spacket_tcp_sent_bytes:rate5m" in records
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                       text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts) + len(records)} rules found" in r.stdout


def test_alerts_fire_in_promtool_unit_tests(helm: Helm, tmp_path: Path) -> None:
    """promtool's rule unit tests: the drops alert fires per node, and only there; the
    exactly-once alert fires only while an agent is missing."""
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (apt package prometheus)")
    assert promtool is not None
    rule = one(helm.render(CHART / "ci/servicemonitor-values.yaml"), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'k8spacket_capture_drops_total{node="a",interface="veth1"}',
                 "values": "0+10x40"},
                {"series": 'k8spacket_capture_drops_total{node="b",interface="veth2"}',
                 "values": "0+0x40"},
            ],
            "alert_rule_test": [{
                "eval_time": "30m",
                "alertname": "K8spacketKernelDrops",
                "exp_alerts": [{
                    "exp_labels": {"node": "a", "severity": "warning", "team": "platform"},
                    "exp_annotations": {
                        "summary": "The kernel dropped packets before k8spacket read them",
                        "description": "100 packets dropped in 10 minutes on node a: byte "
                        "counts and connections are missing. Raise config.capture.ringSize "
                        "or the agent's CPU.",
                    },
                }],
            }],
        }, {
            # records left to other agents while one agent is missing: counted by nobody
            "interval": "1m",
            "input_series": [
                {"series": 'k8spacket_records_not_reported_total{node="a",reason="remote_client"}',
                 "values": "0+5x60"},
                {"series": 'kube_daemonset_status_desired_number_scheduled{namespace="k8spacket",daemonset="k8spacket"}',
                 "values": "3x60"},
                {"series": 'kube_daemonset_status_number_available{namespace="k8spacket",daemonset="k8spacket"}',
                 "values": "3x20 2x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "18m", "alertname": "K8spacketRecordsNotReportedWhileAgentMissing",
                 "exp_alerts": []},
                {"eval_time": "50m", "alertname": "K8spacketRecordsNotReportedWhileAgentMissing",
                 "exp_alerts": [{
                     "exp_labels": {"severity": "warning", "team": "platform"},
                     "exp_annotations": {
                         "summary": "Connections left to another node's agent while some "
                         "agents are missing",
                         "description": "Server-side agents leave connections of remote pod "
                         "clients to the client's agent (exactly-once rule), but agents are "
                         "unavailable, so connections whose client runs on their nodes are "
                         "counted by nobody (75 records left out in 15 minutes).",
                     },
                 }]},
            ],
        }],
    }))  # fmt: skip
    r = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_configmaps_match_the_sidecar_defaults(helm: Helm) -> None:
    docs = helm.render(CHART / "ci/grafana-values.yaml")
    cms = {d["metadata"]["name"]: d for d in kind(docs, "ConfigMap")}
    dashboards = {n: d for n, d in cms.items() if "-dashboard" in n}
    sidecar = {n for n, d in dashboards.items() if "grafana_dashboard" in d["metadata"]["labels"]}
    files = sorted(p.name for p in helm.chart.glob("dashboards/*.json"))
    assert sidecar == {f"{RELEASE}-dashboard-{f.removesuffix('.json')}" for f in files}
    assert all(dashboards[n]["metadata"]["labels"]["grafana_dashboard"] == "1" for n in sidecar)
    # the name the seed's Grafana values mount, without the sidecar label (no duplicate uid)
    seed_grafana = yaml.safe_load(GRAFANA_SEED.read_text())
    compat = seed_grafana["dashboardsConfigMaps"]["default"]
    assert "topology.json" in files
    assert set(dashboards) == sidecar | {compat}
    assert dashboards[compat]["data"] == dashboards[f"{RELEASE}-dashboard-topology"]["data"]
    for cm in dashboards.values():
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "k8spacket"}
        ((name, body),) = cm["data"].items()
        assert json.loads(body) == json.loads((helm.chart / "dashboards" / name).read_text())
    (ds,) = [d for d in cms.values() if "grafana_datasource" in d["metadata"]["labels"]]
    assert ds["metadata"]["labels"]["grafana_datasource"] == "1"
    assert ds["metadata"]["namespace"] == "monitoring"
    ((_, body),) = ds["data"].items()
    provisioned = {d["type"]: d for d in yaml.safe_load(body)["datasources"]}
    nodegraph = provisioned["hamedkarbasi93-nodegraphapi-datasource"]
    # the same URL as the seed's Grafana values, for release k8spacket in namespace k8spacket
    (seed_ds,) = seed_grafana["datasources"]["nodegraphapi-plugin-datasource.yaml"]["datasources"]
    assert nodegraph["jsonData"]["url"] == seed_ds["jsonData"]["url"]
    assert "url" not in nodegraph  # the plugin reads only jsonData.url
    assert provisioned["yesoreyeram-infinity-datasource"]["url"] == seed_ds["jsonData"]["url"]


def render_notes(helm: Helm, tmp: Path, *sets: str) -> str:
    """NOTES.txt as helm renders it (through a copy of the chart: `template` skips NOTES)."""
    chart = tmp / "notes-chart"
    shutil.copytree(helm.chart, chart)
    (chart / "notes").mkdir()
    shutil.move(chart / "templates/NOTES.txt", chart / "notes/NOTES.txt")
    (chart / "templates/zz-notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes/NOTES.txt") . | toJson }}\n'
    )
    args = [*helm.template_args(None, sets), "-s", "templates/zz-notes.yaml"]
    r = helm.run(*args, chart=chart)
    assert r.returncode == 0, r.stderr
    return str(yaml.safe_load(r.stdout)["notes"])


#: the agent paths NOTES.txt may point users at (DESIGN.md, "HTTP")
AGENT_PATHS = {"/readyz", "/healthz", "/metrics", "/nodegraph/api/graph/data",
               "/nodegraph/api/health", "/nodegraph/connections"}  # fmt: skip


def notes_paths(notes: str) -> set[str]:
    return set(re.findall(r"/proxy(/[\w/]+)", notes))


def test_notes_commands_name_real_objects_and_paths(helm: Helm, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path)
    docs = helm.render()
    ds = one(docs, "DaemonSet")["metadata"]["name"]
    svc = one(docs, "Service")
    assert f"kubectl -n {NAMESPACE} rollout status daemonset/{ds}" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    port_name = svc["spec"]["ports"][0]["name"]
    prefix = f"/api/v1/namespaces/{NAMESPACE}/services/{svc['metadata']['name']}:{port_name}/proxy"
    assert notes.count(prefix) == 4
    assert notes_paths(notes) <= AGENT_PATHS and notes_paths(notes)
    selector = "app.kubernetes.io/instance=" + RELEASE
    assert f"-l {selector}" in notes
    for key in ("replicaCount", "maxPagesPerConnection", "maxPagesTotal"):
        assert key in notes
    assert "port-forward` does not reach them" in notes
    assert "WARNING" not in notes
    seed_notes = render_notes(
        helm, tmp_path / "s", "image.repository=docker.io/k8spacket/k8spacket"
    )
    assert "WARNING: image.repository is docker.io/k8spacket/k8spacket" in seed_notes
    warned = render_notes(helm, tmp_path / "w", "securityContext.allowPrivilegeEscalation=false")
    assert "WARNING: securityContext.allowPrivilegeEscalation is false" in warned


def test_helm_test_pod_checks_the_service(helm: Helm) -> None:
    r = helm.run("template", RELEASE, "--namespace", NAMESPACE, "-s",
                 "templates/tests/test-readyz.yaml")  # fmt: skip
    assert r.returncode == 0, r.stderr
    pod = yaml.safe_load(r.stdout)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:8080" in script
    for path in re.findall(r'"(/[\w/]+)"', script):
        assert path in AGENT_PATHS | {"/api/graph/fields"}


@pytest.mark.netns
@pytest.mark.slow
def test_notes_paths_answer_on_a_running_agent(helm: Helm, tmp_path: Path) -> None:
    """Every URL NOTES.txt and the helm test pod point at is served (upstream's NOTES 404ed)."""
    from agentproc import AgentProc
    from netlab import NetLab

    notes = render_notes(helm, tmp_path)
    paths = notes_paths(notes) | {"/readyz", "/nodegraph/api/health", "/api/graph/fields"}
    with NetLab() as lab:
        lab.add_pod("a", "10.213.1.2/24")
        agent = AgentProc(lab, tmp_path, "kubernetes:\n  enabled: 'false'\n")
        try:
            agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
            answers = {path: agent.get(path)[0] for path in sorted(paths)}
        finally:
            agent.close()
    assert answers == dict.fromkeys(sorted(paths), 200)


def test_schema_accepts_exactly_the_agents_opt_in_labels() -> None:
    """``config.metrics.labels`` in the schema lists the label policy's own opt-in labels."""
    from k8spacket.metrics.labels import OPT_IN_LABELS

    schema = json.loads((CHART / "values.schema.json").read_text())
    labels = schema["properties"]["config"]["properties"]["metrics"]["properties"]["labels"]
    assert labels["items"]["enum"] == list(OPT_IN_LABELS)
