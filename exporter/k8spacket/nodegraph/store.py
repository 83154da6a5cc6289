"""The connection store: the most recent connection records, bounded, for the HTTP API.

Records arrive from the capture thread (:meth:`ConnectionStore.add`) and are read
by HTTP handler threads (:meth:`ConnectionStore.records`); a lock guards the
deque. The store keeps the last ``capacity`` records (oldest dropped first,
counted in ``dropped``), each as its JSON-ready dict so a request only filters
and serialises. Interim records are kept as they come: byte counts are deltas,
so summing a connection's records gives its totals (docs/design.md).

Limits: memory is about 1 KB per record; a time filter scans the whole deque.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from k8spacket.flows.record import ConnectionRecord

Record = dict[str, Any]


class ConnectionStore:
    """A bounded, thread-safe ring of recent connection records."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("connection store capacity must be at least 1")
        self.capacity = capacity
        self._records: collections.deque[Record] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.added = 0
        self.dropped = 0

    def add(self, rec: ConnectionRecord) -> None:
        d = rec.to_dict()
        with self._lock:
            if len(self._records) == self.capacity:
                self.dropped += 1
            self._records.append(d)
            self.added += 1

    def records(
        self,
        since: float | None = None,
        until: float | None = None,
        where: Callable[[Record], bool] | None = None,
    ) -> list[Record]:
        """Records whose ``end`` is in [since, until] (Unix seconds) and pass ``where``."""
        with self._lock:
            items = list(self._records)
        return [
            r
            for r in items
            if (since is None or r["end"] >= since)
            and (until is None or r["end"] <= until)
            and (where is None or where(r))
        ]

    def __len__(self) -> int:
        return len(self._records)
