"""The address index behind the Kubernetes watch cache: slim objects in, identities out.

Watch events carry whole API objects (a pod is several KB of JSON); this module
keeps only what naming needs, as small tuples with interned strings, and
maintains two lookup tables that answer in one or two dict probes:

* ``address -> Identity`` for pod IPs (every ``status.podIPs``, IPv4 and IPv6),
  service ClusterIPs (every ``spec.clusterIPs``) and node ``InternalIP``\\s;
* ``(address, port) -> Identity`` for hostNetwork pods: they share their node's
  address, so a connection is theirs only on a port they declare
  (``containerPort``/``hostPort``); on any other port the address names the node.

Workloads follow the controller owner chain: Pod -> ReplicaSet -> Deployment,
Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet (or any other controller:
its name); a pod without a controller is its own workload. When the ReplicaSet
is not known (yet), the Deployment name is recovered by stripping the
``pod-template-hash`` suffix; a Job not known (yet) names itself.

Several objects may claim one address for a moment (an IP reused by a new pod
while the old object lingers, a hostNetwork pod on a node): the claim with the
highest priority wins, and among equals the most recent one. A claim that is
merely re-announced (a relist, an unrelated status update) keeps its place, so
an old object can never take an address back from a newer one. Pods that have
finished (phase Succeeded/Failed) claim nothing: their address is free for reuse.
Deleting an object drops its claims at once.

Limits: no locking for readers (a lookup sees the tables before or after an
update, never a torn state, because values are immutable tuples swapped in whole);
writers must hold :attr:`ClusterIndex.lock`. Service ``externalIPs`` and
load-balancer addresses, and node ``ExternalIP``\\s, are not indexed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from k8spacket.enrich.identity import Identity

#: the resources the index understands (the watch cache's label values too)
RESOURCES: tuple[str, ...] = ("pods", "services", "nodes", "replicasets", "jobs")

# claim priorities: a real owner of an address beats the "node behind a hostNetwork pod" guess
PRIO_OBJECT = 3
PRIO_NODE = 2
PRIO_HOSTNET_NODE = 1

_intern = sys.intern
Key = tuple[str, str, str]  # (resource, namespace, name)
K = TypeVar("K", str, tuple[str, int])


class PodInfo(NamedTuple):
    """What naming needs from a Pod."""

    namespace: str
    name: str
    ips: tuple[str, ...]
    host_network: bool
    node: str
    #: declared containerPort/hostPort, kept for hostNetwork pods only
    ports: tuple[int, ...]
    owner_kind: str
    owner_name: str
    template_hash: str


class ServiceInfo(NamedTuple):
    namespace: str
    name: str
    ips: tuple[str, ...]


class NodeInfo(NamedTuple):
    name: str
    ips: tuple[str, ...]


class OwnerInfo(NamedTuple):
    """A ReplicaSet or Job: its own controller (Deployment, CronJob) if any."""

    namespace: str
    name: str
    owner_kind: str
    owner_name: str


Slim = PodInfo | ServiceInfo | NodeInfo | OwnerInfo


# ---------------------------------------------------------------- slimming
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _controller(meta: Mapping[str, Any]) -> tuple[str, str]:
    refs = meta.get("ownerReferences") or ()
    first: tuple[str, str] = ("", "")
    for ref in refs:
        if not isinstance(ref, Mapping):
            continue
        pair = (_intern(str(ref.get("kind") or "")), _intern(str(ref.get("name") or "")))
        if ref.get("controller"):
            return pair
        if not first[0]:
            first = pair
    return first


def _ips(values: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v and v != "None" and v not in out:
            out.append(v)
    return tuple(out)


def slim_pod(obj: Mapping[str, Any]) -> PodInfo:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        ips: tuple[str, ...] = ()
    else:
        listed = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, Mapping)]
        ips = _ips([*listed, status.get("podIP")])
    host_network = bool(spec.get("hostNetwork"))
    ports: tuple[int, ...] = ()
    if host_network:
        found: set[int] = set()
        for c in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ())):
            for p in (c.get("ports") or ()) if isinstance(c, Mapping) else ():
                if not isinstance(p, Mapping) or p.get("protocol", "TCP") != "TCP":
                    continue
                for field in ("containerPort", "hostPort"):
                    value = p.get(field)
                    if isinstance(value, int) and value > 0:
                        found.add(value)
        ports = tuple(sorted(found))
    owner_kind, owner_name = _controller(meta)
    labels = meta.get("labels") or {}
    return PodInfo(
        namespace=_intern(str(meta.get("namespace") or "")),
        name=str(meta.get("name") or ""),
        ips=ips,
        host_network=host_network,
        node=_intern(str(spec.get("nodeName") or "")),
        ports=ports,
        owner_kind=owner_kind,
        owner_name=owner_name,
        template_hash=str(labels.get("pod-template-hash") or "")
        if owner_kind == "ReplicaSet"
        else "",
    )


def slim_service(obj: Mapping[str, Any]) -> ServiceInfo:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    return ServiceInfo(
        namespace=_intern(str(meta.get("namespace") or "")),
        name=_intern(str(meta.get("name") or "")),
        ips=_ips([*(spec.get("clusterIPs") or ()), spec.get("clusterIP")]),
    )


def slim_node(obj: Mapping[str, Any]) -> NodeInfo:
    meta = _meta(obj)
    addresses = (obj.get("status") or {}).get("addresses") or ()
    return NodeInfo(
        name=_intern(str(meta.get("name") or "")),
        ips=_ips(
            a.get("address")
            for a in addresses
            if isinstance(a, Mapping) and a.get("type") == "InternalIP"
        ),
    )


def slim_owner(obj: Mapping[str, Any]) -> OwnerInfo:
    meta = _meta(obj)
    kind, name = _controller(meta)
    return OwnerInfo(
        namespace=_intern(str(meta.get("namespace") or "")),
        name=_intern(str(meta.get("name") or "")),
        owner_kind=kind,
        owner_name=name,
    )


SLIMMERS: dict[str, Callable[[Mapping[str, Any]], Slim]] = {
    "pods": slim_pod,
    "services": slim_service,
    "nodes": slim_node,
    "replicasets": slim_owner,
    "jobs": slim_owner,
}
_OWNER_KIND = {"replicasets": "ReplicaSet", "jobs": "Job"}


def object_key(resource: str, obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return (resource, str(meta.get("namespace") or ""), str(meta.get("name") or ""))


# ------------------------------------------------------------------- index
class ClusterIndex:
    """Addresses (and hostNetwork ports) to identities, from slim objects."""

    def __init__(self) -> None:
        #: writers (watch threads) hold this; readers never need it
        self.lock = threading.Lock()
        self.objects: dict[str, dict[Key, Slim]] = {r: {} for r in RESOURCES}
        self._by_ip: dict[str, Identity] = {}
        self._by_ip_port: dict[tuple[str, int], Identity] = {}
        self._hostnet_ips: dict[str, int] = {}
        # claims in arrival order: address -> [(priority, key, identity)]
        self._claims: dict[str, list[tuple[int, Key, Identity]]] = {}
        self._port_claims: dict[tuple[str, int], list[tuple[int, Key, Identity]]] = {}
        # (owner kind, namespace, owner name) -> workload name of that ReplicaSet/Job
        self._owner_workload: dict[tuple[str, str, str], str] = {}
        # (owner kind, namespace, owner name) -> pod keys it controls
        self._pods_by_owner: dict[tuple[str, str, str], set[Key]] = {}

    # ---------------------------------------------------------------- reading
    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        """The identity of ``ip`` (serving ``port``); ``None`` when nothing claims it."""
        if port is not None and ip in self._hostnet_ips:
            found = self._by_ip_port.get((ip, port))
            if found is not None:
                return found
        return self._by_ip.get(ip)

    def counts(self) -> dict[str, int]:
        """Objects held per resource, and addresses indexed."""
        out = {r: len(objs) for r, objs in self.objects.items()}
        out["addresses"] = len(self._by_ip)
        out["host_ports"] = len(self._by_ip_port)
        return out

    # ---------------------------------------------------------------- writing
    def apply(self, resource: str, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event (``ADDED``/``MODIFIED``/``DELETED``); caller holds the lock."""
        key = object_key(resource, obj)
        if event_type == "DELETED":
            self._remove(key)
        else:
            self._upsert(key, SLIMMERS[resource](obj))

    def replace(self, resource: str, objs: Iterable[Mapping[str, Any]]) -> None:
        """A full list: upsert every object, drop the ones it no longer has (caller locks)."""
        slimmer = SLIMMERS[resource]
        seen: set[Key] = set()
        for obj in objs:
            key = object_key(resource, obj)
            seen.add(key)
            self._upsert(key, slimmer(obj))
        for key in [k for k in self.objects[resource] if k not in seen]:
            self._remove(key)

    def _upsert(self, key: Key, new: Slim) -> None:
        resource = key[0]
        table = self.objects[resource]
        old = table.get(key)
        if old == new:
            return
        table[key] = new
        if isinstance(new, PodInfo):
            self._set_pod(key, old if isinstance(old, PodInfo) else None, new)
        elif isinstance(new, OwnerInfo):
            self._set_owner(key, new)
        else:
            ident = self._identity(new)
            prio = PRIO_NODE if isinstance(new, NodeInfo) else PRIO_OBJECT
            old_ips = old.ips if isinstance(old, ServiceInfo | NodeInfo) else ()
            self._set_claims(key, old_ips, new.ips, prio, ident)

    def _remove(self, key: Key) -> None:
        old = self.objects[key[0]].pop(key, None)
        if old is None:
            return
        if isinstance(old, PodInfo):
            self._set_pod(key, old, None)
        elif isinstance(old, OwnerInfo):
            self._set_owner(key, None)
        elif isinstance(old, ServiceInfo | NodeInfo):
            self._set_claims(key, old.ips, (), PRIO_OBJECT, None)

    # pods -------------------------------------------------------------------
    def _set_pod(self, key: Key, old: PodInfo | None, new: PodInfo | None) -> None:
        old_owner = _owner_key(old)
        new_owner = _owner_key(new)
        if old_owner != new_owner:
            if old_owner is not None:
                pods = self._pods_by_owner.get(old_owner)
                if pods is not None:
                    pods.discard(key)
                    if not pods:
                        del self._pods_by_owner[old_owner]
            if new_owner is not None:
                self._pods_by_owner.setdefault(new_owner, set()).add(key)
        self._claim_pod(key, old, new)

    def _claim_pod(self, key: Key, old: PodInfo | None, new: PodInfo | None) -> None:
        ident = None if new is None else self._pod_identity(new)
        old_hostnet = old is not None and old.host_network
        new_hostnet = new is not None and new.host_network
        old_ips = old.ips if old is not None else ()
        new_ips = new.ips if new is not None else ()
        # a hostNetwork pod claims its (node's) address only as "the node", low priority
        node_ident = None
        if new is not None and new_hostnet:
            node_ident = Identity(new.node, "", new.node, "node") if new.node else None
        self._set_claims(
            key,
            old_ips if not old_hostnet else (),
            new_ips if not new_hostnet else (),
            PRIO_OBJECT,
            ident,
        )
        self._set_claims(
            key,
            old_ips if old_hostnet else (),
            new_ips if new_hostnet and node_ident is not None else (),
            PRIO_HOSTNET_NODE,
            node_ident,
        )
        old_ports = [(ip, p) for ip in old_ips for p in old.ports] if old is not None else []
        new_ports = [(ip, p) for ip in new_ips for p in new.ports] if new is not None else []
        self._set_port_claims(key, old_ports, new_ports, ident)

    def _pod_identity(self, pod: PodInfo) -> Identity:
        return Identity(pod.name, pod.namespace, self._pod_workload(pod), "pod")

    def _pod_workload(self, pod: PodInfo) -> str:
        kind = pod.owner_kind
        if not kind or kind == "Node":  # bare pod, or a static (mirror) pod
            return pod.name
        if kind in ("ReplicaSet", "Job"):
            known = self._owner_workload.get((kind, pod.namespace, pod.owner_name))
            if known is not None:
                return known
            suffix = "-" + pod.template_hash
            if pod.template_hash and pod.owner_name.endswith(suffix):
                return _intern(pod.owner_name[: -len(suffix)])
        return pod.owner_name

    # owners -------------------------------------------------------------------
    def _set_owner(self, key: Key, new: OwnerInfo | None) -> None:
        resource, namespace, name = key
        okey = (_OWNER_KIND[resource], namespace, name)
        if new is None:
            changed = self._owner_workload.pop(okey, None) is not None
        else:
            workload = new.owner_name if new.owner_kind else new.name
            changed = self._owner_workload.get(okey) != workload
            self._owner_workload[okey] = workload
        if not changed:
            return
        pods = self.objects["pods"]
        for pod_key in self._pods_by_owner.get(okey, ()):
            pod = pods[pod_key]
            assert isinstance(pod, PodInfo)
            self._claim_pod(pod_key, pod, pod)

    # claims -------------------------------------------------------------------
    def _identity(self, obj: ServiceInfo | NodeInfo) -> Identity:
        if isinstance(obj, ServiceInfo):
            return Identity(obj.name, obj.namespace, obj.name, "service")
        return Identity(obj.name, "", obj.name, "node")

    def _set_claims(
        self,
        key: Key,
        old_ips: tuple[str, ...],
        new_ips: tuple[str, ...],
        prio: int,
        ident: Identity | None,
    ) -> None:
        for ip in old_ips:
            if ip not in new_ips:
                _unclaim(self._claims, self._by_ip, ip, key)
        if ident is None:
            return
        for ip in new_ips:
            _claim(self._claims, self._by_ip, ip, key, prio, ident)

    def _set_port_claims(
        self,
        key: Key,
        old: list[tuple[str, int]],
        new: list[tuple[str, int]],
        ident: Identity | None,
    ) -> None:
        for ip_port in old:
            if ip_port not in new and _unclaim(self._port_claims, self._by_ip_port, ip_port, key):
                ip = ip_port[0]
                left = self._hostnet_ips[ip] - 1
                if left:
                    self._hostnet_ips[ip] = left
                else:
                    del self._hostnet_ips[ip]
        if ident is None:
            return
        for ip_port in new:
            if _claim(self._port_claims, self._by_ip_port, ip_port, key, PRIO_OBJECT, ident):
                ip = ip_port[0]
                self._hostnet_ips[ip] = self._hostnet_ips.get(ip, 0) + 1


def _owner_key(pod: PodInfo | None) -> tuple[str, str, str] | None:
    if pod is None or pod.owner_kind not in ("ReplicaSet", "Job"):
        return None
    return (pod.owner_kind, pod.namespace, pod.owner_name)


def _claim(
    claims: dict[K, list[tuple[int, Key, Identity]]],
    table: dict[K, Identity],
    addr: K,
    key: Key,
    prio: int,
    ident: Identity,
) -> bool:
    """Add or refresh ``key``'s claim on ``addr``; True when the claim is new."""
    entries = claims.get(addr)
    if entries is None:
        claims[addr] = [(prio, key, ident)]
        table[addr] = ident
        return True
    for i, (_p, k, _ident) in enumerate(entries):
        if k == key:
            entries[i] = (prio, key, ident)  # same place: a refresh never jumps the queue
            table[addr] = _winner(entries)
            return False
    entries.append((prio, key, ident))
    table[addr] = _winner(entries)
    return True


def _unclaim(
    claims: dict[K, list[tuple[int, Key, Identity]]],
    table: dict[K, Identity],
    addr: K,
    key: Key,
) -> bool:
    """Drop ``key``'s claim on ``addr``; True when there was one."""
    entries = claims.get(addr)
    if entries is None:
        return False
    kept = [e for e in entries if e[1] != key]
    if len(kept) == len(entries):
        return False
    if kept:
        claims[addr] = kept
        table[addr] = _winner(kept)
    else:
        del claims[addr]
        del table[addr]
    return True


def _winner(entries: list[tuple[int, Key, Identity]]) -> Identity:
    best = entries[0]
    for e in entries[1:]:
        if e[0] >= best[0]:
            best = e
    return best[2]
