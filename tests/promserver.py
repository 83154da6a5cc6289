"""A real Prometheus server for tests, optionally inside a lab network namespace.

:class:`PrometheusServer` runs the Debian ``prometheus`` binary scraping one
target every second and answers PromQL through its HTTP API. With ``netns`` the
server runs inside that namespace (``ip netns exec``), listening on the
namespace's own 127.0.0.1, and the API is read from a helper thread that joined
the namespace (:class:`NetnsCaller`): sockets belong to the namespace of the
thread that creates them, so nothing is exposed outside the lab.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from k8spacket.demo.netns import join_netns

#: Failsafe for waiting on Prometheus (not a timing assertion).
WAIT = 60.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NetnsCaller:
    """Runs callables on one thread that lives in ``netns`` (or here, with ``None``)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            initializer=join_netns if netns else None,
            initargs=(netns,) if netns else (),
        )

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def get(self, url: str, timeout: float = 10) -> tuple[int, bytes]:
        """(status, body) of a GET; an HTTP error status is returned, not raised."""

        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as answer:
                    return int(answer.status), answer.read()
            except urllib.error.HTTPError as e:
                return int(e.code), e.read()

        return self(fetch)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class PrometheusServer:
    """A Prometheus process on 127.0.0.1 scraping its target(s) every second."""

    def __init__(
        self,
        binary: str,
        target: str | list[str],
        workdir: Path,
        netns: str | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        """``listen_host``: where it listens (``0.0.0.0`` to be reached from other nodes)."""
        config = workdir / "prometheus.yml"
        targets = ", ".join(f"'{t}'" for t in ([target] if isinstance(target, str) else target))
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: k8spacket\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        # a fresh lab namespace has every port free
        self.url = f"http://127.0.0.1:{9090 if netns else free_port()}"
        self.caller = NetnsCaller(netns)
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={listen_host}:{self.url.rsplit(':', 1)[1]}",
        ]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]  # ip execs: same pid
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.workdir = workdir

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, raw = self.caller.get(url)
        body = json.loads(raw)
        assert status == 200 and body["status"] == "success", body
        return body["data"]

    def wait_until(self, what: str, check: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()}")
            try:
                got = check()
            except (OSError, json.JSONDecodeError):
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting for {what}")
            time.sleep(0.2)

    def wait_target_up(self) -> None:
        def up() -> bool:
            targets = self.api("targets")["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        self.wait_until("the target to be up", up)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def value(self, promql: str, at: float | None = None) -> float | None:
        result = self.query(promql, at)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def by_labels(self, promql: str, *labels: str, at: float | None = None) -> dict[Any, float]:
        """A vector result as {value of ``labels`` (one label: a str, several: a tuple): value}."""
        return {
            (
                r["metric"][labels[0]]
                if len(labels) == 1
                else tuple(r["metric"][label] for label in labels)
            ): float(r["value"][1])
            for r in self.query(promql, at)
        }

    def step_window(self, series: str, before: float, after: float) -> tuple[float, str]:
        """Where one ``series`` stepped from ``before`` to ``after``: (t, range selector).

        ``t`` is the first scrape that saw ``after``; the range (``[…ms]``) reaches
        back from it exactly to the last scrape that saw ``before``, so a function
        over it evaluated at ``t`` starts and ends on samples (``increase`` is
        exact, no extrapolation).
        """
        (samples,) = (r["values"] for r in self.query(f"{series}[2m]"))
        t_before = max(float(t) for t, v in samples if float(v) == before)
        t_after = min(float(t) for t, v in samples if float(v) == after)
        return t_after, f"[{round((t_after - t_before) * 1000)}ms]"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.caller.close()
