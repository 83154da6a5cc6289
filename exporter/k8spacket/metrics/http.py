"""The ``/metrics`` answer: the exposition of a registry, for the agent's HTTP server.

The server (``server.py``) knows nothing of prometheus_client (only ``metrics/``
does, an import contract in ``make lint``): it hands the registry it was given
and the scrape's ``Accept`` header here and sends back the content type and body.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["CollectorRegistry", "metrics_response"]


def metrics_response(registry: CollectorRegistry, accept: str | None = None) -> tuple[str, bytes]:
    """(content type, body) of a scrape of ``registry`` (text format 0.0.4)."""
    return CONTENT_TYPE_LATEST, generate_latest(registry)
