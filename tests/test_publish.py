"""The publisher: settle, decide once, the exactly-once rule, Service pairs, drops, drain."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.publish_collector import PublishCollector
from k8spacket.publish import Publisher
from test_metrics_factories import rec

LOCAL = {"10.244.1.5", "10.244.1.6"}  # pods on this node
PODS = {"10.244.1.5", "10.244.1.6", "10.244.2.7"}  # 10.244.2.7: a pod on another node
SERVICES = {"10.96.0.10": "redis"}


def name(r: ConnectionRecord) -> None:
    """A stand-in naming chain: pods and services by address."""
    for side in ("src", "dst"):
        ip = getattr(r, side)
        kind = "pod" if ip in PODS else "service" if ip in SERVICES else "unknown"
        setattr(r, f"{side}_kind", kind)
        setattr(r, f"{side}_name", SERVICES.get(ip, f"pod-{ip}" if kind == "pod" else ""))


class FakeNat:
    """conntrack as a dict: wire tuple → (vip, vport, backend, bport)."""

    def __init__(self, entries: dict[tuple[str, int, str, int], tuple[str, int, str, int]]):
        self.entries = entries
        self.asked: list[tuple[str, int, str, int]] = []
        self.closed = 0

    def original_destination(
        self, src: str, sport: int, dst: str, dport: int
    ) -> tuple[str, int, str, int] | None:
        self.asked.append((src, sport, dst, dport))
        return self.entries.get((src, sport, dst, dport))

    def close(self) -> None:
        self.closed += 1


def make(**kw: Any) -> tuple[Publisher, list[ConnectionRecord], list[ConnectionRecord]]:
    stored: list[ConnectionRecord] = []
    counted: list[ConnectionRecord] = []
    pub = Publisher(
        is_local=LOCAL.__contains__,
        namers=[name],
        store=stored.append,
        traffic=counted.append,
        settle=0.0,
        **kw,
    )
    return pub, stored, counted


def conn(
    src: str, dst: str, *, sport: int = 40000, dport: int = 6379, **kw: Any
) -> list[ConnectionRecord]:
    """An interim then a final record of one connection."""
    r = dict(src=src, dst=dst, src_port=sport, dst_port=dport, src_kind="", dst_kind="")
    return [rec(close=None, **r, **kw), rec(first=False, **r, **kw)]


@pytest.mark.parametrize(
    ("src", "dst", "reporter", "counted", "reason"),
    [
        ("10.244.1.5", "10.244.1.6", "client", True, None),
        ("10.244.1.5", "10.244.2.7", "client", True, None),
        ("10.244.2.7", "10.244.1.6", "server", False, "remote_client_pod"),
        ("192.168.0.2", "10.244.1.6", "server", True, None),  # a node: not a pod
        ("81.2.69.142", "10.244.1.6", "server", True, None),  # the internet
        ("10.244.1.5", "81.2.69.142", "client", True, None),
    ],
    ids=[
        "same-node",
        "to-other-node",
        "from-other-node-pod",
        "node-to-pod",
        "internet-to-pod",
        "pod-to-internet",
    ],
)
def test_exactly_once_rule(
    src: str, dst: str, reporter: str, counted: bool, reason: str | None
) -> None:
    pub, stored, metrics = make()
    sink: list[ConnectionRecord] = []
    pub.record_sinks.append(sink.append)
    for r in conn(src, dst):
        pub.offer(r)
    assert pub.drain() == 2
    assert [r.reporter for r in stored] == [reporter, reporter]  # stored either way
    assert len(metrics) == len(sink) == (2 if counted else 0)
    assert sum(pub.counters().values()) == (0 if counted else 2)
    if reason:
        assert pub.counters()[reason] == 2


def test_decided_once_even_when_locality_changes_midway() -> None:
    local = {"10.244.2.7"}
    pub = Publisher(is_local=local.__contains__, namers=[name], traffic=(out := []).append)
    first, final = conn("10.244.2.7", "10.244.1.6")
    pub.publish(first)
    local.clear()  # the pod's interface went: its address is no longer local
    pub.publish(final)
    assert [r.reporter for r in out] == ["client", "client"]


def test_service_pair_same_node_counts_once_with_both_names() -> None:
    # client 10.244.1.5 → ClusterIP 10.96.0.10:80, DNAT to 10.244.1.6:8080 (both on this node)
    nat = FakeNat({
        ("10.244.1.5", 40000, "10.96.0.10", 80): ("10.96.0.10", 80, "10.244.1.6", 8080),
        ("10.244.1.5", 40000, "10.244.1.6", 8080): ("10.96.0.10", 80, "10.244.1.6", 8080),
    })  # fmt: skip
    pub, stored, counted = make(nat=nat)
    for r in conn("10.244.1.5", "10.244.1.6", dport=8080) + conn(
        "10.244.1.5", "10.96.0.10", dport=80
    ):
        pub.offer(r)
    pub.drain()
    assert [(r.dst, r.dst_port, r.dst_service, r.dst_kind) for r in counted] == [
        ("10.244.1.6", 8080, "redis", "pod")
    ] * 2
    assert stored == counted  # the backend's view is not stored either
    assert pub.counters()["service_backend_view"] == 2
    assert len(nat.asked) == 2  # once per connection, not per record


def test_service_cross_node_client_side_is_rewritten_to_the_backend() -> None:
    nat = FakeNat({("10.244.1.5", 40000, "10.96.0.10", 80): ("10.96.0.10", 80, "10.244.2.7", 8080)})
    pub, _, counted = make(nat=nat)
    for r in conn("10.244.1.5", "10.96.0.10", dport=80):
        pub.offer(r)
    pub.drain()
    assert {(r.dst, r.dst_port, r.dst_service, r.reporter) for r in counted} == {
        ("10.244.2.7", 8080, "redis", "client")
    }


def test_unnamed_service_address_is_the_dst_service() -> None:
    nat = FakeNat({("10.244.1.5", 40000, "10.96.7.7", 80): ("10.96.7.7", 80, "10.244.1.6", 80)})
    pub, _, counted = make(nat=nat)
    pub.publish(rec(src="10.244.1.5", dst="10.96.7.7", dst_port=80))
    assert counted[0].dst_service == "10.96.7.7"


def test_a_hostport_dnat_to_a_pod_is_not_a_service() -> None:
    # the address before DNAT (10.244.1.5:8080) is named a pod, not a Service
    nat = FakeNat({("81.2.69.142", 5000, "10.244.1.6", 80): ("10.244.1.5", 8080, "10.244.1.6", 80)})
    pub, _, counted = make(nat=nat)
    pub.publish(rec(src="81.2.69.142", src_port=5000, dst="10.244.1.6", dst_port=80))
    assert (counted[0].dst, counted[0].dst_service) == ("10.244.1.6", "")


def test_conntrack_is_asked_only_when_it_can_change_something() -> None:
    nat = FakeNat({})
    pub, _, _ = make(nat=nat)
    for src, dst in (
        ("10.244.1.5", "10.244.2.7"),  # to a pod of another node: no Service
        ("10.244.2.7", "10.244.1.6"),
    ):  # from one: left out by the rule anyway
        pub.publish(rec(src=src, dst=dst))
    assert nat.asked == []
    for src, dst in (
        ("10.244.1.5", "10.96.0.10"),  # to a Service
        ("10.244.1.5", "10.244.1.6"),  # same node: maybe a Service's backend view
        ("192.168.0.2", "10.244.1.6"),
    ):  # unnamed client: maybe via a Service here
        pub.publish(rec(src=src, dst=dst))
    assert [(a[0], a[2]) for a in nat.asked] == [
        ("10.244.1.5", "10.96.0.10"),
        ("10.244.1.5", "10.244.1.6"),
        ("192.168.0.2", "10.244.1.6"),
    ]


def test_nat_errors_are_counted_and_the_record_still_published() -> None:
    class Broken:
        def original_destination(self, *a: Any) -> None:
            raise OSError(1, "Operation not permitted")

        def close(self) -> None:
            pass

    pub, stored, counted = make(nat=Broken())
    pub.publish(rec(src="10.244.1.5", dst="10.244.1.6"))
    assert (len(stored), len(counted), pub.nat_errors) == (1, 1, 1)
    # and exported, as the agent wires it
    registry = CollectorRegistry()
    registry.register(PublishCollector(lambda: pub.dropped, pub.counters, lambda: pub.nat_errors))
    assert registry.get_sample_value("k8spacket_conntrack_errors_total") == 1
    assert registry.get_sample_value("k8spacket_publish_dropped_total") == 0


def test_a_full_queue_is_a_counted_drop() -> None:
    pub, stored, _ = make(capacity=2)
    for port in range(5):
        pub.offer(rec(src_port=port))
    assert (pub.dropped, pub.queued()) == (3, 2)
    assert pub.drain() == 2 and len(stored) == 2


def test_close_publishes_every_queued_record_without_the_settle_delay() -> None:
    stored: list[ConnectionRecord] = []
    pub = Publisher(is_local=LOCAL.__contains__, namers=[], store=stored.append, settle=3600)
    t = threading.Thread(target=pub.run)
    t.start()
    for port in range(100):
        pub.offer(rec(src_port=port))
    pub.block()
    pub.close()
    t.join(timeout=10)
    assert not t.is_alive() and len(stored) == 100


def test_drain_refuses_while_the_publisher_thread_runs() -> None:
    """Two threads publishing at once would read each other's conntrack answers."""
    release, entered = threading.Event(), threading.Event()
    stored: list[ConnectionRecord] = []

    def slow_store(r: ConnectionRecord) -> None:
        entered.set()
        release.wait(10)
        stored.append(r)

    pub = Publisher(is_local=LOCAL.__contains__, namers=[], store=slow_store, settle=0.0)
    t = threading.Thread(target=pub.run)
    t.start()
    for port in range(3):
        pub.offer(rec(src_port=port))
    assert entered.wait(10)  # the thread is publishing the first record
    try:
        with pytest.raises(RuntimeError, match="publisher thread runs"):
            pub.drain()
    finally:
        release.set()
        pub.close()
        t.join(timeout=10)
    assert not t.is_alive() and len(stored) == 3
    assert pub.drain() == 0  # the thread has ended: draining is allowed again


def test_the_publisher_closes_its_nat_client_when_it_ends_for_good() -> None:
    """At shutdown the publisher may outlive the agent's wait: it is the client's last user."""
    nat = FakeNat({})
    pub, stored, _ = make(nat=nat)
    t = threading.Thread(target=pub.run)
    t.start()
    pub.offer(rec(src="10.244.1.5", dst="10.96.0.10"))
    pub.close()
    t.join(timeout=10)
    assert not t.is_alive() and len(stored) == 1 and nat.asked and nat.closed == 1
