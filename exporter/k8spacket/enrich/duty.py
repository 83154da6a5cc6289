"""CPU budgets for background work: how long to pause so work stays a fraction of time.

The external naming stages (GeoIP, registries) run beside the packet path in
one interpreter; while they run Python they hold the lock the packet path needs.
Each one works, measures what it spent, and sleeps so that its share stays at
most ``duty`` of one core.
"""

from __future__ import annotations


def duty_pause(spent: float, elapsed: float, duty: float) -> float:
    """Seconds to sleep after ``spent`` seconds of work in ``elapsed`` seconds, so
    that work stays at most ``duty`` (a fraction) of the time: ``spent / duty -
    elapsed``, never negative."""
    return max(0.0, spent / duty - elapsed)
