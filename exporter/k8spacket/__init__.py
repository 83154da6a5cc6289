"""k8spacket: TCP traffic visibility for Kubernetes clusters."""

__version__ = "0.2.0"
