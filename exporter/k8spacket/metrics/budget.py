"""Series budget: one metric family's label sets and their accumulators, bounded.

A :class:`SeriesBudget` maps a label-value tuple to a small list of numbers
(a counter value, or a histogram's bucket counts and sum) followed by the time
it was last updated. It never holds more than ``limit`` label sets:

1. a new label set is kept as it is while the family holds fewer than
   ``limit - reserve`` label sets (``reserve`` is a tenth of the limit, at least
   twice ``tail_values``);
2. past that it is folded: the workload labels and every opt-in label
   (``src_pod``, ``dst_pod``, ``src_ip``, ``dst_ip``, ``src_port``,
   ``dst_country``) become ``__other__``; namespaces, kinds and ``dst_port``
   stay, so a folded series still says which namespaces talk on which port;
3. when the reserve is full too, every traffic label becomes ``__other__``
   (one catch-all label set per value of the family's own closed label, e.g.
   ``outcome``), which the ``tail_values`` slots kept free always allow.

Every update that lands on a folded label set counts one in ``overflow``
(exported as ``k8spacket_series_overflow_total{metric}``).

Label sets not updated for ``ttl`` seconds are dropped by :meth:`expire`
(unless ``keep`` says otherwise: an open-connections gauge still above zero is
kept). :meth:`drop_where` removes label sets that a predicate matches (deleted
pods). Dropping a counter and seeing it again later restarts it at zero, which
PromQL's ``rate``/``increase`` treat as a counter reset.

Not thread-safe on its own: :class:`k8spacket.metrics.traffic.TrafficMetrics`
holds one lock around all of its budgets.
"""

from __future__ import annotations

from collections.abc import Callable

from k8spacket.metrics.labels import OTHER

Key = tuple[str, ...]
#: An accumulator: ``width`` numbers, then the last-update time.
Slot = list[float]


class SeriesBudget:
    """The label sets of one family, their accumulators, the budget and the folds."""

    __slots__ = (
        "data",
        "family",
        "fold_all_mask",
        "fold_mask",
        "keep",
        "limit",
        "overflow",
        "reserve",
        "tail_values",
        "width",
    )

    def __init__(
        self,
        family: str,
        *,
        limit: int,
        width: int,
        fold_mask: tuple[bool, ...],
        fold_all_mask: tuple[bool, ...],
        tail_values: int = 1,
        keep: Callable[[Slot], bool] | None = None,
    ) -> None:
        if tail_values < 1:
            raise ValueError("tail_values must be at least 1")
        if limit < 2 * tail_values + 1:
            raise ValueError(
                f"series budget of {family} must be at least {2 * tail_values + 1}, got {limit}"
            )
        self.family = family
        self.limit = limit
        self.width = width
        self.fold_mask = fold_mask
        self.fold_all_mask = fold_all_mask
        #: How many values the family's own trailing label (``outcome``…) can take.
        self.tail_values = tail_values
        self.reserve = max(2 * tail_values, limit // 10)
        self.keep = keep
        self.data: dict[Key, Slot] = {}
        self.overflow = 0

    def __len__(self) -> int:
        return len(self.data)

    def slot(self, key: Key, now: float) -> Slot:
        """The accumulator for ``key`` (created or folded as the budget allows)."""
        s = self.data.get(key)
        if s is None:
            s = self._admit(key)
        s[-1] = now
        return s

    def _new(self, key: Key) -> Slot:
        s: Slot = [0] * (self.width + 1)
        self.data[key] = s
        return s

    def _admit(self, key: Key) -> Slot:
        data = self.data
        n = len(data)
        if n < self.limit - self.reserve:
            return self._new(key)
        self.overflow += 1
        folded = self.fold(key, self.fold_mask)
        s = data.get(folded)
        if s is not None:
            return s
        if n < self.limit - self.tail_values:
            return self._new(folded)
        catch_all = self.fold(key, self.fold_all_mask)
        s = data.get(catch_all)
        if s is not None:
            return s
        return self._new(catch_all)

    @staticmethod
    def fold(key: Key, mask: tuple[bool, ...]) -> Key:
        """``key`` with the masked positions set to ``__other__`` (trailing labels kept)."""
        head = tuple(OTHER if m else v for v, m in zip(key, mask, strict=False))
        return head + key[len(mask) :]

    def find_existing(self, key: Key, usable: Callable[[Slot], bool]) -> Slot | None:
        """The slot ``key`` was accounted in (exact or folded), never creating one."""
        data = self.data
        for k in (key, self.fold(key, self.fold_mask), self.fold(key, self.fold_all_mask)):
            s = data.get(k)
            if s is not None and usable(s):
                return s
        return None

    def expire(self, before: float) -> int:
        """Drop label sets last updated before ``before``; returns how many."""
        keep = self.keep
        dead = [k for k, s in self.data.items() if s[-1] < before and (keep is None or not keep(s))]
        for k in dead:
            del self.data[k]
        return len(dead)

    def drop_where(self, predicate: Callable[[Key], bool]) -> int:
        """Drop label sets whose key matches ``predicate``; returns how many."""
        dead = [k for k in self.data if predicate(k)]
        for k in dead:
            del self.data[k]
        return len(dead)

    def snapshot(self) -> list[tuple[Key, tuple[float, ...]]]:
        """A copy of every label set and its numbers (without the update time)."""
        w = self.width
        return [(k, tuple(s[:w])) for k, s in self.data.items()]
