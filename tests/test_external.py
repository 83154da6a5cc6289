"""The external resolver: never blocks, names records, bounded caches and queues, counters.

Organisations come from real databases (MaxMind's test ASN database, the packaged
GeoLite2-City). Where a registry is needed and the behaviour under test is the
resolver's own (queueing, dropping, caching), a small in-process registry stands
in for ``whois.RegistryClient``; ipwhois itself is exercised against real servers
in ``test_whois_lab.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from fixtures.external_traffic import decoded_packets, server_address
from k8spacket.enrich.classify import PRIVATE_NETWORKS, is_private
from k8spacket.enrich.external import PENDING, ExternalResolver, duty_pause
from k8spacket.enrich.geoip import GeoAnswer, GeoIPDatabase
from k8spacket.enrich.identity import Identity, ResolverChain
from k8spacket.enrich.whois import (
    RegistryAnswer,
    RegistryRateLimiter,
    RegistryResult,
    TokenBucket,
    compile_whois_regexp,
    match_org,
)
from k8spacket.flows.record import ConnectionRecord
from k8spacket.flows.tracker import ConnectionTracker
from test_geoip import maxmind


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class SlowRegistry:
    """Answers every address after ``delay`` seconds (released early at teardown)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stop = threading.Event()
        self.calls = 0

    def lookup(self, ip: str) -> RegistryResult:
        self.calls += 1
        self.stop.wait(self.delay)
        return RegistryResult(RegistryAnswer(f"Org of {ip}", "ZZ", 64512), [("rdap", "ok")])


class CostlyGeoIP(GeoIPDatabase):
    """Answers every address with a country and advances ``clock`` by ``cost`` per lookup,
    so a batch's budget is spent by lookups, not by the machine's speed."""

    def __init__(self, clock: FakeClock, cost: float) -> None:  # opens no database
        self.clock, self.cost, self.calls = clock, cost, 0

    def lookup(self, ip: str) -> GeoAnswer | None:
        self.calls += 1
        self.clock.now += self.cost
        return GeoAnswer(country="ZZ")


def rec(dst: str, src: str = "10.244.1.5") -> ConnectionRecord:
    return ConnectionRecord(src, 40000, dst, 443, 0, 0, None, 0.0, "established", "fin", 0.0, 0.0)


@pytest.fixture
def asn_db() -> Iterator[GeoIPDatabase]:
    db = GeoIPDatabase(maxmind("GeoLite2-City-Test.mmdb"), maxmind("GeoLite2-ASN-Test.mmdb"))
    yield db
    db.close()


def test_first_record_unknown_later_named_from_asn_database(asn_db: GeoIPDatabase) -> None:
    r = ExternalResolver(geoip=asn_db)
    try:
        first = rec("1.128.0.0")
        r.name_record(first)
        assert (first.dst_kind, first.dst_workload, first.dst_org) == ("external", "unknown", "")
        assert first.src_kind == ""  # private client: not ours to name
        assert r.wait_idle(30)
        later = rec("1.128.0.0")
        r.name_record(later)
        assert (later.dst_kind, later.dst_workload, later.dst_org) == (
            "external",
            "Telstra Pty Ltd",
            "Telstra Pty Ltd",
        )
        london = rec("81.2.69.142")
        r.name_record(london)
        assert r.wait_idle(30)
        r.name_record(london)
        assert (london.dst_country, london.dst_workload) == ("GB", "unknown")
        assert r.counts.snapshot() == {("geoip", "ok"): 2}
    finally:
        r.close()


def test_external_client_connecting_in_is_named_as_source(asn_db: GeoIPDatabase) -> None:
    r = ExternalResolver(geoip=asn_db)
    try:
        inbound = rec("10.244.1.5", src="1.128.0.0")
        r.name_record(inbound)
        assert r.wait_idle(30)
        r.name_record(inbound)
        assert (inbound.src_kind, inbound.src_workload, inbound.src_org) == (
            "external",
            "Telstra Pty Ltd",
            "Telstra Pty Ltd",
        )
        assert inbound.dst_kind == ""
    finally:
        r.close()


def test_private_and_named_addresses_are_never_queued(asn_db: GeoIPDatabase) -> None:
    from k8spacket.enrich.classify import AddressClassifier

    r = ExternalResolver(
        geoip=asn_db, classifier=AddressClassifier({"34.1.2.3"}.__contains__), start=False
    )
    for ip in ("10.0.0.1", "100.64.3.2", "fd00::1", "169.254.169.254", "34.1.2.3"):
        assert r.lookup(ip, 443) is None
    assert not r.pending and not r.known
    assert r.lookup("34.1.2.4") == Identity("", "", "unknown", "external")
    assert r.pending == {"34.1.2.4"}


def test_wiring_behind_the_identity_chain(asn_db: GeoIPDatabase) -> None:
    """The chain names what Kubernetes/the inventory know; the external resolver the rest."""

    class Inventory:
        def lookup(self, ip: str, port: int | None = None) -> Identity | None:
            return Identity("github", "", "github", "external") if ip == "1.128.0.1" else None

    r = ExternalResolver(geoip=asn_db)
    chain = ResolverChain([Inventory(), r])
    try:
        a, b = rec("1.128.0.0"), rec("1.128.0.1")
        for record in (a, b):
            chain.name_record(record)
            r.name_record(record)
        assert r.wait_idle(30)
        for record in (a, b):
            chain.name_record(record)
            r.name_record(record)
        assert (a.dst_kind, a.dst_workload, a.dst_org) == (
            "external",
            "Telstra Pty Ltd",
            "Telstra Pty Ltd",
        )
        # the inventory's name stays, the organisation is added
        assert (b.dst_kind, b.dst_workload, b.dst_org) == ("external", "github", "Telstra Pty Ltd")
        assert a.src_kind == "unknown"  # the chain's verdict for an unnamed private client
    finally:
        r.close()


def test_ttl_and_negative_ttl_expire_with_the_injected_clock() -> None:
    clock = FakeClock()
    registry = SlowRegistry(0.0)
    r = ExternalResolver(geoip=None, registry=registry, clock=clock, ttl=100.0, negative_ttl=10.0)
    try:
        assert r.info("8.8.8.8") is PENDING
        assert r.wait_idle(30)
        info = r.info("8.8.8.8")
        assert info is not None and info.org == "Org of 8.8.8.8"
        clock.now += 101
        r.expire()
        assert "8.8.8.8" not in r.known
        assert r.info("8.8.8.8") is PENDING  # looked up again
        assert r.wait_idle(30)
        assert registry.calls == 2
    finally:
        r.close()


def test_full_queue_is_a_counted_drop() -> None:
    r = ExternalResolver(geoip=None, queue_size=3, start=False)
    for i in range(10):
        r.lookup(server_address(i))
    assert len(r.pending) == 3
    assert r.counts.snapshot() == {("queue", "dropped"): 7}
    r.lookup(server_address(0))  # already queued: no second entry, no drop
    assert r.counts.snapshot() == {("queue", "dropped"): 7}


@pytest.mark.parametrize(
    ("spent", "elapsed", "duty", "pause"),
    [
        (0.001, 0.001, 0.05, 0.019),  # 1 ms of work at 5%: 19 ms of rest
        (0.001, 0.010, 0.05, 0.010),  # a worker that waited on the network rests less
        (0.001, 0.050, 0.05, 0.0),  # waited long enough already
        (0.0, 0.0, 0.05, 0.0),
        (0.002, 0.002, 1.0, 0.0),  # no limit
    ],
    ids=["cpu-bound", "partly-waiting", "mostly-waiting", "idle", "duty-1"],
)
def test_duty_pause(spent: float, elapsed: float, duty: float, pause: float) -> None:
    assert duty_pause(spent, elapsed, duty) == pytest.approx(pause)


def test_geoip_batch_works_within_its_budget_and_the_rest_waits() -> None:
    clock = FakeClock()
    geo = CostlyGeoIP(clock, cost=0.001)  # 1 ms per lookup; budget 5% of 50 ms = 2.5 ms
    r = ExternalResolver(
        geoip=geo, work_clock=clock, geoip_duty=0.05, interval=0.05, queue_size=8, start=False
    )
    handed = [server_address(i) for i in range(10)]
    for ip in handed:
        assert r.info(ip) is PENDING
    assert len(r._queue) == 8 and r.counts.snapshot() == {("queue", "dropped"): 2}

    pause = r.geoip_batch()
    assert geo.calls == 3  # 1, 2, 3 ms: the third crosses the 2.5 ms budget
    assert pause == pytest.approx(0.003 / 0.05 - 0.003)  # average stays at 5%
    assert r.pending == set(handed[3:8])
    assert [r.info(ip) for ip in handed[:3]] == [r.info(handed[0])] * 3
    assert r.info(handed[0]) is not PENDING

    batches = 1
    while r.pending:
        r.geoip_batch()
        batches += 1
        assert len(r._queue) <= 8 and len(r.known) <= 8
    assert batches == 3  # 3 + 3 + 2
    counts = r.counts.snapshot()
    looked_up = counts[("geoip", "ok")]
    assert looked_up == geo.calls == 8
    assert looked_up + counts[("queue", "dropped")] == len(handed)

    # the two dropped addresses are handed off again on their next record
    assert r.info(handed[8]) is PENDING and r.info(handed[9]) is PENDING
    assert r.pending == set(handed[8:])


def test_idle_geoip_stage_polls_on_the_interval() -> None:
    clock = FakeClock()
    r = ExternalResolver(geoip=None, work_clock=clock, interval=0.05, start=False)
    assert r.geoip_batch() == pytest.approx(0.05)
    assert r.wait_idle(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"geoip_duty": 0.0}, {"registry_duty": 1.5}, {"interval": 0.0}, {"queue_size": 0}],
    ids=["geoip-duty-0", "registry-duty-over-1", "interval-0", "queue-0"],
)
def test_bad_budget_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExternalResolver(geoip=None, start=False, **kwargs)


def test_registry_worker_rests_after_a_costly_lookup_and_stopping_ends_the_rest() -> None:
    cpu = FakeClock()
    called = threading.Event()

    class CostlyRegistry:
        calls = 0

        def lookup(self, ip: str) -> RegistryResult:
            self.calls += 1
            cpu.now += 10.0  # ten CPU seconds: at 1% the worker must rest ~1000 s
            called.set()
            return RegistryResult(RegistryAnswer("Org", "ZZ", 64512), [("rdap", "ok")])

    registry = CostlyRegistry()
    r = ExternalResolver(
        geoip=None, registry=registry, workers=1, registry_duty=0.01, cpu_clock=cpu
    )
    threads = list(r._threads)
    addresses = [server_address(i) for i in range(3)]
    for ip in addresses:
        r.lookup(ip)
    assert called.wait(30)
    assert not r.wait_idle(0.3)  # two addresses wait at the registry queue
    assert r.pending == set(addresses[1:])
    r.close(5.0)
    assert not any(t.is_alive() for t in threads)
    assert registry.calls == 1
    assert r.counts.snapshot() == {("rdap", "ok"): 1}


@pytest.mark.parametrize("first", range(256), ids=lambda b: f"{b}.x")
def test_fast_classification_agrees_with_the_table(first: int) -> None:
    """``is_private`` decides most addresses by their first byte; check it against a
    plain ``ipaddress`` reading of ``PRIVATE_NETWORKS`` at both ends of every /8 and
    at the ends of every listed range inside it, for IPv4 and for IPv6."""
    import ipaddress

    nets = [ipaddress.ip_network(c) for c, _ in PRIVATE_NETWORKS]
    mapped, nat64 = ipaddress.ip_network("::ffff:0:0/96"), ipaddress.ip_network("64:ff9b::/96")

    def reference(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(a, ipaddress.IPv6Address) and (a in mapped or a in nat64):
            a = ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
        return any(a.version == n.version and a in n for n in nets)

    for bits in (32, 128):
        lo, hi = first << (bits - 8), ((first + 1) << (bits - 8)) - 1
        probes = {lo, hi, (lo + hi) // 2}
        for n in nets:
            a, b = int(n.network_address), int(n.broadcast_address)
            probes |= {v for v in (a - 1, a, b, b + 1) if lo <= v <= hi and n.max_prefixlen == bits}
        if bits == 128 and first == 0:
            probes |= {int(mapped.network_address) + 0x0A000001, int(nat64.network_address) + 8}
        for v in probes:
            addr = ipaddress.ip_address(v) if bits == 32 else ipaddress.IPv6Address(v)
            assert is_private(str(addr)) is reference(addr), addr


def test_token_bucket_and_per_registry_limits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() == 0.0
    limiter = RegistryRateLimiter(rate=1.0, burst=1, max_wait=1.5, clock=clock, sleep=clock.sleep)
    assert limiter.acquire("arin") and limiter.acquire("ripencc")  # separate buckets
    assert limiter.acquire("arin")  # waits 1 s for the next token
    assert clock.slept == [pytest.approx(1.0)]
    limiter.max_wait = 0.5
    assert not limiter.acquire("arin")  # would wait longer than allowed: rate_limited


@pytest.mark.parametrize(
    ("pattern", "raw", "org"),
    [
        (
            r"(?:OrgName:|org-name:)\s*(.*)",
            "NetRange: x\nOrgName:   Example Inc.\n",
            "Example Inc.",
        ),
        (r"(?:OrgName:|org-name:)\s*(.*)", "org-name:  Beispiel GmbH\r\n", "Beispiel GmbH"),
        (r"(?:OrgName:|org-name:)\s*(.*)", "netname: X\n", ""),
        (r"descr:.*", "descr: Whole Match\n", "descr: Whole Match"),
    ],
    ids=["arin", "ripe", "none", "no-group"],
)
def test_whois_regexp_like_upstream(pattern: str, raw: str, org: str) -> None:
    assert match_org(compile_whois_regexp(pattern), raw) == org


def test_bad_whois_regexp_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"^k8sPacket\.metrics\.reverseLookup\.whoisRegexp: "):
        compile_whois_regexp("(unclosed")


@pytest.mark.slow
def test_100k_distinct_external_addresses_through_the_tracker() -> None:
    """Every record is named, caches and queues stay within their sizes, drops are counted."""
    n = 100_000
    packets = decoded_packets(n)
    registry = SlowRegistry(2.0)
    r = ExternalResolver(
        geoip=GeoIPDatabase(),
        registry=registry,
        cache_size=2000,
        negative_cache_size=1000,
        queue_size=512,
        registry_queue_size=64,
        workers=4,
        private_cache_size=100,
    )
    bound_pending = 512 + 64 + 4 + 1  # both queues, the workers and the GeoIP thread
    named: list[tuple[str, str]] = []
    worst = {"cache": 0, "negative": 0, "known": 0, "pending": 0, "private": 0}

    def sink(record: ConnectionRecord) -> None:
        r.name_record(record)
        named.append((record.dst_kind, record.dst_workload))
        if len(named) % 997 == 0:
            worst["cache"] = max(worst["cache"], len(r.cache))
            worst["negative"] = max(worst["negative"], len(r.negative_cache))
            worst["known"] = max(worst["known"], len(r.known))
            worst["pending"] = max(worst["pending"], len(r.pending))
            worst["private"] = max(worst["private"], len(r.private))

    tracker = ConnectionTracker(sink)
    threads = list(r._threads)
    try:
        for ts, d in packets:
            tracker.add(ts, d)
        # The stage keeps its 2% duty: on a busy machine it may have handed fewer
        # addresses to the registry queue than it holds (64 + 4 workers) by the
        # time the packets are in. What is still on the hand-off fills it.
        deadline = time.monotonic() + 60
        while (
            not r.counts.snapshot().get(("registry_queue", "dropped"))
            and r._queue
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        registry.stop.set()
        r.close(5.0)
    # the accounting below holds once the stages have stopped (an address taken
    # off the hand-off is counted when its lookup ends)
    assert [t.name for t in threads if t.is_alive()] == []
    assert len(named) == n
    assert all(kind == "external" for kind, _ in named)
    assert all(w == "unknown" or w.startswith("Org of ") for _, w in named)
    assert worst["cache"] <= 2000 and worst["negative"] <= 1000
    assert worst["pending"] <= bound_pending
    assert worst["known"] <= 2000 + 1000 + bound_pending
    assert worst["private"] <= 100
    counts = r.counts.snapshot()
    dropped = counts.get(("queue", "dropped"), 0)
    looked_up = sum(v for (s, _), v in counts.items() if s == "geoip")
    assert dropped > 0
    # every address: looked up, queued or dropped
    assert dropped + looked_up + len(r._queue) == n, (dropped, looked_up, len(r._queue), counts)
    assert counts.get(("registry_queue", "dropped"), 0) > 0
