"""Unmodified ipwhois against real DNS, whois and HTTPS RDAP servers in a network namespace.

The servers and the resolver run in ``tests/fixtures/registry_lab.py`` under
``ip netns exec`` (which bind-mounts ``/etc/netns/NAME/hosts`` and ``resolv.conf``
so the registries' names and Team Cymru's DNS zone lead to 127.0.0.1). Nothing
leaves the namespace.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.registry_lab import REGISTRY_HOSTS

LAB = Path(__file__).parent / "fixtures" / "registry_lab.py"


@pytest.fixture(scope="module")
def lab_output() -> Iterator[dict[str, Any]]:
    ns = "kp" + secrets.token_hex(2)
    etc = Path("/etc/netns") / ns
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (etc / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in REGISTRY_HOSTS)
        )
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-W", "error", str(LAB)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        yield json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)


pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_first_record_is_external_with_unknown_organisation(lab_output: dict[str, Any]) -> None:
    for ip, got in lab_output["first"].items():
        assert got == {"kind": "external", "workload": "unknown", "org": "", "country": ""}, ip


@pytest.mark.parametrize(
    ("ip", "org", "country"),
    [
        ("8.8.8.8", "Google LLC", "US"),  # RDAP registrant
        ("9.9.9.9", "Quad9 Foundation", "FR"),  # RDAP garbage → whois + whoisRegexp
        ("1.1.1.1", "CLOUDFLARENET, US", "AU"),  # RDAP hung, whois without OrgName → AS name
        ("81.2.69.142", "Andrews & Arnold Ltd", "GB"),  # RDAP answered after 2 s
        ("4.4.4.4", "", "US"),  # DNS NXDOMAIN, RDAP and whois refused: GeoIP only
        ("5.5.5.5", "", "DE"),  # DNS never answers
    ],
    ids=["rdap", "whois-fallback", "rdap-hangs", "rdap-slow", "refused", "dns-silent"],
)
def test_later_records_carry_the_name(
    lab_output: dict[str, Any], ip: str, org: str, country: str
) -> None:
    got = lab_output["final"][ip]
    assert got["kind"] == "external"
    assert (got["org"], got["country"]) == (org, country)
    assert got["workload"] == (org or "unknown")


def test_caller_is_answered_while_a_registry_hangs(lab_output: dict[str, Any]) -> None:
    assert lab_output["hang_reached"]
    # the GeoIP stage already answered; the registry stage is stuck in the hung server
    assert lab_output["during_hang"]["1.1.1.1"]["country"] == "AU"
    assert lab_output["during_hang"]["1.1.1.1"]["workload"] == "unknown"
    assert lab_output["during_hang"]["8.8.4.4"]["kind"] == "external"
    assert lab_output["idle_one"] and lab_output["idle_two"]


def test_counters_record_every_outcome(lab_output: dict[str, Any]) -> None:
    counts = {(s, r): n for s, r, n in lab_output["counts"]}
    assert counts[("rdap", "ok")] == 2
    assert counts[("rdap", "timeout")] == 1
    assert counts[("rdap", "refused")] == 2
    assert counts[("rdap", "error")] == 2  # garbage, and 404 for 8.8.4.4
    assert counts[("whois", "ok")] == 1
    assert counts[("whois", "not_found")] == 2
    assert counts[("whois", "refused")] == 2
    assert counts[("asn_dns", "timeout")] == 1
    assert counts[("asn_dns", "not_found")] == 2
    assert counts[("geoip", "ok")] == 7


def test_ipwhois_asked_what_we_served(lab_output: dict[str, Any]) -> None:
    seen = lab_output["seen"]
    assert "dns 8.8.8.8.origin.asn.cymru.com." in seen
    assert "dns AS15169.asn.cymru.com." in seen
    assert "rdap rdap.arin.net /registry/ip/8.8.8.8" in seen
    assert "rdap rdap.db.ripe.net /ip/81.2.69.142" in seen
    assert "whois n + 9.9.9.9" in seen  # ARIN's query syntax
