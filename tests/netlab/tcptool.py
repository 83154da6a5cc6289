"""TCP client and server with known byte counts, run inside lab namespaces.

Server (runs until killed; one thread per connection)::

    tcptool.py serve --port 8080 --reply 1000 [--reply-after N]

reads until EOF (or, with ``--reply-after N``, until N bytes arrived), sends
``--reply`` bytes, then reads until EOF and closes.

Client (prints one JSON object per connection, a line each)::

    tcptool.py connect HOST PORT --send 500 [--count 3] [--hold 2.5 [--chunks N]] [--rst]

sends ``--send`` bytes (spread over ``--hold`` seconds when given, in ``--chunks``
writes, default one every 0.1 s, so the connection stays open that long), then: normally shuts down its side and reads
the reply to EOF (close by FIN); with ``--rst``, reads exactly the server's reply
(``--expect`` bytes) and aborts with SO_LINGER 0 (close by RST). A refused
connection prints ``{"error": "refused", ...}``. Fields: ``local_port``,
``sent``, ``received``, ``error``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time


def serve(port: int, reply: int, reply_after: int | None) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_handle, args=(conn, reply, reply_after), daemon=True).start()


def _handle(conn: socket.socket, reply: int, reply_after: int | None) -> None:
    with conn:
        try:
            got = 0
            while reply_after is None or got < reply_after:
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
            conn.sendall(b"r" * reply)
            while conn.recv(65536):
                pass
        except OSError:
            pass


def connect(
    host: str, port: int, send: int, hold: float, rst: bool, expect: int, chunks: int = 0
) -> dict[str, object]:
    out: dict[str, object] = {"local_port": None, "sent": 0, "received": 0, "error": None}
    try:
        s = socket.create_connection((host, port), timeout=10)
    except ConnectionRefusedError:
        out["error"] = "refused"
        return out
    with s:
        out["local_port"] = s.getsockname()[1]
        chunks = chunks or (max(1, int(hold * 10)) if hold else 1)
        sizes = [send // chunks] * chunks
        sizes[-1] += send - sum(sizes)
        for i, n in enumerate(sizes):
            s.sendall(b"s" * n)
            out["sent"] = int(out["sent"]) + n  # type: ignore[call-overload]
            if hold and i < chunks - 1:
                time.sleep(hold / chunks)
        received = 0
        if rst:
            while received < expect:
                data = s.recv(65536)
                if not data:
                    break
                received += len(data)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            s.shutdown(socket.SHUT_WR)
            while data := s.recv(65536):
                received += len(data)
        out["received"] = received
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--reply", type=int, default=0)
    sp.add_argument("--reply-after", type=int)
    cp = sub.add_parser("connect")
    cp.add_argument("host")
    cp.add_argument("port", type=int)
    cp.add_argument("--send", type=int, default=0)
    cp.add_argument("--count", type=int, default=1)
    cp.add_argument("--hold", type=float, default=0.0)
    cp.add_argument("--rst", action="store_true")
    cp.add_argument("--expect", type=int, default=0)
    cp.add_argument("--chunks", type=int, default=0)  # default: one every 0.1 s of --hold
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a.port, a.reply, a.reply_after)
        return 0
    for _ in range(a.count):
        print(
            json.dumps(connect(a.host, a.port, a.send, a.hold, a.rst, a.expect, a.chunks)),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
