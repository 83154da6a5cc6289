"""Loopback ports on this machine that lead into the demo's namespaces.

The agents and Prometheus listen on node addresses inside the demo's node
namespaces, which this machine has no route to (by design: nothing of the demo
is routed out). A :class:`Forwarder` listens on ``127.0.0.1:PORT`` here and, for
each connection, opens one to the target from a thread that joined the target's
namespace, then copies bytes both ways. So a browser, ``curl`` or a Prometheus
query on this machine reaches the demo, and nothing else does.

Limits: one thread per forwarded connection (the demo's few HTTP clients);
idle forwarded connections end after ``idle`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading

from k8spacket.demo.netns import join_netns

log = logging.getLogger(__name__)


def bind_loopback(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port``, or on a free port when that is taken."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.1", port))
    except OSError:
        srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv


class Forwarder:
    """``127.0.0.1:port`` here → ``host:port`` inside network namespace ``netns``."""

    def __init__(self, port: int, netns: str, target: tuple[str, int], idle: float = 60) -> None:
        self.netns = netns
        self.target = target
        self.idle = idle
        self._srv = bind_loopback(port)
        self._srv.settimeout(0.2)
        self.port = int(self._srv.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{self.port}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()
        self._srv.close()

    def _pipe(self, client: socket.socket) -> None:
        try:
            join_netns(self.netns)
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError as e:
            self.errors += 1
            log.debug("forward %s → %s: %s", self.port, self.target, e)
            client.close()
            return
        sel = selectors.DefaultSelector()
        pair = {client: upstream, upstream: client}
        for s in pair:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        open_ends = 2
        try:
            while open_ends and not self._stop.is_set():
                events = sel.select(self.idle)
                if not events:
                    break
                for key, _ in events:
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        sel.unregister(src)
                        with contextlib.suppress(OSError):
                            pair[src].shutdown(socket.SHUT_WR)
                        open_ends -= 1
                        continue
                    dst = pair[src]
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)
        except OSError:
            pass  # a side went away
        finally:
            sel.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
