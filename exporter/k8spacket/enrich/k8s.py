"""The Kubernetes watch cache: names addresses as pods, services, nodes and workloads.

One thread per resource (pods, services, nodes, replicasets.apps, jobs.batch)
runs the usual reflector loop with the official ``kubernetes`` client:

1. **list** (paginated, ``limit``/``continue``) and replace that resource's part of
   the :class:`~k8spacket.enrich.k8s_index.ClusterIndex`, dropping whatever the
   list no longer holds;
2. **watch** from the list's ``resourceVersion`` with ``allowWatchBookmarks``,
   applying every event, remembering the newest ``resourceVersion`` (bookmarks
   included); a stream that ends or times out is resumed from there;
3. on ``410 Gone`` (expired version, as an HTTP status or an ``ERROR`` event) or
   any transport error (connection refused or dropped mid-stream, bad JSON), go
   back to 1 after an exponential backoff with jitter. Relisting after an error
   is deliberate: it is the only way to learn about deletions missed while
   disconnected when the server cannot replay from a version;
4. a watch that ends within ``short_watch`` seconds without a single event is
   treated as a failure too (client-go does the same): the next watch waits the
   backoff, so a server that closes every watch at once is not hammered.

The threads are started through a :class:`~k8spacket.supervise.Supervisor` (the
agent's, or a private one): anything else a loop raises (a bug) is logged,
counted and the loop restarted from a fresh list. Timers are monotonic.

Objects are reduced to a few fields as they arrive (``k8s_index``); responses are
read with ``_preload_content=False`` and parsed with :mod:`json`, so no client
model objects are built. ``kubernetes.watch.Watch`` is not used because with
``deserialize=False`` it fails on ``ERROR`` events and its built-in 410 retry
reuses the expired version; its line splitter (``iter_resp_lines``) is.

Readiness: :attr:`K8sCache.synced` (a :class:`threading.Event`) is set once every
resource has been listed; it stays set through later relists. Counters:
:meth:`K8sCache.watch_events_total` (events received per resource, for
``k8spacket_k8s_watch_events_total{resource}``) and :meth:`K8sCache.stats`.

Configuration: :func:`load_api_client` uses the in-cluster service account when
running in a pod, a kubeconfig otherwise, and returns ``None`` when neither
exists (the cache is then simply not created; naming falls back to the inventory).

Limits: the whole cluster's pods are watched (every agent needs the remote end's
name too); memory is a few hundred bytes per pod (see ``bench/k8s_cache.py``).
The server-side ``timeoutSeconds`` is backed by a client read timeout, for API
servers (and emulators) that ignore it. RBAC needed: see ``docs/kubernetes.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from k8spacket.enrich.identity import Identity, name_record
from k8spacket.enrich.k8s_index import RESOURCES, ClusterIndex
from k8spacket.flows.record import ConnectionRecord
from k8spacket.supervise import Supervised, Supervisor

log = logging.getLogger(__name__)

# the client ships these untyped; give them the signatures we rely on
_iter_resp_lines = cast(Callable[[Any], Iterator[str]], iter_resp_lines)
_load_incluster_config = cast(Callable[..., None], k8s_config.load_incluster_config)
_load_kube_config = cast(Callable[..., None], k8s_config.load_kube_config)

#: page size of list calls (the API server's own recommendation for informers)
LIST_PAGE = 500


class ResourceExpired(Exception):
    """410 Gone: the resourceVersion (or continue token) is too old; relist."""


def load_api_client(kubeconfig: str = "") -> k8s_client.ApiClient | None:
    """An API client from the in-cluster service account or a kubeconfig; ``None`` if neither.

    ``kubeconfig`` (a path; the agent's ``kubernetes.kubeconfig`` setting) is used
    instead of ``KUBECONFIG``/``~/.kube/config`` when given. Does not touch the
    client's global default configuration.
    """
    cfg = k8s_client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            _load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException as e:
            log.warning("in-cluster Kubernetes config unusable: %s", e)
        else:
            return _finish(cfg)
    kubeconfig = (
        kubeconfig
        or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        or str(Path.home() / ".kube" / "config")
    )
    if not Path(kubeconfig).is_file():
        log.info("no in-cluster config and no kubeconfig: Kubernetes naming disabled")
        return None
    try:
        _load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (k8s_config.ConfigException, OSError, ValueError) as e:
        log.warning("kubeconfig %s unusable (%s): Kubernetes naming disabled", kubeconfig, e)
        return None
    return _finish(cfg)


def _finish(cfg: k8s_client.Configuration) -> k8s_client.ApiClient:
    cfg.retries = False  # the cache's own backoff retries; urllib3 must not add its own
    return k8s_client.ApiClient(cfg)


class Backoff:
    """Exponential backoff with full jitter: ``initial * factor**n`` capped at ``maximum``."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._rand = rand
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt (between half and all of the cap)."""
        cap = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return cap * (0.5 + 0.5 * self._rand())


ListFunc = Callable[..., Any]


def list_functions(api: k8s_client.ApiClient) -> dict[str, ListFunc]:
    """The cluster-wide list (and, with ``watch=True``, watch) call of each resource."""
    core = k8s_client.CoreV1Api(api)
    apps = k8s_client.AppsV1Api(api)
    batch = k8s_client.BatchV1Api(api)
    return {
        "pods": core.list_pod_for_all_namespaces,
        "services": core.list_service_for_all_namespaces,
        "nodes": core.list_node,
        "replicasets": apps.list_replica_set_for_all_namespaces,
        "jobs": batch.list_job_for_all_namespaces,
    }


class K8sCache:
    """Watches the cluster and names addresses; a :class:`~k8spacket.enrich.identity.Resolver`.

    ``api_client`` is injected (tests hand in one pointed at an emulator);
    ``backoff`` makes the retry schedule of each resource's loop.
    """

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        resources: tuple[str, ...] = RESOURCES,
        watch_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        backoff: Callable[[], Backoff] = Backoff,
        owns_client: bool = False,
        short_watch: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        unknown = [r for r in resources if r not in RESOURCES]
        if unknown:
            raise ValueError(f"unknown resources {unknown}; known: {', '.join(RESOURCES)}")
        self.api_client = api_client
        self.resources = resources
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self._backoff = backoff
        self._owns_client = owns_client
        self.short_watch = short_watch
        self._clock = clock
        self.index = ClusterIndex()
        #: set once every resource has been listed (readiness: "cache synced")
        self.synced = threading.Event()
        self._listed: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[Supervised] = []
        self._active: dict[str, urllib3.BaseHTTPResponse] = {}
        self._active_lock = threading.Lock()
        self._events = dict.fromkeys(resources, 0)
        self._stats: dict[str, dict[str, int]] = {
            r: {"lists": 0, "relists": 0, "watches": 0, "errors": 0, "gone": 0, "short": 0}
            for r in resources
        }
        self._funcs = list_functions(api_client)

    @classmethod
    def from_environment(cls, kubeconfig: str = "", **kwargs: Any) -> K8sCache | None:
        """A cache using :func:`load_api_client`, or ``None`` when there is no cluster."""
        api = load_api_client(kubeconfig)
        if api is None:
            return None
        return cls(api, owns_client=True, **kwargs)

    # ---------------------------------------------------------------- the API
    def lookup(self, ip: str, port: int | None = None) -> Identity | None:
        """The identity of ``ip`` (serving ``port``), or ``None``."""
        return self.index.lookup(ip, port)

    def name_record(self, rec: ConnectionRecord) -> None:
        """Fill ``rec``'s ``src_*``/``dst_*`` identity fields in place."""
        name_record(rec, self)

    def watch_events_total(self) -> dict[str, int]:
        """Watch events received so far, per resource (a snapshot)."""
        return dict(self._events)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per resource: lists, relists, watches started, errors, 410s, short watches."""
        return {r: dict(s) for r, s in self._stats.items()}

    def ready(self) -> bool:
        """True once every resource has been listed."""
        return self.synced.is_set()

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start one supervised watch thread per resource (returns at once; see :attr:`synced`)."""
        if self._threads:
            raise RuntimeError("K8sCache already started")
        sup = supervisor if supervisor is not None else Supervisor()
        for resource in self.resources:
            self._threads.append(
                sup.spawn(f"k8s-watch-{resource}", functools.partial(self._run, resource))
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the watch threads (breaking open streams) and wait for them."""
        self._stop.set()
        with self._active_lock:
            responses = list(self._active.values())
        for resp in responses:
            _break(resp)
        for t in self._threads:
            t.join(timeout)
        if self._owns_client:
            cast(Callable[[], None], self.api_client.close)()

    def __enter__(self) -> K8sCache:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- the loop
    def _run(self, resource: str) -> None:
        backoff = self._backoff()
        stats = self._stats[resource]
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(resource)
                opened = self._clock()
                version, delivered = self._watch(resource, version)
                if delivered:
                    backoff.reset()
                elif self._clock() - opened < self.short_watch and not self._stop.is_set():
                    # ended at once without an event: back off, then watch again (no relist)
                    stats["short"] += 1
                    self._stop.wait(backoff.next())
                continue
            except ResourceExpired:
                stats["gone"] += 1
                log.info("k8s %s: resourceVersion expired, relisting", resource)
            except ApiException as e:
                stats["errors"] += 1
                hint = " (check RBAC, docs/kubernetes.md)" if e.status in (401, 403) else ""
                log.warning("k8s %s: API error %s %s%s", resource, e.status, e.reason, hint)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                stats["errors"] += 1
                log.warning("k8s %s: %s: %s", resource, type(e).__name__, e)
            if self._stop.is_set():
                break
            version = None  # relist after any failure
            stats["relists"] += 1
            self._stop.wait(backoff.next())

    def _call(self, resource: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        resp: urllib3.BaseHTTPResponse = self._funcs[resource](_preload_content=False, **kwargs)
        return resp

    def _list(self, resource: str) -> str:
        """List every object (page by page), replace the index's part; the list's version."""
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            try:
                resp = self._call(
                    resource,
                    _request_timeout=(self.connect_timeout, self.watch_timeout),
                    **kwargs,
                )
            except ApiException as e:
                if e.status == 410:
                    raise ResourceExpired(str(e.reason)) from None
                raise
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            if not isinstance(body, Mapping):
                raise ValueError(f"list of {resource}: not a JSON object")
            page = body.get("items") or []
            items.extend(o for o in page if isinstance(o, Mapping))
            meta = body.get("metadata") or {}
            version = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        with self.index.lock:
            self.index.replace(resource, items)
        self._stats[resource]["lists"] += 1
        self._listed.add(resource)
        if len(self._listed) == len(self.resources):
            self.synced.set()
        return version

    def _watch(self, resource: str, version: str) -> tuple[str, bool]:
        """Watch from ``version`` until the stream ends; (newest version, got any event)."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": int(self.watch_timeout),
            # the read timeout backs timeoutSeconds for servers that ignore it
            "_request_timeout": (self.connect_timeout, self.watch_timeout + 5.0),
        }
        if version:
            kwargs["resource_version"] = version
        try:
            resp = self._call(resource, **kwargs)
        except ApiException as e:
            if e.status == 410:
                raise ResourceExpired(str(e.reason)) from None
            raise
        self._stats[resource]["watches"] += 1
        delivered = False
        with self._active_lock:
            self._active[resource] = resp
        try:
            if self._stop.is_set():
                return version, delivered
            for event in _events(resp):
                version = self._apply(resource, event, version)
                delivered = True
        except urllib3.exceptions.ReadTimeoutError:
            pass  # quiet stream past the timeout: resume from the version we have
        except (urllib3.exceptions.HTTPError, OSError):
            if self._stop.is_set():
                return version, delivered
            raise
        finally:
            with self._active_lock:
                self._active.pop(resource, None)
            resp.release_conn()
        return version, delivered

    def _apply(self, resource: str, event: Mapping[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise ValueError(f"watch of {resource}: event without an object")
        self._events[resource] += 1
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise ResourceExpired(str(obj.get("message") or "Gone"))
            raise ApiException(status=code, reason=f"{obj.get('reason')}: {obj.get('message')}")
        meta = obj.get("metadata")
        new_version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            with self.index.lock:
                self.index.apply(resource, kind, obj)
        elif kind != "BOOKMARK":
            raise ValueError(f"watch of {resource}: unknown event type {kind!r}")
        return str(new_version) if new_version else version


def _events(resp: urllib3.BaseHTTPResponse) -> Iterator[Mapping[str, Any]]:
    for line in _iter_resp_lines(resp):
        if not line:
            continue
        event = json.loads(line)
        if not isinstance(event, Mapping):
            raise ValueError("watch event is not a JSON object")
        yield event


def _break(resp: urllib3.BaseHTTPResponse) -> None:
    """Unblock a thread reading ``resp`` (from another thread)."""
    shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
    if shutdown is not None:
        shutdown()
    else:
        resp.close()


def list_agent_addresses(
    api: k8s_client.ApiClient,
    namespace: str = "",
    label_selector: str = "",
    timeout: float = 5.0,
) -> list[str]:
    """Addresses of the running pods ``label_selector`` selects (the agents' DaemonSet).

    The graph's ``agents`` source asks each of them for its local edges. One list
    call per question (no cache: the DaemonSet changes rarely and a graph refresh
    is seconds apart). Equality terms of the selector (``k=v``, ``k==v``) are
    also checked here, for API servers (and emulators) that ignore it.
    Raises ``ApiException`` or a transport error when the list fails.
    """
    core = k8s_client.CoreV1Api(api)
    kwargs: dict[str, Any] = {
        "label_selector": label_selector,
        "_preload_content": False,
        "_request_timeout": timeout,
    }
    resp = cast(
        urllib3.BaseHTTPResponse,
        core.list_namespaced_pod(namespace, **kwargs)
        if namespace
        else core.list_pod_for_all_namespaces(**kwargs),
    )
    try:
        doc = json.loads(resp.data)
    finally:
        resp.release_conn()
    wanted = {}
    for term in label_selector.split(","):
        k, sep, v = term.replace("==", "=").partition("=")
        if sep and not k.endswith("!"):
            wanted[k.strip()] = v.strip()
    out: list[str] = []
    for pod in doc.get("items") or ():
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        status = pod.get("status") or {}
        if status.get("phase") != "Running":
            continue
        ip = status.get("podIP") or ""
        if ip:
            out.append(ip)
    return sorted(set(out))
