"""The naming chain of connection records, built from the settings: one for the agent
and for ``k8spacket replay``.

Sources are asked in this order: the Kubernetes watch cache (when there is a
cluster config and ``kubernetes.enabled`` is not ``false``), the inventory file,
then the external resolver (GeoIP, optional registries, optional reverse DNS),
which treats every address the first two name as not external.

The agent (``offline=False``) starts the resolver's background stages: a new
external address is named on a later record, and the packet path never waits.
A replay (``offline=True``) has no packet path to protect: external addresses
are looked up on the calling thread, so the first record already carries the
country, and the bundled GeoLite2-City (about 0.3 s to import and open) is
opened only when the first public address shows up.

A bad setting raises :class:`~k8spacket.config.ConfigError`, one line naming
the key as the user set it (see :meth:`Settings.origin`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from k8spacket.config import SEED_GEOIP_DB_PATH, ConfigError, Settings
from k8spacket.enrich.classify import is_private
from k8spacket.enrich.identity import Resolver, ResolverChain
from k8spacket.flows.record import ConnectionRecord
from k8spacket.supervise import Supervisor

if TYPE_CHECKING:
    from k8spacket.enrich.external import ExternalResolver
    from k8spacket.enrich.k8s import K8sCache

log = logging.getLogger(__name__)

#: Something that fills the identity fields of a record in place.
Namer = Callable[[ConnectionRecord], None]

_CITY = "enrichment.geoip_db_path"
_ASN = "enrichment.geoip_asn_db_path"


def build_k8s_cache(settings: Settings) -> K8sCache | None:
    """The Kubernetes watch cache the settings ask for (not started), or ``None``."""
    k = settings.kubernetes
    if k.enabled == "false":
        return None
    key = settings.origin("kubernetes.kubeconfig")
    path = k.kubeconfig.split(":")[0]
    if k.kubeconfig:
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(f"{key}: {k.kubeconfig!r} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{key}: {path!r} is a directory, not a kubeconfig") from None
        except OSError as e:
            raise ConfigError(f"{key}: cannot read {path!r}: {e.strerror or e}") from None
    from k8spacket.enrich.k8s import K8sCache

    cache = K8sCache.from_environment(kubeconfig=path)
    if cache is None and k.enabled == "true":
        raise ConfigError(
            "kubernetes.enabled: true, but there is no in-cluster config and no kubeconfig"
        )
    return cache


def geoip_paths(settings: Settings) -> tuple[str, str | None]:
    """(City path, ASN path) for :class:`~k8spacket.enrich.geoip.GeoIPDatabase`.

    The seed's default City path never existed in its image: when that exact path
    is missing the packaged GeoLite2-City is used (a warning, not an error).
    """
    e = settings.enrichment
    city = e.geoip_db_path
    if city == SEED_GEOIP_DB_PATH and not Path(city).exists():
        log.warning(
            "%s: the seed's default %s does not exist; using the packaged "
            "GeoLite2-City (2018) instead (docs/external.md)",
            settings.origin(_CITY),
            city,
        )
        city = ""
    return city, e.geoip_asn_db_path or None


def build_external(
    settings: Settings, is_named: Callable[[str], bool] | None
) -> ExternalResolver | None:
    """The external resolver the ``enrichment`` settings ask for (not started), or ``None``."""
    e = settings.enrichment
    if not (e.geoip_enabled or e.whois_enabled or e.reverse_dns):
        return None
    # imported here: ipwhois and geoip2 cost ~0.3 s, wasted when nothing is external
    from k8spacket.enrich.classify import AddressClassifier
    from k8spacket.enrich.external import ExternalResolver, reverse_dns_lookup
    from k8spacket.enrich.geoip import GeoIPConfigError, GeoIPDatabase
    from k8spacket.enrich.whois import RegistryClient

    geoip = None
    if e.geoip_enabled:
        try:
            geoip = GeoIPDatabase(
                *geoip_paths(settings),
                city_setting=settings.origin(_CITY),
                asn_setting=settings.origin(_ASN),
            )
        except GeoIPConfigError as err:
            raise ConfigError(str(err)) from None
    return ExternalResolver(
        geoip=geoip,
        registry=RegistryClient(whois_regexp=e.whois_regexp) if e.whois_enabled else None,
        classifier=AddressClassifier(is_named),
        reverse_dns=reverse_dns_lookup if e.reverse_dns else None,
        start=False,
    )


@dataclass
class Naming:
    """The identity sources, in the order they are asked.

    ``external_factory`` (offline only) builds :attr:`external` on the first
    record with a public end.
    """

    k8s: K8sCache | None = None
    resolvers: list[Resolver] = field(default_factory=list)  # k8s cache, then inventory
    external: ExternalResolver | None = None
    offline: bool = False
    external_factory: Callable[[], ExternalResolver | None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, k8s: K8sCache | str | None = "auto", *, offline: bool = False
    ) -> Naming:
        """Build every source the settings ask for; ``k8s`` overrides the cache (tests).

        ``offline``: look external addresses up on the caller's thread (replay).
        """
        cache = build_k8s_cache(settings) if isinstance(k8s, str) else k8s
        resolvers: list[Resolver] = [cache] if cache is not None else []
        if settings.inventory:
            from k8spacket.enrich.inventory import Inventory, InventoryError

            try:
                resolvers.append(Inventory.load(settings.inventory))
            except InventoryError as err:
                raise ConfigError(str(err)) from None
        is_named = None
        if resolvers:
            chain = ResolverChain(resolvers)
            is_named = lambda ip: chain.lookup(ip) is not None  # noqa: E731
        if offline and not settings.enrichment.geoip_db_path:
            # the bundled database: opened when the first public address shows up
            return cls(cache, resolvers, None, True, lambda: build_external(settings, is_named))
        return cls(cache, resolvers, build_external(settings, is_named), offline)

    def namers(self) -> list[Namer]:
        """The functions to call on each record, in order."""
        out: list[Namer] = []
        if self.resolvers:
            out.append(ResolverChain(self.resolvers).name_record)
        if self.offline and (self.external is not None or self.external_factory is not None):
            out.append(self._name_external_now)
        elif self.external is not None:
            out.append(self.external.name_record)
        return out

    def _name_external_now(self, rec: ConnectionRecord) -> None:
        external = self.external
        if external is None:
            if is_private(rec.src) and is_private(rec.dst):
                return
            assert self.external_factory is not None
            external = self.external = self.external_factory()
            self.external_factory = None
            if external is None:
                return
        external.name_record(rec)
        if external.drain_now():
            external.name_record(rec)

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the watch cache and the resolver's background stages (not offline),
        their threads supervised by ``supervisor`` (the agent's)."""
        if self.k8s is not None:
            self.k8s.start(supervisor)
        if self.external is not None and not self.offline:
            self.external.start(supervisor)

    def stop(self) -> None:
        if self.k8s is not None:
            self.k8s.stop()
        if self.external is not None:
            self.external.close()
            if self.external.geoip is not None:
                self.external.geoip.close()
