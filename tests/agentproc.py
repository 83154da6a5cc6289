"""The node agent as a subprocess in a lab node namespace, and its HTTP API.

:class:`AgentProc` runs ``python -m k8spacket.cli run`` inside a lab node's
network namespace (as a DaemonSet pod with hostNetwork would), with a config
that excludes the lab's uplink and flushes quickly, and reads ``/metrics``,
``/nodegraph/connections``, ``/readyz`` … from a helper thread that joined the
namespace (:class:`promserver.NetnsCaller`), so nothing is exposed outside the
lab. The agent's output goes to ``agent.log`` in the work directory.
:func:`connect` runs the lab's TCP client in a pod and returns what it reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netlab import NetLab, Pod, tcptool_argv
from promserver import NetnsCaller

AGENT_PORT = 6676


class AgentProc:
    """``k8spacket run`` in a lab node namespace, and its HTTP API (read from inside)."""

    def __init__(
        self,
        lab: NetLab,
        workdir: Path,
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
        node: str = "n1",
        listen: str = "127.0.0.1",
        command: list[str] | None = None,
        sets: Sequence[str] = (),
    ) -> None:
        config = workdir / "agent.yaml"
        config.write_text(
            "capture:\n"
            "  interfaces:\n"
            f"    exclude: ['{lab.uplink_regex}']\n"
            "    refreshPeriod: 2s\n"
            "tracker:\n"
            "  flushPeriod: 1s\n"
            "  closeOlderThan: 4s\n" + extra_config
        )
        self.log = workdir / "agent.log"
        self._log = self.log.open("wb")
        argv = [*(command or [sys.executable, "-m", "k8spacket.cli", "run"]),
                "--config", str(config), "--listen", f"{listen}:{AGENT_PORT}"]  # fmt: skip
        for item in sets:
            argv += ["--set", item]
        full_env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "NODE_NAME")}
        full_env.update(env or {})
        self.proc = lab.popen_in(
            lab.nodes[node], argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )
        self.http = NetnsCaller(lab.nodes[node].netns)

    def get(self, path: str) -> tuple[int, str]:
        """(status, body); status 0 when nothing answers yet."""
        try:
            status, body = self.http.get(f"http://127.0.0.1:{AGENT_PORT}{path}", timeout=5)
        except OSError:
            return 0, ""
        return status, body.decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body)
            for s in fam.samples
        }

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in self.metrics().items()
            if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
        )

    def records(self) -> list[dict[str, Any]]:
        status, body = self.get("/nodegraph/connections")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def wait(self, what: str, cond: Callable[[], Any], timeout: float = 20) -> Any:
        """Poll ``cond()`` until truthy and return its value.

        ``timeout`` is a deadline to fail on, never asserted as a timing: ``cond``
        is not called again once it has passed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited:\n{self.log.read_text()[-3000:]}"
            got = cond()
            if got:
                return got
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}\n{self.log.read_text()[-3000:]}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()
        self.http.close()


def connect(lab: NetLab, pod: Pod, *args: str) -> list[dict[str, Any]]:
    """Run ``tcptool connect`` in ``pod``: one result (a dict) per connection it made."""
    r = lab.run_in(pod, tcptool_argv("connect", *args))
    return [json.loads(line) for line in r.stdout.splitlines()]
