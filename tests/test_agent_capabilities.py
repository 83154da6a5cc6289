"""Without CAP_NET_RAW the agent says so once at start-up and never claims to be ready.

``k8spacket run`` is started by root with ``CAP_NET_RAW`` taken out of its
bounding and inheritable sets (``setpriv``), so the process really lacks it,
as a pod whose securityContext forgot it would. Capture is told to exclude
every interface, so nothing of this machine is touched even if it could be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import require, require_tool
from promserver import free_port

pytestmark = [pytest.mark.timeout(60)]

NO_CAP = "no CAP_NET_RAW: packet capture is not permitted (not in the effective capability set)"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_without_cap_net_raw_readyz_fails_with_the_reason(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to drop a capability it has")
    setpriv = require_tool("setpriv")
    port = free_port()
    log = tmp_path / "agent.log"
    argv = [setpriv, "--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--",
            sys.executable, "-m", "k8spacket.cli", "run", "--listen", f"127.0.0.1:{port}",
            "--set", "kubernetes.enabled=false", "--set", "enrichment.geoip.enabled=false",
            "--set", "capture.interfaces.exclude=[.*]"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while get(port, "/healthz")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"agent never served\n{log.read_text()}"
            time.sleep(0.1)
        # the interfaces get listed and the capture loop runs: only the capability is missing
        for _ in range(10):
            status, body = get(port, "/readyz")
            assert (status, body) == (503, f"not ready: {NO_CAP}\n") or (
                status == 503 and NO_CAP in body
            ), body
            time.sleep(0.1)
        assert get(port, "/readyz") == (503, f"not ready: {NO_CAP}\n")
        assert get(port, "/healthz") == (200, "ok\n")  # alive: restarting would not help
        lines = [ln for ln in log.read_text().splitlines() if "CAP_NET_RAW" in ln]
        assert len(lines) == 1, lines
        assert NO_CAP in lines[0] and "nothing will be captured" in lines[0]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
