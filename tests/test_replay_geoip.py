"""``k8spacket replay`` names external addresses by GeoIP, synchronously (offline).

Uses MaxMind's own test database (81.2.69.142 is GB/London in it) and the
GeoLite2-City bundled with ``maxminddb-geolite2`` (the default).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require

DEMO = REPO / "exporter" / "k8spacket" / "samples" / "demo.pcap"
INVENTORY = REPO / "exporter" / "k8spacket" / "samples" / "demo-inventory.yaml"
CITY_TEST = REPO / "tests" / "fixtures" / "maxmind" / "GeoLite2-City-Test.mmdb"


def replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "k8spacket.cli", "replay", "--no-summary", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def external_records(stdout: str) -> list[dict[str, object]]:
    recs = [json.loads(line) for line in stdout.splitlines()]
    return [r for r in recs if r["dst"] == "81.2.69.142"]


@pytest.mark.parametrize(
    ("extra", "workload"),
    [
        ((), "unknown"),
        (("--inventory", INVENTORY), "payments.example"),
    ],
    ids=["no-inventory", "inventory-names-it"],
)
def test_external_end_gets_country_from_the_bundled_database(
    extra: tuple[str | Path, ...], workload: str
) -> None:
    p = replay(*extra, DEMO)
    assert p.returncode == 0, p.stderr
    ext = external_records(p.stdout)
    assert len(ext) == 1
    assert ext[0]["dst_kind"] == "external"
    assert ext[0]["dst_country"] == "GB"
    assert ext[0]["dst_workload"] == workload
    # the pods' private addresses are never external
    assert all(
        r["src_kind"] != "external" for r in (json.loads(line) for line in p.stdout.splitlines())
    )


def test_named_geoip_database_and_table_column() -> None:
    require(
        CITY_TEST.is_file(), "MaxMind test databases (tests/fixtures/fetch_maxmind_test_dbs.sh)"
    )
    p = replay("--geoip-db", CITY_TEST, DEMO)
    assert p.returncode == 0, p.stderr
    assert external_records(p.stdout)[0]["dst_country"] == "GB"
    t = replay("--format", "table", "--geoip-db", CITY_TEST, DEMO)
    header, *rows = t.stdout.splitlines()
    assert "country" in header.split()
    assert any("81.2.69.142" in row and " GB " in row for row in rows)


def test_no_geoip_leaves_external_ends_unnamed() -> None:
    p = replay("--no-geoip", DEMO)
    assert p.returncode == 0, p.stderr
    ext = external_records(p.stdout)
    assert ext[0]["dst_country"] == ""
    # an end nothing named: spelled as in the metrics, name and namespace empty
    assert (ext[0]["dst_kind"], ext[0]["dst_workload"]) == ("unknown", "unknown")
    assert (ext[0]["dst_name"], ext[0]["dst_namespace"]) == ("", "")


def test_missing_geoip_database_is_one_line_naming_the_option(tmp_path: Path) -> None:
    p = replay("--geoip-db", tmp_path / "nope.mmdb", DEMO)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        f"k8spacket: --geoip-db: GeoIP database '{tmp_path / 'nope.mmdb'}' does not exist"
    ]
    assert p.stdout == ""
