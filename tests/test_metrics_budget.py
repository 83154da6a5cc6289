"""Series budget: folding into ``__other__``, the overflow count, TTL, deleting pods."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from k8spacket.metrics.budget import SeriesBudget
from k8spacket.metrics.labels import OTHER, LabelPolicy
from k8spacket.metrics.traffic import CONNECTIONS, FAMILIES, SENT, TrafficMetrics
from test_metrics_factories import ManualClock, collector, rec

FOLD = (False, True, True)
ALL = (True, True, True)


def test_new_label_sets_fold_then_fall_into_the_catch_all() -> None:
    b = SeriesBudget("f", limit=20, width=1, fold_mask=FOLD, fold_all_mask=ALL)
    assert b.reserve == 2
    for i in range(18):
        b.slot(("ns", f"w{i}", "p"), 0.0)[0] += 1
    assert b.overflow == 0
    # past limit - reserve: the workload-like positions fold, "ns" stays
    b.slot(("ns", "w18", "p"), 0.0)[0] += 1
    b.slot(("ns", "w19", "p"), 0.0)[0] += 1
    assert b.data[("ns", OTHER, OTHER)] == [2, 0.0]
    # the folded set took the last slot before the catch-all room: a new
    # namespace now goes to the catch-all (one per trailing value, here one)
    b.slot(("other-ns", "w", "p"), 0.0)[0] += 1
    b.slot(("third-ns", "w", "p"), 0.0)[0] += 1
    b.slot(("ns", "w20", "p"), 0.0)[0] += 1
    assert ("other-ns", OTHER, OTHER) not in b.data
    assert b.data[(OTHER, OTHER, OTHER)][0] == 2
    assert b.data[("ns", OTHER, OTHER)][0] == 3
    assert len(b) == 20
    assert b.overflow == 5
    # existing exact label sets keep counting exactly
    b.slot(("ns", "w3", "p"), 0.0)[0] += 1
    assert b.data[("ns", "w3", "p")][0] == 2
    assert b.overflow == 5


def test_trailing_label_keeps_its_value_when_folded() -> None:
    b = SeriesBudget("f", limit=10, width=1, fold_mask=FOLD, fold_all_mask=ALL, tail_values=4)
    for outcome in ("established", "refused", "unanswered", "midstream") * 5:
        for i in range(5):
            b.slot((f"ns{i}", f"w{i}", "p", outcome), 0.0)[0] += 1
    assert len(b) <= 10
    assert {k[-1] for k in b.data} == {"established", "refused", "unanswered", "midstream"}
    assert sum(s[0] for s in b.data.values()) == 100


@pytest.mark.parametrize("limit", [3, 5, 10, 100, 1000], ids=str)
def test_never_more_label_sets_than_the_limit(limit: int) -> None:
    b = SeriesBudget("f", limit=limit, width=1, fold_mask=FOLD, fold_all_mask=ALL)
    for i in range(5000):
        b.slot((f"ns{i % 97}", f"w{i}", str(i)), 0.0)[0] += 1
    assert len(b) <= limit
    assert sum(s[0] for s in b.data.values()) == 5000


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 9"):
        SeriesBudget("f", limit=8, width=1, fold_mask=FOLD, fold_all_mask=ALL, tail_values=4)


def test_over_budget_records_fold_and_are_counted_per_family() -> None:
    traffic = TrafficMetrics(budget=20, budgets={CONNECTIONS: 40}, clock=ManualClock())
    for i in range(30):
        traffic.record(rec(f"client{i}", "redis"))
    registry = CollectorRegistry()
    registry.register(collector(traffic))
    get = registry.get_sample_value
    other = {
        "src_namespace": "shop",
        "src_workload": OTHER,
        "src_kind": "pod",
        "dst_namespace": "shop",
        "dst_workload": OTHER,
        "dst_kind": "pod",
        "dst_port": "6379",
    }
    # budget 20, reserve 2: 18 exact label sets, the other 12 records folded
    assert get(SENT, other) == 12 * 100
    assert get(SENT, {**other, "src_workload": "client17", "dst_workload": "redis"}) == 100
    assert get(SENT, {**other, "src_workload": "client18", "dst_workload": "redis"}) is None
    assert get("k8spacket_series_overflow_total", {"metric": SENT}) == 12
    # connections_total has its own budget (40, reserve 4): nothing folded
    assert get("k8spacket_series_overflow_total", {"metric": CONNECTIONS}) == 0
    total = sum(
        s.value for m in registry.collect() if m.name == SENT[: -len("_total")] for s in m.samples
    )
    assert total == 30 * 100


def test_unknown_family_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        TrafficMetrics(budgets={"k8spacket_tcp_bytes": 10})


def test_idle_series_expire_after_the_ttl() -> None:
    clock = ManualClock()
    traffic = TrafficMetrics(ttl=60, clock=clock)
    traffic.record(rec("old", "redis"))
    clock.advance(30)
    traffic.record(rec("new", "redis"))
    clock.advance(31)  # "old" idle 61 s, "new" 31 s
    snap = traffic.snapshot()
    workloads = {k[1] for k, _ in snap.series[SENT]}
    assert workloads == {"new"}
    clock.advance(30)
    assert traffic.snapshot().series[SENT] == []


def test_open_connections_are_not_expired_while_above_zero() -> None:
    clock = ManualClock()
    traffic = TrafficMetrics(ttl=60, clock=clock)
    traffic.record(rec("stream", "kafka", close=None))
    clock.advance(600)
    snap = traffic.snapshot()
    assert [v for _, v in snap.series["k8spacket_tcp_open_connections"]] == [(1,)]
    assert snap.series[SENT] == []
    # the final record finds nothing else to decrement and creates nothing
    traffic.record(rec("stream", "kafka", first=False))
    assert [v for _, v in traffic.snapshot().series["k8spacket_tcp_open_connections"]] == [(0,)]


def pod_policy() -> LabelPolicy:
    return LabelPolicy("pod", ("src_ip", "dst_ip"))


def test_forget_drops_the_series_of_a_deleted_pod_in_every_family() -> None:
    traffic = TrafficMetrics(pod_policy(), clock=ManualClock())
    traffic.record(rec("cart", "redis", src_name="cart-1"))
    traffic.record(rec("cart", "redis", src_name="cart-2", src="10.244.1.6"))
    traffic.record(rec("web", "cart", dst_name="cart-2", dst="10.244.1.6", close=None))
    dropped = traffic.forget("shop", "cart-2")
    assert dropped == 2 + 2 + 2 + 2 + 1 + 1 + 1  # 2 label sets in 4 families; 1 in 3
    left = traffic.series_count()
    assert left[SENT] == 1
    assert all(n <= 1 for n in left.values())


def test_forget_by_address_when_only_ip_labels_are_on() -> None:
    traffic = TrafficMetrics(LabelPolicy(opt_in=("src_ip",)), clock=ManualClock())
    traffic.record(rec("cart", "redis", src="10.244.1.5"))
    traffic.record(rec("cart", "redis", src="10.244.1.6"))
    assert traffic.forget("other-namespace", "cart-1", ips=["10.244.1.5"]) == 0
    assert traffic.forget("shop", "cart-1", ips=["10.244.1.5"]) > 0
    assert [k[-1] for k, _ in traffic.snapshot().series[SENT]] == ["10.244.1.6"]


def test_forget_is_a_no_op_at_workload_level() -> None:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record(rec("cart", "redis"))
    assert traffic.forget("shop", "cart-0") == 0
    assert traffic.series_count()[SENT] == 1


def test_drop_where_sees_label_names() -> None:
    traffic = TrafficMetrics(clock=ManualClock())
    traffic.record(rec("cart", "redis"))
    traffic.record(rec("cart", "redis", dst_namespace="cache"))
    n = traffic.drop_where(lambda labels: labels["dst_namespace"] == "cache")
    assert n == 6  # every family but the open gauge
    assert {f: c for f, c in traffic.series_count().items() if c} == {
        f: 1 for f in FAMILIES if f != "k8spacket_tcp_open_connections"
    }
