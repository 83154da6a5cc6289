"""Publisher benchmark: what a record costs the capture thread, before and after.

Before the publisher, every record was named, stored and counted on the thread
that drains the rings; now that thread only calls :meth:`Publisher.offer` (a
bounded ``put_nowait``) and the publisher thread does the rest. Printed side by
side for the same records (an inventory naming both ends, the connection store,
the traffic metrics):

1. capture-thread cost per record: the old inline path (``Publisher.publish``
   called directly) and ``offer``;
2. the publisher thread's throughput (records/s) draining a full queue, which
   bounds the sustained record rate before ``k8spacket_publish_dropped_total``
   starts counting.

Run: ``python bench/publish_bench.py [--records N]``. Figures only.
"""

from __future__ import annotations

import argparse
import threading
import time

from k8spacket.enrich.inventory import Inventory
from k8spacket.flows.record import ConnectionRecord
from k8spacket.metrics.traffic import TrafficMetrics
from k8spacket.nodegraph.store import ConnectionStore
from k8spacket.publish import Publisher

INVENTORY = """
endpoints:
  - {cidr: 10.244.1.0/24, namespace: shop, name: cart, workload: cart, kind: pod}
  - {cidr: 10.244.2.0/24, namespace: shop, name: redis, workload: redis, kind: pod}
"""


def records(n: int) -> list[ConnectionRecord]:
    return [
        ConnectionRecord(
            src=f"10.244.1.{i % 250}",
            src_port=32768 + i % 28000,
            dst=f"10.244.2.{i % 50}",
            dst_port=6379,
            bytes_sent=100,
            bytes_received=200,
            handshake_seconds=0.0004,
            duration_seconds=0.5,
            outcome="established",
            close="fin",
            start=0.0,
            end=0.5,
        )
        for i in range(n)
    ]


def publisher(capacity: int) -> Publisher:
    inv = Inventory.from_yaml(INVENTORY)
    local = {f"10.244.1.{i}" for i in range(250)}
    return Publisher(
        is_local=local.__contains__,
        namers=[inv.name_record],
        store=ConnectionStore(10_000).add,
        traffic=TrafficMetrics().record,
        settle=0.0,
        capacity=capacity,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    n = ap.parse_args().records

    recs = records(n)
    inline = publisher(n + 1)
    t0 = time.perf_counter()
    for r in recs:
        inline.publish(r)
    t_inline = time.perf_counter() - t0

    recs = records(n)
    queued = publisher(n + 1)
    t0 = time.perf_counter()
    for r in recs:
        queued.offer(r)
    t_offer = time.perf_counter() - t0
    t = threading.Thread(target=queued.run)
    t0 = time.perf_counter()
    t.start()
    queued.close()
    t.join()
    t_drain = time.perf_counter() - t0

    print(f"{n} records, inventory naming, store, traffic metrics")
    print(f"{'capture-thread cost per record':34} {'before (inline)':>16} {'after (offer)':>14}")
    print(f"{'':34} {t_inline / n * 1e6:13.2f} µs {t_offer / n * 1e6:11.2f} µs")
    print(f"publisher thread throughput: {n / t_drain:,.0f} records/s "
          f"(dropped {queued.dropped}, published {queued.published})")  # fmt: skip


if __name__ == "__main__":
    main()
