"""Prometheus metrics: the only layer that touches prometheus_client."""
