"""Reading an agent's exposition back: samples as plain tuples, for tools that watch agents.

The demo's live view and summary (``k8spacket.demo.observe``) read both agents'
``/metrics``. Only ``metrics/`` may import prometheus_client (the import
contract), so the parsing lives here, with prometheus_client's own parser.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def parse_samples(text: str) -> list[Sample]:
    """(sample name, labels, value) of every sample in Prometheus text exposition."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
