"""The demo's cluster as data: nodes, pods, the internet endpoint, names, addresses.

Nothing here touches the system; :mod:`~k8spacket.demo.netns` builds what this
describes. Every name the demo creates starts with its prefix (``kpd`` unless
``--prefix`` says otherwise, always ``kpd`` + up to two letters or digits), so a
later run can find and remove what a crashed one left, and nothing else::

    node kpd-node1 (10.214.1.1, bridge kpdbr1)      node kpd-node2 (10.214.2.1, bridge kpdbr2)
      pod kpd-web    10.214.1.2  shop/web             pod kpd-api  10.214.2.2  shop/api
      pod kpd-cache  10.214.1.3  shop/cache           pod kpd-db   10.214.2.3  data/postgres
      pod kpd-batch  10.214.1.4  batch/report (comes and goes)
                  kpdu1 10.214.0.1 ══ routed ══ kpdu2 10.214.0.2
                                                    kpdx1 10.214.0.5 ══ kpdx2 10.214.0.6
                                                    ns kpd-inet: 140.82.112.3 (an "internet" host)

Host-side pod veths are ``<prefix>v<pod>`` in the node namespaces (what an
agent on a real node sees as ``veth*``/``cali*``); the uplink (``u``) and the
link to the internet namespace (``x``) are excluded from capture, as a real
node's uplink is not a pod interface. The internet endpoint is not in the
inventory: the agent names it by GeoIP (:mod:`~k8spacket.demo.geo`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

DEFAULT_PREFIX = "kpd"
PREFIX_RE = re.compile(r"^kpd[a-z0-9]{0,2}$")
AGENT_PORT = 6676
#: first loopback port of the URLs the demo prints (node1, node2; Prometheus at +3414)
DEFAULT_BASE_PORT = 16676
PROMETHEUS_PORT = 9090
#: The internet endpoint: GitHub's 140.82.112.0/20 in GeoLite2 (AS36459 GITHUB, US).
INTERNET_IP = "140.82.112.3"
INTERNET_PORT = 443


class PrefixError(ValueError):
    """A ``--prefix`` that could clash with other tools' names."""


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise PrefixError(
            f"--prefix {prefix!r}: must be 'kpd' followed by at most two lowercase letters "
            "or digits (interface names are limited to 15 characters)"
        )
    return prefix


@dataclass(frozen=True)
class PodSpec:
    """One pod of the demo cluster."""

    short: str  # namespace and interface suffix ("web")
    namespace: str  # the Kubernetes namespace it plays
    workload: str
    name: str  # the pod name
    node: int  # 1 or 2
    ip: str
    comes_and_goes: bool = False


PODS: tuple[PodSpec, ...] = (
    PodSpec("web", "shop", "web", "web-7c9f8d-x2x4q", 1, "10.214.1.2"),
    PodSpec("cache", "shop", "cache", "cache-0", 1, "10.214.1.3"),
    PodSpec("batch", "batch", "report", "report-29114720-kd8zp", 1, "10.214.1.4", True),
    PodSpec("api", "shop", "api", "api-5b6d7f-q9w2e", 2, "10.214.2.2"),
    PodSpec("db", "data", "postgres", "postgres-0", 2, "10.214.2.3"),
)


@dataclass
class Topology:
    """Names and addresses of one demo cluster with a given prefix."""

    prefix: str = DEFAULT_PREFIX
    pods: tuple[PodSpec, ...] = PODS
    internet_ip: str = INTERNET_IP
    nodes: tuple[int, ...] = (1, 2)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    # --------------------------------------------------------------- names
    def netns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def node_netns(self, node: int) -> str:
        return self.netns(f"node{node}")

    @property
    def internet_netns(self) -> str:
        return self.netns("inet")

    def node_name(self, node: int) -> str:
        return f"{self.prefix}-node{node}"

    def bridge(self, node: int) -> str:
        return f"{self.prefix}br{node}"

    def host_if(self, pod: PodSpec) -> str:
        return f"{self.prefix}v{pod.short}"

    def uplink(self, node: int) -> str:
        return f"{self.prefix}u{node}"

    def internet_link(self, side: int) -> str:
        return f"{self.prefix}x{side}"

    @property
    def capture_exclude(self) -> str:
        """Regexp of the links that are not pod interfaces (uplink, internet link)."""
        return f"^{self.prefix}[ux][0-9]$"

    def pod(self, short: str) -> PodSpec:
        for p in self.pods:
            if p.short == short:
                return p
        raise KeyError(short)

    # ----------------------------------------------------------- addresses
    @staticmethod
    def node_ip(node: int) -> str:
        """The node's address (its bridge, the pods' gateway); the agent listens here."""
        return f"10.214.{node}.1"

    @staticmethod
    def pod_subnet(node: int) -> str:
        return f"10.214.{node}.0/24"

    UPLINK_IPS: ClassVar[dict[int, str]] = {1: "10.214.0.1", 2: "10.214.0.2"}
    #: the link to the internet namespace: node 2's side, the internet's side
    INTERNET_LINK_IPS: ClassVar[dict[int, str]] = {1: "10.214.0.5", 2: "10.214.0.6"}

    def agent_url(self, node: int) -> str:
        return f"http://{self.node_ip(node)}:{AGENT_PORT}"

    @property
    def prometheus_listen(self) -> str:
        """Prometheus runs in node 1's namespace (both agents reach it there)."""
        return f"{self.node_ip(1)}:{PROMETHEUS_PORT}"

    # ----------------------------------------------------------- inventory
    def inventory(self) -> dict[str, Any]:
        """The inventory document (``endpoints``) naming every demo address but the internet."""
        endpoints: list[dict[str, str]] = []
        for p in self.pods:
            endpoints.append(
                {
                    "cidr": f"{p.ip}/32",
                    "namespace": p.namespace,
                    "name": p.name,
                    "workload": p.workload,
                    "kind": "pod",
                }
            )
        for n in self.nodes:
            endpoints.append(
                {"cidr": f"{self.node_ip(n)}/32", "name": self.node_name(n), "kind": "node"}
            )
            endpoints.append(
                {"cidr": f"{self.UPLINK_IPS[n]}/32", "name": self.node_name(n), "kind": "node"}
            )
        endpoints.append(
            {"cidr": f"{self.INTERNET_LINK_IPS[1]}/32", "name": self.node_name(2), "kind": "node"}
        )
        return {"endpoints": endpoints}

    def workload_names(self) -> list[str]:
        return sorted({p.workload for p in self.pods})
