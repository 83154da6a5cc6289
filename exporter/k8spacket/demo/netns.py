"""Build and remove the demo cluster out of network namespaces (the ``ip`` command).

:class:`DemoNetwork` creates what a :class:`~k8spacket.demo.topology.Topology`
describes: one namespace per node (a bridge holding the node address, IP
forwarding on), one per pod (``eth0``, a veth whose other end is in the node's
bridge), a routed veth between the nodes, and an "internet" namespace behind
node 2 holding a public address. Nothing is created in the namespace this
process runs in, so no route or link of the machine changes and no demo packet
can leave the demo's namespaces.

:func:`remove_leftovers` finds namespaces named ``<prefix>-*`` (and, should one
ever exist, links named ``<prefix>…`` in this namespace), kills the processes
still inside them (``ip netns pids``) and deletes them. It runs before a demo
builds and when it ends, so a crashed run is cleaned up by the next one; names
of other prefixes are never touched.

:func:`join_netns` moves the calling thread (only it) into a namespace: the
demo's traffic, its forwarders and its checks use threads that joined a pod's or
node's namespace, so no process is needed per pod.

Limits: needs root, ``ip`` (iproute2) and ``sysctl``; IPv4 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from k8spacket.demo.topology import PODS, PodSpec, Topology

CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """An ``ip`` command failed (the message has the command and its stderr)."""


def join_netns(netns: str) -> None:
    """Move the calling thread into network namespace ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_unavailable() -> str | None:
    """Why the demo cannot build namespaces here (one line), or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the demo builds network namespaces and needs root"
    for tool in ("ip", "sysctl"):
        if shutil.which(tool) is None:
            return f"the demo needs the {tool!r} command (Debian: apt-get install iproute2 procps)"
    probe = f"kpdprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"network namespaces are not available here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _run(argv: Sequence[str], check: bool = True) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise NetnsError(f"{shlex.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def demo_namespaces(prefix: str) -> list[str]:
    """Namespaces named ``<prefix>-…`` (exactly this prefix, not a longer one)."""
    out = _run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def demo_links(prefix: str, pods: Sequence[str] = ()) -> list[str]:
    """Links of this namespace named like demo links (``<prefix>br1``, ``<prefix>vweb`` …)."""
    shorts = "|".join(re.escape(p) for p in pods) or "[a-z]+"
    pattern = re.compile(rf"^{re.escape(prefix)}(br[0-9]|v(?:{shorts})|[ux][0-9])$")
    out = _run(["ip", "-o", "link", "show"], check=False)
    found = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if pattern.match(name):
            found.add(name)
    return sorted(found)


def netns_pids(netns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remove_leftovers(prefix: str) -> list[str]:
    """Delete every namespace and link of ``prefix`` (and kill what runs inside); what went."""
    removed: list[str] = []
    spaces = demo_namespaces(prefix)
    pids = [pid for ns in spaces for pid in netns_pids(ns) if pid != os.getpid()]
    if pids:
        kill_pids(pids)
        removed += [f"process {p}" for p in pids]
    for ns in spaces:
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(f"namespace {ns}")
    for link in demo_links(prefix, [p.short for p in PODS]):
        _run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    return removed


class DemoNetwork:
    """Creates the namespaces, links, addresses and routes of a :class:`Topology`."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo

    def ip(self, netns: str, *args: str) -> None:
        _run(["ip", "-n", netns, *args])

    def _add_netns(self, netns: str) -> None:
        _run(["ip", "netns", "add", netns])
        self.ip(netns, "link", "set", "lo", "up")

    def build(self) -> None:
        t = self.topo
        for n in t.nodes:
            ns = t.node_netns(n)
            self._add_netns(ns)
            self.ip(ns, "link", "add", t.bridge(n), "type", "bridge")
            self.ip(ns, "addr", "add", f"{t.node_ip(n)}/24", "dev", t.bridge(n))
            self.ip(ns, "link", "set", t.bridge(n), "up")
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        n1, n2 = t.node_netns(1), t.node_netns(2)
        # the routed uplink between the nodes
        self.ip(n1, "link", "add", t.uplink(1), "type", "veth", "peer", "name", t.uplink(2),
                "netns", n2)  # fmt: skip
        self.ip(n1, "addr", "add", f"{t.UPLINK_IPS[1]}/30", "dev", t.uplink(1))
        self.ip(n2, "addr", "add", f"{t.UPLINK_IPS[2]}/30", "dev", t.uplink(2))
        self.ip(n1, "link", "set", t.uplink(1), "up")
        self.ip(n2, "link", "set", t.uplink(2), "up")
        self.ip(n1, "route", "add", t.pod_subnet(2), "via", t.UPLINK_IPS[2])
        self.ip(n2, "route", "add", t.pod_subnet(1), "via", t.UPLINK_IPS[1])
        # the internet, behind node 2
        inet = t.internet_netns
        self._add_netns(inet)
        self.ip(n2, "link", "add", t.internet_link(1), "type", "veth", "peer", "name", "eth0",
                "netns", inet)  # fmt: skip
        self.ip(n2, "addr", "add", f"{t.INTERNET_LINK_IPS[1]}/30", "dev", t.internet_link(1))
        self.ip(n2, "link", "set", t.internet_link(1), "up")
        self.ip(inet, "addr", "add", f"{t.INTERNET_LINK_IPS[2]}/30", "dev", "eth0")
        self.ip(inet, "addr", "add", f"{t.internet_ip}/32", "dev", "eth0")
        self.ip(inet, "link", "set", "eth0", "up")
        self.ip(inet, "route", "add", "default", "via", t.INTERNET_LINK_IPS[1],
                "src", t.internet_ip)  # fmt: skip
        self.ip(n2, "route", "add", f"{t.internet_ip}/32", "via", t.INTERNET_LINK_IPS[2])
        self.ip(n1, "route", "add", f"{t.internet_ip}/32", "via", t.UPLINK_IPS[2])
        self.ip(n1, "route", "add", f"{t.INTERNET_LINK_IPS[2]}/32", "via", t.UPLINK_IPS[2])
        for pod in t.pods:
            if not pod.comes_and_goes:
                self.add_pod(pod)

    def add_pod(self, pod: PodSpec) -> None:
        t = self.topo
        node_ns, ns, host_if = t.node_netns(pod.node), t.netns(pod.short), t.host_if(pod)
        self._add_netns(ns)
        self.ip(node_ns, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
        self.ip(node_ns, "link", "set", host_if, "master", t.bridge(pod.node))
        self.ip(node_ns, "link", "set", host_if, "up")
        self.ip(ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        self.ip(ns, "link", "set", "eth0", "up")
        self.ip(ns, "route", "add", "default", "via", t.node_ip(pod.node))

    def remove_pod(self, pod: PodSpec) -> None:
        """Delete a pod's namespace (its veth goes with it); kill what runs inside."""
        ns = self.topo.netns(pod.short)
        kill_pids(netns_pids(ns))
        _run(["ip", "netns", "del", ns], check=False)

    def teardown(self) -> list[str]:
        return remove_leftovers(self.topo.prefix)
