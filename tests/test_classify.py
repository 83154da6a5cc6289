"""Which addresses are looked up (external) and which never are."""

from __future__ import annotations

import pytest

from k8spacket.enrich.classify import PRIVATE_NETWORKS, AddressClassifier, is_private

CASES = [
    ("10.244.1.5", True),
    ("172.16.0.1", True),
    ("172.32.0.1", False),
    ("192.168.1.1", True),
    ("100.64.0.1", True),  # RFC 6598
    ("100.127.255.255", True),
    ("100.128.0.0", False),
    ("127.0.0.1", True),
    ("169.254.169.254", True),
    ("224.0.0.251", True),
    ("255.255.255.255", True),
    ("192.0.2.10", True),
    ("198.51.100.7", True),
    ("203.0.113.9", True),
    ("0.0.0.0", True),
    ("8.8.8.8", False),
    ("81.2.69.142", False),
    ("::1", True),
    ("::", True),
    ("fe80::1", True),
    ("fd00::5", True),
    ("ff02::1", True),
    ("2001:db8::1", True),
    ("2a00:1450::1", False),
    ("::ffff:10.0.0.1", True),
    ("::ffff:8.8.8.8", False),
    ("64:ff9b::a00:1", True),
    ("64:ff9b::808:808", False),
    ("not-an-ip", True),
    ("", True),
]


@pytest.mark.parametrize(("ip", "private"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_is_private(ip: str, private: bool) -> None:
    assert is_private(ip) is private


@pytest.mark.parametrize("cidr", [c for c, _ in PRIVATE_NETWORKS], ids=lambda c: c)
def test_every_listed_range_is_private_at_both_ends(cidr: str) -> None:
    import ipaddress

    net = ipaddress.ip_network(cidr)
    assert is_private(str(net.network_address))
    assert is_private(str(net.broadcast_address))


def test_named_addresses_are_not_external() -> None:
    named = {"34.1.2.3"}
    c = AddressClassifier(is_named=named.__contains__)
    assert c.classify("34.1.2.3") == "named"
    assert c.classify("34.1.2.4") == "external"
    assert c.classify("10.0.0.1") == "private"
    assert not c.is_external("34.1.2.3")
