"""Link churn cannot kill the agent: hundreds of veth pairs come and go while it runs.

The upstream agent crash-looped when an interface was down or vanished, and
pyroute2 raises ``NetlinkError``/``NetlinkDumpInterrupted`` when links change
during a dump. Here ``k8spacket run`` captures in a lab node namespace while
300 veth pairs are created there (their peers in a "churn" namespace, so every
one is a capture candidate, as a pod's veth is), a third of them left DOWN,
and deleted again: by ``ip link del`` in one round, by deleting the peers'
namespace (as a pod deletion does) in the others. A connection made
after the churn must be exact (and one held open through it too, unless its own
interfaces' rings overflowed during the churn: those drops are counted), the agent must still
run, stay healthy and have restarted no thread, and after the churn capture
keeps up again (no new kernel drops).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentproc import AgentProc, connect
from netlab import NetLab, tcptool_argv

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROUNDS = 3
PAIRS = 100  # per round


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        yield lab


def batch(lab: NetLab, netns: str, lines: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".ip") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        lab.ip("-force", "-batch", f.name, netns=netns)


def churn_round(lab: NetLab, r: int) -> tuple[int, int]:
    """Create PAIRS veth pairs (a third DOWN) and delete them; (created, left down)."""
    node = lab.nodes["n1"].netns
    peers = lab.add_netns(f"churn{r}")
    names = [f"{lab.prefix}c{r}{i:02d}" for i in range(PAIRS)]
    batch(lab, node, [f"link add {n} type veth peer name p{i} netns {peers}"
                      for i, n in enumerate(names)])  # fmt: skip
    up = [i for i in range(PAIRS) if i % 3]
    batch(lab, node, [f"link set {names[i]} up" for i in up])
    batch(lab, peers, [f"link set p{i} up" for i in up])
    time.sleep(0.3)  # let the agent open rings on some of them
    if r == 0:
        batch(lab, node, [f"link del {n}" for n in names])
        lab.remove_netns(peers)
    else:
        lab.remove_netns(peers)  # both ends of every pair go with it, as on pod deletion
    return PAIRS, PAIRS - len(up)


def test_veth_churn_leaves_the_agent_up_and_exact(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_pod("a", "10.213.1.2/24")
    b = lab.add_pod("b", "10.213.1.3/24")
    lab.popen_in(b, tcptool_argv("serve", "--port", "8080", "--reply", "1000"))
    lab.wait_listening(b, 8080)
    # small rings: up to ~200 candidates may be open at once during the churn
    agent = AgentProc(lab, tmp_path, sets=["capture.ringSize=512KiB", "capture.blockSize=64KiB"])
    try:
        agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
        ifaces = lambda: agent.metric_sum("k8spacket_capture_interfaces")  # noqa: E731
        agent.wait("two pod interfaces", lambda: ifaces() == 2)

        # a connection that stays open through the churn
        held = lab.popen_in(a, tcptool_argv("connect", "10.213.1.3", "8080", "--send", "123456",
                                            "--hold", "10"), stdout=subprocess.PIPE)  # fmt: skip
        t0 = time.monotonic()
        created = down = 0
        for r in range(ROUNDS):
            c, d = churn_round(lab, r)
            created, down = created + c, down + d
        churn = time.monotonic() - t0
        assert created == ROUNDS * PAIRS and down == ROUNDS * (PAIRS // 3 + 1)
        agent.wait("churned interfaces closed", lambda: ifaces() == 2, timeout=30)
        assert agent.proc.poll() is None
        assert agent.get("/healthz") == (200, "ok\n")
        assert agent.get("/readyz") == (200, "ready\n")
        assert agent.metric_sum("k8spacket_thread_restarts_total") == 0
        opened = agent.log.read_text().count("capture started on " + lab.prefix + "c")
        print(f"churn: {created} pairs ({down} left down) in {churn:.1f}s; rings opened: {opened}")

        # kernel drops are counted, never silent; during the churn the small rings
        # may overflow (printed), once it is over capture keeps up again
        # (the kernel's counters are read once a second: wait until they settle)
        seen = [-1.0]

        def settled() -> bool:
            now = agent.metric_sum("k8spacket_capture_drops_total")
            same, seen[0] = now == seen[0], now
            time.sleep(1.2)
            return same

        agent.wait("kernel drop counters settled", settled, timeout=30)
        drops = seen[0]
        print(f"kernel drops during the churn: {drops:.0f}")
        # the held connection ends after the churn (its drops are over) unless the
        # churn ran long on a loaded machine: then its FIN may be among the drops
        held_outlived_churn = held.poll() is None
        out, _ = held.communicate(timeout=30)
        held_res = json.loads(out)
        assert held_res["error"] is None
        (after,) = connect(lab, a, "10.213.1.3", "8080", "--send", "777")
        # Bytes come from sequence numbers, so drops in the middle of the held
        # connection do not matter; a dropped FIN would (it stays open). The one
        # made afterwards must always be exact.
        print(f"held connection outlived the churn's drops: {held_outlived_churn}")
        for res in (held_res, after) if held_outlived_churn else (after,):

            def final(res: dict[str, object] = res) -> list[dict[str, object]]:
                recs = [r for r in agent.records() if r["src_port"] == res["local_port"]]
                return recs if any(r["close"] for r in recs) else []

            recs = agent.wait(f"records of port {res['local_port']}", final)
            assert sum(r["bytes_sent"] for r in recs) == res["sent"]  # type: ignore[misc]
            assert sum(r["bytes_received"] for r in recs) == res["received"]  # type: ignore[misc]
            assert sum(bool(r["first"]) for r in recs) == 1
        assert (held_res["sent"], after["sent"], after["received"]) == (123456, 777, 1000)
        assert agent.metric_sum("k8spacket_capture_drops_total") == drops
        assert agent.terminate() == 0
    finally:
        agent.close()
