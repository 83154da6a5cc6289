"""The organisation behind an address, from the Internet registries (ipwhois).

Used only when no ASN database names the organisation. One lookup is, in order:

1. the origin AS over DNS (``<reversed ip>.origin.asn.cymru.com TXT``, then
   ``AS<n>.asn.cymru.com TXT`` for its description), which also says which
   regional registry (ARIN, RIPE NCC, APNIC, LACNIC, AFRINIC) holds the block;
   when that fails the lookup goes on with ARIN, which refers onwards;
2. RDAP over HTTPS at that registry: the organisation is the registrant entity's
   name, else the network's name, else the AS description;
3. when RDAP gives nothing, classic whois (TCP port 43) at that registry, with the
   seed's ``whoisRegexp`` applied to the raw text (the upstream agent's
   behaviour: ``(?:OrgName:|org-name:)\\s*(.*)``).

Each registry (and the DNS service) has its own token bucket, so a burst of new
addresses cannot get the agent banned; a worker waits at most ``max_wait`` for a
token and otherwise gives up with ``rate_limited``. Every step is reported as a
``(source, result)`` pair, ``source`` in :data:`SOURCES` and ``result`` in
:data:`RESULTS`, for ``k8spacket_enrichment_lookups_total``.

Limits: this module blocks for up to ``timeout`` seconds per step (it is meant to
run in a background worker, see ``external.py``); ipwhois is called with
``retry_count=0`` so a rate-limit notice never makes it sleep for minutes; NIR
(JPNIC/KRNIC) and referral lookups are off.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.exception
import ipwhois.exceptions
from ipwhois.asn import IPASN
from ipwhois.net import Net
from ipwhois.rdap import RDAP

#: The seed's default ``k8sPacket.metrics.reverseLookup.whoisRegexp``.
DEFAULT_WHOIS_REGEXP = r"(?:OrgName:|org-name:)\s*(.*)"
WHOIS_REGEXP_SETTING = "k8sPacket.metrics.reverseLookup.whoisRegexp"

SOURCES = ("asn_dns", "rdap", "whois")
RESULTS = ("ok", "not_found", "timeout", "refused", "error", "rate_limited")

#: Registry used when the origin-AS lookup fails (ARIN answers for all and refers onwards).
FALLBACK_REGISTRY = "arin"


def compile_whois_regexp(pattern: str) -> re.Pattern[str]:
    """Compile the ``whoisRegexp`` setting; a bad pattern is one line naming the key."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{WHOIS_REGEXP_SETTING}: invalid regular expression: {e}") from None


def match_org(pattern: re.Pattern[str], raw: str) -> str:
    """The organisation that ``pattern`` finds in raw whois text ('' when none).

    The first capture group when the pattern has one, else the whole match; as
    upstream, the first match in the text wins.
    """
    m = pattern.search(raw)
    if m is None:
        return ""
    text = m.group(1) if pattern.groups else m.group(0)
    return (text or "").strip()


class TokenBucket:
    """``rate`` requests per second with bursts of ``burst``; time from ``clock``."""

    __slots__ = ("_lock", "burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token if one is there (returns 0.0), else seconds until one will be."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class RegistryRateLimiter:
    """One :class:`TokenBucket` per registry name, created on first use."""

    def __init__(
        self,
        rate: float = 1.0,
        burst: int = 5,
        *,
        max_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.burst, self.max_wait = rate, burst, max_wait
        self.clock, self.sleep = clock, sleep
        self.buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def acquire(self, registry: str) -> bool:
        """Wait (at most ``max_wait`` in total) for a token of ``registry``."""
        with self._lock:
            bucket = self.buckets.get(registry)
            if bucket is None:
                bucket = self.buckets[registry] = TokenBucket(self.rate, self.burst, self.clock)
        waited = 0.0
        while True:
            wait = bucket.take()
            if wait == 0.0:
                return True
            if waited + wait > self.max_wait:
                return False
            self.sleep(wait)
            waited += wait


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryAnswer:
    """What the registries said about one address (empty strings when they did not say)."""

    org: str = ""
    country: str = ""
    asn: int | None = None
    registry: str = ""


@dataclasses.dataclass(slots=True)
class RegistryResult:
    """The answer (``None`` when nothing was found) and each step's ``(source, result)``."""

    answer: RegistryAnswer | None
    steps: list[tuple[str, str]]


def failure_kind(exc: BaseException) -> str:
    """``timeout``, ``refused`` or ``error``, from the exception and what it wraps.

    ipwhois turns socket errors into its own exceptions raised inside the handler,
    so the original is on ``__context__``.
    """
    seen: BaseException | None = exc
    depth = 0
    while seen is not None and depth < 8:
        if isinstance(seen, TimeoutError | socket.timeout | dns.exception.Timeout):
            return "timeout"
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        reason = getattr(seen, "reason", None)  # urllib's URLError
        if isinstance(reason, BaseException):
            if isinstance(reason, TimeoutError | socket.timeout):
                return "timeout"
            if isinstance(reason, ConnectionRefusedError):
                return "refused"
        text = str(seen)
        if "DNS Timeout" in text:
            return "timeout"
        if "DNS NXDOMAIN" in text or "DNS NoAnswer" in text:
            return "not_found"
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return "error"


def _asn_int(value: Any) -> int | None:
    try:
        return int(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def rdap_org(data: dict[str, Any]) -> str:
    """The organisation in an ipwhois RDAP result: registrant, then network name."""
    objects = data.get("objects") or {}
    for handle in data.get("entities") or []:
        obj = objects.get(handle) or {}
        if "registrant" in (obj.get("roles") or []):
            name = (obj.get("contact") or {}).get("name")
            if name:
                return str(name).strip()
    network = data.get("network") or {}
    return str(network.get("name") or "").strip()


class RegistryClient:
    """Looks up organisations with unmodified ipwhois (RDAP first, whois as fallback).

    Thread-safe: several background workers may call :meth:`lookup` at once.
    """

    def __init__(
        self,
        *,
        whois_regexp: str = DEFAULT_WHOIS_REGEXP,
        timeout: float = 5.0,
        limiter: RegistryRateLimiter | None = None,
        whois_fallback: bool = True,
    ) -> None:
        self.pattern = compile_whois_regexp(whois_regexp)
        self.timeout = timeout
        self.limiter = limiter if limiter is not None else RegistryRateLimiter()
        self.whois_fallback = whois_fallback

    def lookup(self, ip: str) -> RegistryResult:
        steps: list[tuple[str, str]] = []
        try:
            net = Net(ip, timeout=self.timeout)
        except (ipwhois.exceptions.IPDefinedError, ValueError):
            return RegistryResult(None, [("asn_dns", "not_found")])
        asn_data = self._asn(net, steps)
        registry = str(asn_data.get("asn_registry") or FALLBACK_REGISTRY)
        asn = _asn_int(asn_data.get("asn"))
        country = str(asn_data.get("asn_country_code") or "")
        org = self._rdap(net, asn_data, registry, steps)
        if not org and self.whois_fallback:
            org = self._whois(net, registry, steps)
        if not org:
            org = str(asn_data.get("asn_description") or "").strip()
        if not (org or country or asn):
            return RegistryResult(None, steps)
        return RegistryResult(RegistryAnswer(org, country, asn, registry), steps)

    def _asn(self, net: Net, steps: list[tuple[str, str]]) -> dict[str, Any]:
        if not self.limiter.acquire("cymru"):
            steps.append(("asn_dns", "rate_limited"))
            return {}
        # IPASN.lookup() would hide why DNS failed; its two steps, called directly, do not
        ipasn = IPASN(net)
        try:
            answers = net.get_asn_dns()
            data: dict[str, Any] = ipasn.parse_fields_dns(str(answers[0]))
        except ipwhois.exceptions.BaseIpwhoisException as e:
            steps.append(("asn_dns", failure_kind(e)))
            return {}
        except IndexError:
            steps.append(("asn_dns", "not_found"))
            return {}
        steps.append(("asn_dns", "ok"))
        if data.get("asn"):
            try:
                verbose = net.get_asn_verbose_dns(f"AS{data['asn']}")
                data["asn_description"] = ipasn.parse_fields_verbose_dns(verbose)["asn_description"]
            except ipwhois.exceptions.BaseIpwhoisException as e:
                steps.append(("asn_dns", failure_kind(e)))
        return data

    def _rdap(
        self, net: Net, asn_data: dict[str, Any], registry: str, steps: list[tuple[str, str]]
    ) -> str:
        if not self.limiter.acquire(registry):
            steps.append(("rdap", "rate_limited"))
            return ""
        query = dict(asn_data) if asn_data else {}
        query["asn_registry"] = registry
        try:
            data = RDAP(net).lookup(
                retry_count=0, asn_data=query, depth=0, root_ent_check=False, inc_raw=False
            )
        except ipwhois.exceptions.BaseIpwhoisException as e:
            steps.append(("rdap", failure_kind(e)))
            return ""
        except (KeyError, TypeError, AttributeError, ValueError):
            # ipwhois parses what the server sent without checking its shape
            steps.append(("rdap", "error"))
            return ""
        org = rdap_org(data)
        steps.append(("rdap", "ok" if org else "not_found"))
        return org

    def _whois(self, net: Net, registry: str, steps: list[tuple[str, str]]) -> str:
        if not self.limiter.acquire(registry):
            steps.append(("whois", "rate_limited"))
            return ""
        try:
            raw = net.get_whois(asn_registry=registry, retry_count=0)
        except ipwhois.exceptions.BaseIpwhoisException as e:
            steps.append(("whois", failure_kind(e)))
            return ""
        org = match_org(self.pattern, str(raw))
        steps.append(("whois", "ok" if org else "not_found"))
        return org
