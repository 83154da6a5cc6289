"""kmock, the Kubernetes API emulator, for tests: a cluster the real client talks to.

:class:`FakeCluster` runs kmock (aiohttp) in a thread with its own event loop,
behind a TCP proxy on 127.0.0.1 that a test can close (API unreachable), reopen
and use to sever open connections (a watch dropped mid-stream). Objects are
created, patched and deleted over HTTP, as kubectl would, so every change reaches
a watching client as a real watch event. The factories (:func:`pod`,
:func:`service`, :func:`node`, :func:`owned`) build the API objects,
:func:`record` an unnamed connection record to name, :func:`kubeconfig` a
kubeconfig file pointing at a cluster's URL. The ``cluster`` fixture (conftest)
yields a :class:`FakeCluster` and shuts it down.

kmock's limits (FACTS.md): it ignores ``timeoutSeconds``, treats
``resourceVersion`` as opaque and replays every object as ``ADDED`` when a watch
starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from k8spacket.enrich.k8s import Backoff
from k8spacket.flows.record import ConnectionRecord

try:
    import kmock
except ImportError:  # a test dependency: skipped locally, a failure in CI
    kmock = None

API_PATHS = {
    "pods": "/api/v1/namespaces/{ns}/pods",
    "services": "/api/v1/namespaces/{ns}/services",
    "nodes": "/api/v1/nodes",
    "replicasets": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
}
KMOCK_RESOURCES = ("v1/pods", "v1/services", "v1/nodes", "apps/v1/replicasets", "batch/v1/jobs")


# ------------------------------------------------------------------ harness
class FakeCluster:
    """kmock in a background event loop, reachable through a breakable TCP proxy."""

    def __init__(self) -> None:
        require(kmock is not None, "kmock is not installed (pip install -e '.[test]')")
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._listener: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        with socket.socket() as s:  # a free port for the proxy, stable across reopenings
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        if self._failure is not None:
            raise self._failure

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the test thread, never lost
            self._failure = e
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for resource in KMOCK_RESOURCES:
                emulator.resources[resource] = kmock.ResourceInfo()
            self.kmock = emulator
            self.direct_url = str(server.url).rstrip("/")
            self._upstream = (server.host, server.port)
            await self._open()
            self._ready.set()
            await self._done.wait()
            await self._close(sever=True)

    # proxy ----------------------------------------------------------------
    async def _open(self) -> None:
        if self._listener is None:
            self._listener = await asyncio.start_server(
                self._pipe, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self, sever: bool) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        if sever:
            await self._sever()

    async def _sever(self) -> None:
        for w in list(self._pipes):
            w.transport.abort()  # RST, like a dropped connection
        self._pipes.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._pipes.update((writer, up_writer))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._pipes.discard(writer)
        self._pipes.discard(up_writer)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def unreachable(self) -> None:
        """Stop accepting connections and cut the open ones."""
        self._run(self._close(sever=True))

    def reachable(self) -> None:
        self._run(self._open())

    def drop_connections(self) -> None:
        """Cut every open connection (watches die mid-stream); new ones are accepted."""
        self._run(self._sever())

    def react(self, install: Callable[[Any], None]) -> None:
        """Add kmock reactions (from inside its loop: the DSL is not thread-safe)."""

        async def run() -> None:
            install(self.kmock)

        self._run(run())

    def requests(self, action: Any, resource: str) -> int:
        async def count() -> int:
            return len(self.kmock[action, kmock.resource(resource)])

        return int(self._run(count()))

    def shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self._done.set)
        self._thread.join(10)

    # kubectl ------------------------------------------------------------------
    def _http(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.direct_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def create(self, resource: str, obj: dict[str, Any]) -> None:
        ns = obj["metadata"].get("namespace", "")
        self._http("POST", API_PATHS[resource].format(ns=ns), obj)

    def patch(self, resource: str, ns: str, name: str, change: dict[str, Any]) -> None:
        self._http("PATCH", API_PATHS[resource].format(ns=ns) + "/" + name, change)

    def delete(self, resource: str, ns: str, name: str) -> None:
        self._http("DELETE", API_PATHS[resource].format(ns=ns) + "/" + name)


# ---------------------------------------------------------------- factories
def pod(
    name: str,
    ips: tuple[str, ...] = (),
    ns: str = "shop",
    owner: tuple[str, str] | None = None,
    host_network: bool = False,
    node: str = "node-a",
    ports: tuple[int, ...] = (),
    host_ports: tuple[int, ...] = (),
    phase: str = "Running",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": owner[0], "name": owner[1], "controller": True}
        ]
    container_ports = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    container_ports += [{"containerPort": 1, "hostPort": p} for p in host_ports]
    status: dict[str, Any] = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [{"name": "main", "image": "x", "ports": container_ports}],
        },
        "status": status,
    }


def service(name: str, ips: tuple[str, ...], ns: str = "shop") -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": ips[0] if ips else "None", "clusterIPs": list(ips)}
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def node(name: str, internal: tuple[str, ...], external: tuple[str, ...] = ()) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": a} for a in internal]
    addresses += [{"type": "ExternalIP", "address": a} for a in external]
    addresses.append({"type": "Hostname", "address": name})
    return {"kind": "Node", "metadata": {"name": name}, "status": {"addresses": addresses}}


def owned(kind: str, name: str, owner: tuple[str, str] | None, ns: str = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"kind": kind, "metadata": meta}


def record(
    src: str, dst: str, dst_port: int = 80, *, bytes_sent: int = 0, bytes_received: int = 0
) -> ConnectionRecord:
    """An unnamed, closed connection record from ``src`` to ``dst`` (names come from lookups)."""
    return ConnectionRecord(
        src=src,
        src_port=40000,
        dst=dst,
        dst_port=dst_port,
        bytes_sent=bytes_sent,
        bytes_received=bytes_received,
        handshake_seconds=None,
        duration_seconds=0.0,
        outcome="established",
        close="fin",
        start=0.0,
        end=0.0,
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll until ``cond`` holds; a deadline to fail on, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.02)


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, maximum=0.3, rand=lambda: 1.0)


def kubeconfig(path: Path, url: str) -> Path:
    """Write a kubeconfig at ``path`` whose one context talks to ``url``, unauthenticated."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        f"clusters: [{{name: lab, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: lab, user: {}}]\n"
        "contexts: [{name: lab, context: {cluster: lab, user: lab}}]\n"
    )
    return path
