"""End to end: pods make traffic, the agent captures it, a real Prometheus scrapes it.

Everything runs inside the lab (``tests/netlab``): the agent (``k8spacket run``)
in the node namespace, as a hostNetwork DaemonSet pod would; Prometheus in the
same namespace, listening on that namespace's 127.0.0.1 and scraping the agent
every second; the test reads Prometheus' HTTP API from a thread that joined the
namespace (``promserver.NetnsCaller``). Names come from an inventory file.

The PromQL answers must equal what the TCP clients reported, to the byte and to
the connection. ``increase()`` is exact only over a range that starts and ends on
samples (no extrapolation) and only for series that existed before the range
(docs/metrics.md: a series' first value is not an increase): batch A creates
the series, batch B is measured between the scrape that last saw A and the
first that saw A+B. The handshake quantile is checked against the histogram
buckets that hold the handshake times the agent itself recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentproc import AGENT_PORT, AgentProc, connect
from conftest import require_tool
from k8spacket.metrics.traffic import HANDSHAKE_BUCKETS
from netlab import NetLab, tcptool_argv
from promserver import PrometheusServer

pytestmark = [pytest.mark.netns, pytest.mark.prometheus, pytest.mark.slow]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as lab:
        yield lab


INVENTORY = """\
endpoints:
  - {cidr: 10.213.1.2, namespace: shop, name: cart-5d8f9-a, workload: cart, kind: pod}
  - {cidr: 10.213.1.3, namespace: shop, name: redis-0, workload: redis, kind: pod}
  - {cidr: 10.213.1.4, namespace: shop, name: web-7c6b5-b, workload: web, kind: pod}
"""
CART_REDIS = '{src_workload="cart",dst_workload="redis"}'


def bucket_bounds(values: list[float]) -> tuple[float, float]:
    """The lowest and highest bucket bound that enclose every value."""
    bounds = (0.0, *HANDSHAKE_BUCKETS, float("inf"))
    lo = max(b for b in bounds if b < min(values))
    hi = min(b for b in bounds if b >= max(values))
    return lo, hi


@pytest.mark.timeout(90)
def test_promql_over_the_agent_returns_the_traffic_pods_made(lab: NetLab, tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    cart = lab.add_pod("cart", "10.213.1.2/24")
    redis = lab.add_pod("redis", "10.213.1.3/24")
    web = lab.add_pod("web", "10.213.1.4/24")
    lab.popen_in(redis, tcptool_argv("serve", "--port", "6379", "--reply", "5000"))
    lab.popen_in(cart, tcptool_argv("serve", "--port", "8080", "--reply", "700"))
    lab.wait_listening(redis, 6379)
    lab.wait_listening(cart, 8080)
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    agent = AgentProc(
        lab,
        tmp_path,
        f"inventory: {{path: '{tmp_path / 'inventory.yaml'}'}}\nkubernetes: {{enabled: false}}\n",
    )
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    prometheus = PrometheusServer(
        binary, f"127.0.0.1:{AGENT_PORT}", prom_dir, lab.nodes["n1"].netns
    )
    try:
        agent.wait("readiness", lambda: agent.get("/readyz")[0] == 200)
        agent.wait(
            "three pod interfaces", lambda: agent.metric_sum("k8spacket_capture_interfaces") == 3
        )
        prometheus.wait_target_up()

        # batch A: creates the series
        a = connect(lab, cart, "10.213.1.3", "6379", "--send", "1000", "--count", "3")
        a_web = connect(lab, web, "10.213.1.2", "8080", "--send", "70", "--count", "2")
        sent_a = sum(r["sent"] for r in a)
        web_sent = sum(r["sent"] for r in a_web)
        assert sent_a == 3000 and web_sent == 140
        sent_cart_redis = f"sum(k8spacket_tcp_sent_bytes_total{CART_REDIS})"
        prometheus.wait_until(
            "batch A scraped",
            lambda: (
                prometheus.value(sent_cart_redis) == sent_a
                and prometheus.value("sum(k8spacket_tcp_connections_total)") == 5
            ),
        )

        # batch B: a refused connection (a new series), then four with other sizes
        (refused,) = connect(lab, cart, "10.213.1.3", "1")
        assert refused["error"] == "refused"
        b = connect(lab, cart, "10.213.1.3", "6379", "--send", "1234", "--count", "4")
        sent_b = sum(r["sent"] for r in b)
        received_b = sum(r["received"] for r in b)
        assert (sent_b, received_b) == (4 * 1234, 4 * 5000)
        prometheus.wait_until(
            "batch B scraped",
            lambda: (
                prometheus.value(sent_cart_redis) == sent_a + sent_b
                and prometheus.value("sum(k8spacket_tcp_connections_total)") == 10
            ),
        )

        # the scrape that last saw A and the first that saw A+B
        series = f'k8spacket_tcp_sent_bytes_total{{dst_port="6379",{CART_REDIS[1:]}'
        t_b, window = prometheus.step_window(series, sent_a, sent_a + sent_b)

        assert prometheus.value(f"increase({series}{window})", at=t_b) == sent_b
        assert (
            prometheus.value(
                f"sum(increase(k8spacket_tcp_received_bytes_total{CART_REDIS}{window}))", at=t_b
            )
            == received_b
        )
        by_outcome = prometheus.by_labels(
            f"sum by (outcome) (increase(k8spacket_tcp_connections_total{window}))",
            "outcome",
            at=t_b,
        )
        # The refused series is born inside the window, so its first step is not an
        # increase: absent when no scrape caught it before batch B's bytes, 0 when one did.
        assert by_outcome.pop("refused", 0.0) == 0.0
        assert by_outcome == {"established": 4.0}
        totals_by_outcome = prometheus.by_labels(
            "sum by (outcome) (k8spacket_tcp_connections_total)", "outcome", at=t_b
        )
        assert totals_by_outcome == {"established": 3 + 2 + 4, "refused": 1}
        pairs = prometheus.by_labels(
            "sum by (src_workload, dst_workload) (k8spacket_tcp_sent_bytes_total)",
            "src_workload",
            "dst_workload",
            at=t_b,
        )
        assert pairs == {("cart", "redis"): sent_a + sent_b, ("web", "cart"): web_sent}
        closed = prometheus.by_labels(
            f"sum by (close) (k8spacket_tcp_connections_closed_total{CART_REDIS})", "close", at=t_b
        )
        assert closed == {"fin": 7.0, "rst": 1.0}

        # handshake median of batch B: inside the buckets holding B's real handshake times
        ports_b = {r["local_port"] for r in b}
        handshakes = [
            r["handshake_seconds"]
            for r in agent.records()
            if r["src_port"] in ports_b and r["dst_port"] == 6379 and r["first"]
        ]
        assert len(handshakes) == 4 and all(h is not None for h in handshakes), handshakes
        lo, hi = bucket_bounds(handshakes)
        median_b = prometheus.value(
            "histogram_quantile(0.5, sum by (le) (increase("
            f"k8spacket_tcp_handshake_seconds_bucket{CART_REDIS}{window})))",
            at=t_b,
        )
        assert median_b is not None and lo <= median_b <= hi, (median_b, handshakes)
        count_b = prometheus.value(
            f"sum(increase(k8spacket_tcp_handshake_seconds_count{CART_REDIS}{window}))", at=t_b
        )
        assert count_b == 4
        print(f"handshakes of batch B: {sorted(handshakes)}; PromQL median {median_b}")
        assert agent.terminate() == 0
    finally:
        prometheus.stop()
        agent.close()
