"""A CNI-like Kubernetes node built from network namespaces, for tests and benchmarks.

The lab needs root and the ``ip`` command. Everything it creates carries a
unique prefix (``kp`` + 4 random hex digits unless one is given): namespaces are
``<prefix>-<name>``, interfaces ``<prefix><short>``. Nothing outside the lab's
own namespaces is touched, and traffic never leaves them.

Layout (what a bridge CNI such as kubenet or flannel builds on a node)::

    pod ns <prefix>-a        node ns <prefix>-n1                      node ns <prefix>-n2
    eth0 10.213.1.2/24 ──veth── <prefix>va ─┐                          ┌─ <prefix>vc ── eth0 (pod c)
    eth0 10.213.1.3/24 ──veth── <prefix>vb ─┤ bridge <prefix>br1       │  bridge <prefix>br2
                                             10.213.1.1/24 ... <prefix>u1 ═══ <prefix>u2 ... 10.213.2.1/24
                                                          (routed uplink 10.213.0.0/30)

The host-side veths (``<prefix>v<pod>``) live in the node namespace, so an
agent run there (``lab.node_argv(...)``) sees them exactly as it would see
``veth*``/``cali*`` links on a real node: links whose peer is in another
namespace. The uplink between nodes is a veth pair too; exclude it from capture
(``lab.uplink_regex``), as a real node's uplink is not a pod interface.

Usage::

    with NetLab() as lab:
        a = lab.add_pod("a", "10.213.1.2/24")            # on node "n1"
        b = lab.add_pod("b", "10.213.1.3/24")
        c = lab.add_pod("c", "10.213.2.2/24", node="n2")  # creates n2 and the uplink
        srv = lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "1000"))
        lab.wait_listening(b, 8080)
        res = lab.run_in(a, tcptool_argv("connect", "10.213.1.3", "8080", "--send", "500"))

``popen_in`` processes are killed at exit; the namespaces (and with them every
interface) are deleted in ``close()`` even when the test failed. Addresses:
IPv4 10.213.0.0/16 and IPv6 fd42:213::/32 by convention (unlikely to collide;
the lab does not check). An IPv6 pod address gets ``nodad`` so it is usable at
once. Limits: no NAT, no Services, no kube-proxy; one bridge per node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

TCPTOOL = str(Path(__file__).with_name("tcptool.py"))


def tcptool_argv(*args: str) -> list[str]:
    """argv that runs the lab's TCP client/server tool (see ``tcptool.py``)."""
    return [sys.executable, TCPTOOL, *args]


def random_prefix() -> str:
    return "kp" + secrets.token_hex(2)


class LabError(RuntimeError):
    """A lab command failed (the message has the command and its stderr)."""


@dataclass
class Node:
    name: str
    netns: str
    bridge: str
    index: int
    gateways: dict[str, str] = field(default_factory=dict)  # subnet → gateway address
    uplink: str | None = None


@dataclass
class Pod:
    name: str
    netns: str
    node: Node
    host_if: str  # host-side veth (in the node namespace)
    addresses: list[str]  # without prefix length

    @property
    def ip(self) -> str:
        return self.addresses[0]


class NetLab:
    """Builds and tears down a namespace-based mini cluster (see the module docstring)."""

    def __init__(self, prefix: str | None = None, first_node: str = "n1") -> None:
        self.prefix = prefix or random_prefix()
        if len(self.prefix) > 7:
            raise ValueError("prefix must be at most 7 characters (interface names <= 15)")
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._first_node = first_node
        self._closed = False
        self._sigterm_installed = False  # see _catch_sigterm

    # ----------------------------------------------------------- lifecycle
    def __enter__(self) -> NetLab:
        self._catch_sigterm()
        try:
            self.add_node(self._first_node)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _catch_sigterm(self) -> None:
        """A SIGTERM (``timeout``, ``kill``) ends the program through ``close``.

        Python's default for SIGTERM is to die at once, leaving the namespaces
        behind. Only from the main thread, and only when nothing else handles
        the signal; :meth:`close` puts the default back.
        """
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):

            def terminate(signum: int, frame: object) -> None:
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, terminate)
            self._sigterm_installed = True

    def close(self) -> None:
        """Kill lab processes, delete every namespace this lab created."""
        if self._closed:
            return
        self._closed = True
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for ns in reversed(self._namespaces):
            # pids left in the namespace (e.g. children of killed processes)
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    import os

                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    # ------------------------------------------------------------ building
    def ip(self, *args: str, netns: str | None = None) -> str:
        """Run ``ip [-n netns] args…``; raise :class:`LabError` on failure."""
        argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
        return self._run(argv)

    def _run(self, argv: Sequence[str]) -> str:
        r = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise LabError(f"{shlex.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        self._run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self.ip("link", "set", "lo", "up", netns=ns)
        return ns

    def add_netns(self, name: str) -> str:
        """A bare namespace ``<prefix>-<name>`` (only ``lo``), deleted with the lab."""
        return self._netns(name)

    def remove_netns(self, netns: str) -> None:
        """Delete a namespace made by :meth:`add_netns` (and every link end inside it)."""
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        with contextlib.suppress(ValueError):
            self._namespaces.remove(netns)

    def add_node(self, name: str) -> Node:
        """A node namespace with a bridge; the second and later nodes get a routed uplink."""
        if name in self.nodes:
            return self.nodes[name]
        index = len(self.nodes) + 1
        ns = self._netns(name)
        br = f"{self.prefix}br{index}"
        self.ip("link", "add", br, "type", "bridge", netns=ns)
        self.ip("link", "set", br, "up", netns=ns)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self._run(["ip", "netns", "exec", ns, "sysctl", "-qw", key])
        node = Node(name, ns, br, index)
        self.nodes[name] = node
        if index > 1:
            self._link_nodes(next(iter(self.nodes.values())), node)
        return node

    def _link_nodes(self, first: Node, other: Node) -> None:
        """A routed /30 between the first node and ``other``, routes for pod subnets."""
        a = f"{self.prefix}u{other.index}a"
        b = f"{self.prefix}u{other.index}b"
        self.ip("link", "add", a, "type", "veth", "peer", "name", b, "netns", other.netns,
                netns=first.netns)  # fmt: skip
        base = 4 * (other.index - 1)
        self.ip("addr", "add", f"10.213.0.{base + 1}/30", "dev", a, netns=first.netns)
        self.ip("addr", "add", f"10.213.0.{base + 2}/30", "dev", b, netns=other.netns)
        self.ip("link", "set", a, "up", netns=first.netns)
        self.ip("link", "set", b, "up", netns=other.netns)
        first.uplink, other.uplink = a, b
        self._uplink_peers = getattr(self, "_uplink_peers", {})
        self._uplink_peers[other.name] = (f"10.213.0.{base + 1}", f"10.213.0.{base + 2}")
        self._sync_routes()

    @property
    def uplink_regex(self) -> str:
        """A regexp matching every uplink of this lab (to exclude from capture)."""
        return f"^{self.prefix}u[0-9]+[ab]$"

    def _sync_routes(self) -> None:
        """Every node routes every other node's pod subnets over its uplink."""
        first = next(iter(self.nodes.values()))
        peers = getattr(self, "_uplink_peers", {})
        for node in self.nodes.values():
            for other in self.nodes.values():
                if other is node:
                    continue
                for subnet in other.gateways:
                    if node is first:
                        via = peers[other.name][1]
                    elif other is first:
                        via = peers[node.name][0]
                    else:  # node → first → other
                        via = peers[node.name][0]
                    fam = "-6" if ":" in subnet else "-4"
                    if fam == "-6":
                        continue  # IPv6 stays node-local in the lab
                    self.ip(fam, "route", "replace", subnet, "via", via, netns=node.netns)

    def add_pod(self, name: str, *addresses: str, node: str | None = None, up: bool = True) -> Pod:
        """A pod namespace whose ``eth0`` is a veth into the node's bridge.

        ``addresses`` are interface addresses with prefix length ("10.213.1.2/24",
        "fd42:213:1::2/64"); the node's bridge gets the first host address of each
        new subnet as the pod's gateway.
        """
        if name in self.pods:
            raise ValueError(f"pod {name!r} exists")
        n = self.add_node(node or self._first_node)
        ns = self._netns(name)
        host_if = f"{self.prefix}v{name}"
        if len(host_if) > 15:
            raise ValueError(f"pod name {name!r} too long for an interface name")
        self.ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
                netns=n.netns)  # fmt: skip
        self.ip("link", "set", host_if, "master", n.bridge, netns=n.netns)
        if up:
            self.ip("link", "set", host_if, "up", netns=n.netns)
        self.ip("link", "set", "eth0", "up", netns=ns)
        plain: list[str] = []
        new_subnet = False
        for addr in addresses:
            iface = ipaddress.ip_interface(addr)
            subnet = str(iface.network)
            v6 = iface.version == 6
            extra = ["nodad"] if v6 else []
            self.ip("addr", "add", addr, "dev", "eth0", *extra, netns=ns)
            if subnet not in n.gateways:
                gw = str(next(iface.network.hosts()))
                self.ip("addr", "add", f"{gw}/{iface.network.prefixlen}", "dev", n.bridge,
                        *extra, netns=n.netns)  # fmt: skip
                n.gateways[subnet] = gw
                new_subnet = True
            self.ip("-6" if v6 else "-4", "route", "add", "default", "via", n.gateways[subnet],
                    netns=ns)  # fmt: skip
            plain.append(str(iface.ip))
        pod = Pod(name, ns, n, host_if, plain)
        self.pods[name] = pod
        if new_subnet and len(self.nodes) > 1:
            self._sync_routes()
        return pod

    def remove_pod(self, pod: Pod | str) -> None:
        """Delete a pod: its namespace goes, and with it both ends of its veth."""
        p = self.pods.pop(pod if isinstance(pod, str) else pod.name)
        subprocess.run(["ip", "netns", "del", p.netns], capture_output=True, check=False)
        with contextlib.suppress(ValueError):
            self._namespaces.remove(p.netns)

    # ------------------------------------------------------------- running
    @staticmethod
    def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv]

    def node_argv(self, argv: Sequence[str], node: str | None = None) -> list[str]:
        """argv that runs ``argv`` in a node namespace (where an agent runs)."""
        return self.exec_argv(self.nodes[node or self._first_node].netns, argv)

    def run_in(
        self, where: Pod | Node, argv: Sequence[str], timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a pod or node namespace."""
        full = self.exec_argv(where.netns, argv)
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise LabError(f"{shlex.join(full)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def popen_in(
        self, where: Pod | Node, argv: Sequence[str], **kw: object
    ) -> subprocess.Popen[bytes]:
        """Start a background process in a namespace; killed when the lab closes.

        Output goes to /dev/null unless ``stdout``/``stderr`` are given (pipes
        are closed by the lab).
        """
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.exec_argv(where.netns, argv), **kw)  # type: ignore[call-overload]
        self._procs.append(p)
        return p  # type: ignore[no-any-return]

    def wait_listening(self, pod: Pod, port: int, timeout: float = 10) -> None:
        """Wait until something listens on TCP ``port`` inside ``pod`` (checked with ss)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run_in(pod, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listens on {pod.name}:{port} after {timeout}s")
