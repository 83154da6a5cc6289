"""The network lab itself: pods on one node, a second node over a routed uplink."""

from __future__ import annotations

import json
import subprocess

import pytest

from netlab import LabError, NetLab, tcptool_argv

pytestmark = pytest.mark.netns


def _connect(lab: NetLab, pod: object, *args: str) -> list[dict[str, object]]:
    r = lab.run_in(pod, tcptool_argv("connect", *args))  # type: ignore[arg-type]
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_pods_talk_on_one_node_and_across_nodes() -> None:
    with NetLab() as lab:
        a = lab.add_pod("a", "10.213.1.2/24", "fd42:213:1::2/64")
        b = lab.add_pod("b", "10.213.1.3/24", "fd42:213:1::3/64")
        c = lab.add_pod("c", "10.213.2.2/24", node="n2")
        lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "1000"))
        lab.popen_in(c, tcptool_argv("serve", "--port", "9090", "--reply", "7"))
        lab.wait_listening(b, 8080)
        lab.wait_listening(c, 9090)
        (same,) = _connect(lab, a, "10.213.1.3", "8080", "--send", "500")
        assert (same["sent"], same["received"], same["error"]) == (500, 1000, None)
        (v6,) = _connect(lab, a, "fd42:213:1::3", "8080", "--send", "5")
        assert v6["received"] == 1000
        (cross,) = _connect(lab, a, "10.213.2.2", "9090", "--send", "3")
        assert (cross["sent"], cross["received"]) == (3, 7)
        (refused,) = _connect(lab, a, "10.213.1.3", "1")
        assert refused["error"] == "refused"
        namespaces = [n.netns for n in lab.nodes.values()] + [p.netns for p in lab.pods.values()]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in namespaces)


def test_cleanup_runs_when_the_body_fails() -> None:
    with pytest.raises(LabError), NetLab() as lab:
        lab.add_pod("a", "10.213.1.2/24")
        prefix = lab.prefix
        lab.ip("link", "set", "nonexistent0", "up", netns=lab.nodes["n1"].netns)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed


def test_cleanup_runs_when_the_program_is_terminated() -> None:
    """A SIGTERM (a ``timeout`` or a ``kill`` of a benchmark) still deletes the namespaces."""
    import signal
    import sys
    from pathlib import Path

    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from netlab import NetLab\n"
        "with NetLab() as lab:\n"
        "    lab.add_pod('a', '10.213.1.2/24')\n"
        "    print(lab.prefix, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().strip()
        assert prefix
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert prefix in listed  # the lab is up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed
