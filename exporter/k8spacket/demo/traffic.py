"""Carries out the traffic plan with threads inside the pods' network namespaces.

A server is one thread per listening port in the server pod's namespace
(:func:`~k8spacket.demo.netns.join_netns`), plus a short-lived thread per
accepted connection. A flow is one thread in the client pod's namespace. The
protocol is HTTP-like: the client sends a request with an ``X-Reply: N``
header, the server answers with ``N`` bytes; ``X-Abort: 1`` makes the server
abort the connection (``SO_LINGER`` 0: an RST); ``Connection: keep-alive``
keeps it open for the next request (the ``long`` flow).

Every outcome is counted per flow in :class:`FlowStats` (what the generator
did, for the summary, next to what the agents saw). A thread that fails
unexpectedly is logged and counted in ``TrafficRunner.thread_errors``; it never
dies silently. Everything stops within about a second of ``stop``.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from k8spacket.demo.netns import join_netns
from k8spacket.demo.plan import INTERNET, Flow
from k8spacket.demo.topology import Topology

log = logging.getLogger(__name__)

IO_TIMEOUT = 3.0
MAX_HEADER = 8192


class TrafficError(RuntimeError):
    """A server of the plan could not start (one line)."""


@dataclass
class FlowStats:
    attempts: int = 0
    ok: int = 0
    refused: int = 0
    reset: int = 0
    errors: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass
class _Flow:
    flow: Flow
    stats: FlowStats = field(default_factory=FlowStats)


def _read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    """Bytes up to and including the blank line (``None`` on EOF before one)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            return head
        if len(buf) > MAX_HEADER:
            raise ValueError("header too long")
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf += chunk


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


def _abort(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class TrafficRunner:
    """Servers and flows of a plan, on threads that joined the pods' namespaces."""

    def __init__(self, topo: Topology, flows: tuple[Flow, ...], *, seed: int | None = None) -> None:
        self.topo = topo
        self.flows = [_Flow(f) for f in flows]
        self.stop_event = threading.Event()
        self._short_paused = threading.Event()  # no new short connection (see pause_short)
        self.thread_errors = 0
        self._rng = random.Random(seed)
        self._threads: list[threading.Thread] = []
        self._pod_stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- threads
    def _spawn(self, name: str, netns: str, target: Callable[[], None]) -> threading.Thread:
        def main() -> None:
            try:
                join_netns(netns)
                target()
            except Exception:
                with self._lock:
                    self.thread_errors += 1
                log.exception("demo traffic thread %s failed", name)

        t = threading.Thread(target=main, name=f"demo-{name}", daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _address(self, pod: str) -> str:
        return self.topo.internet_ip if pod == INTERNET else self.topo.pod(pod).ip

    def _netns(self, pod: str) -> str:
        return self.topo.internet_netns if pod == INTERNET else self.topo.netns(pod)

    # -------------------------------------------------------------- servers
    def start_servers(self, listeners: list[tuple[str, int]], timeout: float = 5.0) -> None:
        """Listen on every (pod, port); returns when all are listening."""
        ready: list[threading.Event] = []
        for pod, port in listeners:
            ev = threading.Event()
            ready.append(ev)
            self._spawn(f"serve-{pod}-{port}", self._netns(pod), partial(self._serve, port, ev))
        deadline = time.monotonic() + timeout
        for ev in ready:
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise TrafficError("a demo server did not start listening (see the log above)")

    def _serve(self, port: int, ready: threading.Event) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("0.0.0.0", port))
            srv.listen(128)
            srv.settimeout(0.2)
            ready.set()
            while not self.stop_event.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        buf = bytearray()
        try:
            while not self.stop_event.is_set():
                head = _read_head(conn, buf)
                if head is None:
                    break
                if _header(head, b"x-abort") == b"1":
                    _abort(conn)
                    return
                n = int(_header(head, b"x-reply") or b"0")
                keep = _header(head, b"connection").lower() == b"keep-alive"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
                if not keep:
                    break
        except (OSError, ValueError):
            pass  # the client went away or sent nonsense: the server just closes
        conn.close()

    # ---------------------------------------------------------------- flows
    def start_flows(
        self, client: str | None = None, stop: threading.Event | None = None
    ) -> list[threading.Thread]:
        """Start the flows of ``client`` (all pods but those that come and go, if ``None``)."""
        started = []
        for f in self.flows:
            pod = self.topo.pod(f.flow.client)
            if (client is None and not pod.comes_and_goes) or f.flow.client == client:
                started.append(
                    self._spawn(
                        f"flow-{f.flow.client}-{f.flow.server}-{f.flow.port}-{f.flow.kind}",
                        self._netns(f.flow.client),
                        partial(self._run_flow, f, stop),
                    )
                )
        return started

    def _stopped(self, stop: threading.Event | None) -> bool:
        return self.stop_event.is_set() or (stop is not None and stop.is_set())

    def _wait(self, seconds: float, stop: threading.Event | None) -> bool:
        """Sleep ``seconds`` unless stopped first; True when it is time to stop."""
        deadline = time.monotonic() + seconds
        while not self._stopped(stop):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop_event.wait(min(left, 0.1))
        return True

    def _run_flow(self, f: _Flow, stop: threading.Event | None) -> None:
        flow = f.flow
        if self._wait(flow.start, stop):
            return
        if flow.kind == "long":
            self._long(f, stop)
            return
        while True:
            for _ in range(flow.count):
                if self._short_paused.is_set():
                    return
                self._once(f)
                if self._stopped(stop):
                    return
            jitter = self._rng.uniform(0.8, 1.2)
            if self._wait(flow.period * jitter, stop):
                return

    def _request(self, f: _Flow, keep: bool = False, abort: bool = False) -> bytes:
        n = self._rng.randint(*f.flow.reply)
        req = (
            f"GET /demo/{f.flow.kind} HTTP/1.1\r\nHost: {f.flow.server}\r\nX-Reply: {n}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n"
            + ("X-Abort: 1\r\n" if abort else "")
            + "\r\n"
        )
        return req.encode()

    def _exchange(self, f: _Flow, conn: socket.socket, req: bytes, buf: bytearray) -> bool:
        """Send one request and read its reply; False on EOF before a reply."""
        conn.sendall(req)
        f.stats.bytes_sent += len(req)
        head = _read_head(conn, buf)
        if head is None:
            return False
        want = int(_header(head, b"content-length") or b"0")
        got = len(buf)
        while got < want:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        del buf[:want]
        f.stats.bytes_received += len(head) + got
        return got >= want

    def _once(self, f: _Flow) -> None:
        st = f.stats
        st.attempts += 1
        address = (self._address(f.flow.server), f.flow.port)
        try:
            with socket.create_connection(address, timeout=IO_TIMEOUT) as conn:
                buf = bytearray()
                done = self._exchange(f, conn, self._request(f, abort=f.flow.kind == "reset"), buf)
                if done and f.flow.kind != "reset":
                    st.ok += 1
                elif f.flow.kind == "reset":
                    st.reset += 1  # EOF by RST (read returned nothing)
                else:
                    st.errors += 1
        except ConnectionRefusedError:
            st.refused += 1
        except ConnectionResetError:
            st.reset += 1
        except OSError as e:
            st.errors += 1
            st.last_error = f"{type(e).__name__}: {e}"

    def _long(self, f: _Flow, stop: threading.Event | None) -> None:
        st = f.stats
        address = (self._address(f.flow.server), f.flow.port)
        while not self._stopped(stop):
            st.attempts += 1
            try:
                with socket.create_connection(address, timeout=IO_TIMEOUT) as conn:
                    buf = bytearray()
                    while not self._stopped(stop):
                        if not self._exchange(f, conn, self._request(f, keep=True), buf):
                            st.errors += 1
                            break
                        if self._wait(f.flow.period, stop):
                            break
                    st.ok += 1
            except OSError as e:
                st.errors += 1
                st.last_error = f"{type(e).__name__}: {e}"
                if self._wait(1.0, stop):
                    return

    # ------------------------------------------------------------ lifecycle
    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "client": f.flow.client,
                "server": f.flow.server,
                "port": f.flow.port,
                "kind": f.flow.kind,
                "what": f.flow.what,
                **f.stats.as_dict(),
            }
            for f in self.flows
        ]

    def alive(self) -> bool:
        return self.thread_errors == 0

    def pause_short(self) -> None:
        """Open no new short connection from now on; long-lived ones go on (a quiet moment)."""
        self._short_paused.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
