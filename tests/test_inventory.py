"""The inventory file (naming without Kubernetes) and the resolver chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8spacket.enrich.identity import Identity, Resolver, ResolverChain
from k8spacket.enrich.inventory import Inventory, InventoryError
from k8spacket.flows.record import KINDS, ConnectionRecord
from kmockserver import record

INVENTORY = """\
endpoints:
  - cidr: 10.244.1.5/32
    namespace: shop
    name: cart-7d9f4-x2x
    workload: cart
    kind: pod
  - cidr: 10.244.1.0/24
    name: node-a-pods
    kind: host
  - cidr: 10.0.0.0/8
    name: corp
    kind: external
  - cidr: 10.96.0.10
    namespace: shop
    name: cart
    kind: service
  - cidr: fd00:244::/64
    name: v6-pods
    kind: host
  - cidr: fd00:244::5/128
    namespace: shop
    name: cart-v6
    workload: cart
    kind: pod
  - cidr: 0.0.0.0/0
    name: internet
    kind: external
"""

LOOKUPS = [
    ("exact-32", "10.244.1.5", Identity("cart-7d9f4-x2x", "shop", "cart", "pod")),
    ("inside-24", "10.244.1.77", Identity("node-a-pods", "", "node-a-pods", "host")),
    ("inside-8", "10.9.9.9", Identity("corp", "", "corp", "external")),
    ("bare-address", "10.96.0.10", Identity("cart", "shop", "cart", "service")),
    ("default-route", "8.8.8.8", Identity("internet", "", "internet", "external")),
    ("v6-exact", "fd00:244::5", Identity("cart-v6", "shop", "cart", "pod")),
    ("v6-other-spelling", "fd00:244:0:0::5", Identity("cart-v6", "shop", "cart", "pod")),
    ("v6-prefix", "fd00:244::9", Identity("v6-pods", "", "v6-pods", "host")),
    ("v6-outside", "2001:db8::1", None),
    ("not-an-address", "nonsense", None),
]


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    path.write_text(INVENTORY)
    return Inventory.load(path)


@pytest.mark.parametrize(("ip", "expected"), [t[1:] for t in LOOKUPS], ids=[t[0] for t in LOOKUPS])
def test_longest_prefix_wins(inventory: Inventory, ip: str, expected: Identity | None) -> None:
    assert inventory.lookup(ip) == expected
    assert inventory.lookup(ip, 443) == expected  # ports do not matter to an inventory


def test_order_in_file_does_not_matter() -> None:
    a = Inventory.from_yaml(
        "endpoints: [{cidr: 10.0.0.0/8, name: big, kind: host},"
        " {cidr: 10.1.0.0/16, name: small, kind: host}]"
    )
    b = Inventory.from_yaml(
        "endpoints: [{cidr: 10.1.0.0/16, name: small, kind: host},"
        " {cidr: 10.0.0.0/8, name: big, kind: host}]"
    )
    for inv in (a, b):
        assert inv.lookup("10.1.2.3") == Identity("small", "", "small", "host")
        assert inv.lookup("10.2.2.3") == Identity("big", "", "big", "host")


def test_empty_documents() -> None:
    assert len(Inventory.from_yaml("")) == 0
    assert len(Inventory.from_yaml("endpoints: []")) == 0
    assert Inventory.from_yaml("endpoints:").lookup("10.0.0.1") is None


def _record(src: str, dst: str) -> ConnectionRecord:
    return record(src, dst, bytes_sent=1, bytes_received=2)


def test_name_record(inventory: Inventory) -> None:
    rec = _record("10.244.1.5", "10.96.0.10")
    inventory.name_record(rec)
    assert rec.to_dict() == _record("10.244.1.5", "10.96.0.10").to_dict() | {
        "src_name": "cart-7d9f4-x2x",
        "src_namespace": "shop",
        "src_workload": "cart",
        "src_kind": "pod",
        "dst_name": "cart",
        "dst_namespace": "shop",
        "dst_workload": "cart",
        "dst_kind": "service",
    }


def test_unnamed_end_is_unknown() -> None:
    rec = _record("192.0.2.1", "10.0.0.1")
    Inventory.from_yaml("endpoints: [{cidr: 10.0.0.1, name: db, kind: host}]").name_record(rec)
    assert (rec.src_kind, rec.src_name, rec.src_workload) == ("unknown", "", "")
    assert (rec.dst_kind, rec.dst_name) == ("host", "db")
    assert {rec.src_kind, rec.dst_kind} <= set(KINDS)


class _Table:
    """A resolver from a dict (stands in for the k8s cache: only our own protocol)."""

    def __init__(self, table: dict[tuple[str, int | None], Identity]) -> None:
        self.table = table

    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        return self.table.get((ip, port)) or self.table.get((ip, None))


def test_chain_asks_in_order(inventory: Inventory) -> None:
    k8s = _Table({("10.244.1.5", None): Identity("live-pod", "shop", "cart", "pod")})
    chain = ResolverChain([k8s, inventory])
    assert isinstance(k8s, Resolver)
    assert chain.lookup("10.244.1.5") == Identity("live-pod", "shop", "cart", "pod")
    assert chain.lookup("10.244.1.6") == Identity("node-a-pods", "", "node-a-pods", "host")
    rec = _record("10.244.1.5", "8.8.8.8")
    chain.name_record(rec)
    assert (rec.src_name, rec.dst_name, rec.dst_kind) == ("live-pod", "internet", "external")


def test_chain_passes_the_server_port_only() -> None:
    seen: list[tuple[str, int | None]] = []

    class Spy:
        def lookup(self, ip: str, port: int | None = None) -> Identity | None:
            seen.append((ip, port))
            return None

    ResolverChain([Spy()]).name_record(_record("10.0.0.1", "10.0.0.2"))
    assert seen == [("10.0.0.1", None), ("10.0.0.2", 80)]


ERRORS = [
    ("not-yaml", "endpoints: [", "not valid YAML at line 1"),
    ("not-a-mapping", "- a\n- b\n", "expected a mapping with an 'endpoints' list, got list"),
    ("unknown-top", "endpoint: []", "unknown top-level key 'endpoint'"),
    ("endpoints-not-list", "endpoints: {cidr: 10.0.0.1}", "'endpoints' must be a list, got dict"),
    ("entry-not-mapping", "endpoints: [10.0.0.1]", "endpoints[0]: expected a mapping, got str"),
    ("missing-cidr", "endpoints: [{name: a, kind: pod}]", "endpoints[0]: missing 'cidr'"),
    (
        "bad-cidr",
        "endpoints: [{cidr: 10.0.0.300, name: a, kind: pod}]",
        "endpoints[0] (cidr 10.0.0.300): bad cidr: '10.0.0.300' does not appear to be",
    ),
    (
        "host-bits",
        "endpoints: [{cidr: 10.0.0.1/8, name: a, kind: pod}]",
        "endpoints[0] (cidr 10.0.0.1/8): bad cidr: 10.0.0.1/8 has host bits set",
    ),
    ("missing-name", "endpoints: [{cidr: 10.0.0.1, kind: pod}]", "missing 'name'"),
    ("missing-kind", "endpoints: [{cidr: 10.0.0.1, name: a}]", "missing 'kind' (one of pod,"),
    (
        "bad-kind",
        "endpoints: [{cidr: 10.0.0.1, name: a, kind: deployment}]",
        "kind 'deployment' is not one of pod, service, node, host, external",
    ),
    (
        "typo-key",
        "endpoints: [{cidr: 10.0.0.1, name: a, kind: pod, workoad: b}]",
        "endpoints[0]: unknown key 'workoad'",
    ),
    (
        "not-a-string",
        "endpoints: [{cidr: 10.0.0.1, name: 5, kind: pod}]",
        "endpoints[0]: name must be a string, got int",
    ),
    (
        "duplicate",
        "endpoints: [{cidr: 10.0.0.1, name: a, kind: pod}, {cidr: 10.0.0.1/32, name: b, kind: pod}]",
        "endpoints[1]: duplicate cidr 10.0.0.1/32 (already names 'a')",
    ),
]


@pytest.mark.parametrize(("text", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as err:
        Inventory.load(path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"inventory {path}: ")
    assert message in line


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError, match=r"^inventory .*nope\.yaml: cannot read: No such file"):
        Inventory.load(path)
