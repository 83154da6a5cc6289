"""GeoIP with MaxMind's own test databases, the packaged GeoLite2 and mmdb-writer edge cases."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import require
from fixtures.mmdb_edge import write_asn, write_city
from k8spacket.enrich.geoip import (
    ASN_SETTING,
    CITY_SETTING,
    GeoAnswer,
    GeoIPConfigError,
    GeoIPDatabase,
    GeoIPLookupError,
)

MAXMIND = Path(__file__).parent / "fixtures" / "maxmind"


def maxmind(name: str) -> str:
    path = MAXMIND / name
    require(
        path.is_file(),
        f"{path} missing: run tests/fixtures/fetch_maxmind_test_dbs.sh (make deps does)",
    )
    return str(path)


def test_maxmind_test_databases() -> None:
    db = GeoIPDatabase(maxmind("GeoLite2-City-Test.mmdb"), maxmind("GeoLite2-ASN-Test.mmdb"))
    try:
        assert db.has_asn
        got = db.lookup("81.2.69.142")
        assert got is not None and (got.country, got.city) == ("GB", "London")
        assert db.lookup("1.128.0.0") == GeoAnswer("", "", 1221, "Telstra Pty Ltd")
        assert db.lookup("10.0.0.1") is None
    finally:
        db.close()


def test_asn_database_beside_the_city_database_is_found(tmp_path: Path) -> None:
    shutil.copy(maxmind("GeoLite2-City-Test.mmdb"), tmp_path / "GeoLite2-City.mmdb")
    shutil.copy(maxmind("GeoLite2-ASN-Test.mmdb"), tmp_path / "GeoLite2-ASN.mmdb")
    db = GeoIPDatabase(str(tmp_path / "GeoLite2-City.mmdb"))
    assert db.asn_path == str(tmp_path / "GeoLite2-ASN.mmdb")
    assert db.lookup("1.128.0.0") == GeoAnswer("", "", 1221, "Telstra Pty Ltd")
    db.close()
    no_asn = GeoIPDatabase(str(tmp_path / "GeoLite2-City.mmdb"), "")
    assert not no_asn.has_asn
    no_asn.close()


def test_packaged_geolite2_is_the_default() -> None:
    db = GeoIPDatabase()
    try:
        assert "maxminddb_geolite2" in db.city_path
        got = db.lookup("81.2.69.142")
        assert got is not None and got.country == "GB"
        assert not db.has_asn
    finally:
        db.close()


def test_edge_cases_from_mmdb_writer(tmp_path: Path) -> None:
    db = GeoIPDatabase(
        str(write_city(tmp_path / "city.mmdb")), str(write_asn(tmp_path / "asn.mmdb"))
    )
    try:
        assert db.lookup("11.0.0.7") == GeoAnswer("US", "Ashburn", 64500, "Example Transit")
        assert db.lookup("2a00:1450::1") == GeoAnswer("IE", "", None, "")
        assert db.lookup("::ffff:11.0.0.7") == GeoAnswer("US", "Ashburn", 64500, "Example Transit")
        assert db.lookup("12.0.0.1") == GeoAnswer("NL", "", 64501, "")  # registered country only
        assert db.lookup("13.0.0.1") == GeoAnswer("", "", None, "")  # found, nothing in it
        assert db.lookup("14.0.0.1") is None
        assert db.lookup("not an address") is None
    finally:
        db.close()


def _bad_files(tmp: Path) -> list[tuple[str, str | None, str, str]]:
    garbage = tmp / "garbage.mmdb"
    garbage.write_bytes(os.urandom(4096))
    return [
        (str(tmp / "missing.mmdb"), "", CITY_SETTING, "does not exist"),
        (str(garbage), "", CITY_SETTING, "not a valid MaxMind database"),
        (str(tmp), "", CITY_SETTING, "not a valid MaxMind database"),
        (maxmind("GeoLite2-ASN-Test.mmdb"), "", CITY_SETTING, "GeoLite2-ASN database"),
        (maxmind("GeoLite2-City-Test.mmdb"), str(garbage), ASN_SETTING, "not a valid"),
        (
            maxmind("GeoLite2-City-Test.mmdb"),
            maxmind("GeoLite2-City-Test.mmdb"),
            ASN_SETTING,
            "City",
        ),
        (maxmind("GeoIP2-City-Test-Invalid-Node-Count.mmdb"), "", CITY_SETTING, "not a valid"),
    ]


@pytest.mark.parametrize(
    "case",
    range(7),
    ids=[
        "missing",
        "garbage",
        "directory",
        "wrong-kind",
        "asn-garbage",
        "asn-wrong-kind",
        "bad-node-count",
    ],
)
def test_unusable_database_is_one_clear_error(tmp_path: Path, case: int) -> None:
    city, asn, setting, words = _bad_files(tmp_path)[case]
    with pytest.raises(GeoIPConfigError) as err:
        GeoIPDatabase(city, asn)
    message = str(err.value)
    assert message.startswith(f"{setting}: ")
    assert words in message
    assert "\n" not in message


def test_corrupt_data_section_fails_per_lookup() -> None:
    db = GeoIPDatabase(maxmind("GeoIP2-City-Test-Broken-Double-Format.mmdb"), "")
    try:
        with pytest.raises(GeoIPLookupError):
            db.lookup("81.2.69.142")
        assert db.lookup("1.1.1.1") is None  # not in that database
    finally:
        db.close()
