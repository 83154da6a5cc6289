"""Naming addresses: Kubernetes, inventory files, GeoIP and whois (never on the packet path)."""
