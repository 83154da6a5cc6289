"""Memory and lookup rate of the Kubernetes cache's index, against keeping raw objects.

Builds 10,000 pods (Deployment pods with realistic metadata, managedFields, two
containers, probes, env, status; ~5 KB of JSON each, half of them dual-stack)
and 2,000 services, then measures with tracemalloc:

* ``index``: :class:`k8spacket.enrich.k8s_index.ClusterIndex` fed the parsed
  JSON, as the watch cache does (the JSON itself is dropped afterwards);
* ``raw dicts``: the parsed JSON objects kept in a dict by address (what a cache
  that stores "full objects" holds);
* ``client models``: the same objects as the kubernetes client's ``V1Pod``/
  ``V1Service`` models (``ApiClient.deserialize``), measured on a sample and
  scaled (building 12,000 models takes minutes).

Lookup rate: ``lookup(ip, port)`` over a mix of pod, service and unknown
addresses, and naming a whole record (two lookups), against the raw-dict
reference that extracts name/namespace/owner from the object on each lookup.

Run: ``python bench/k8s_cache.py [--pods N] [--services N] [--model-sample N]``.
Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from k8spacket.enrich.identity import name_record
from k8spacket.enrich.k8s_index import ClusterIndex
from k8spacket.flows.record import ConnectionRecord


def make_pod(i: int) -> dict[str, Any]:
    deploy = f"app-{i % 400}"
    rs = f"{deploy}-7d9f4c5b6"
    name = f"{rs}-{i:05x}"
    ns = f"team-{i % 40}"
    ip4 = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    ips = [{"ip": ip4}] + ([{"ip": f"fd00:10::{i:x}"}] if i % 2 else [])
    env = [{"name": f"VAR_{k}", "value": f"value-{k}-{i}"} for k in range(10)]
    container = {
        "name": "main",
        "image": f"registry.example.com/{deploy}:1.2.{i % 7}",
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
        "volumeMounts": [
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io"}
        ],
        "terminationMessagePath": "/dev/termination-log",
        "imagePullPolicy": "IfNotPresent",
    }
    sidecar = dict(container, name="proxy", image="registry.example.com/proxy:2.0", env=env[:3])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"6f1c2c8e-0000-4000-8000-{i:012x}",
            "resourceVersion": str(100000 + i),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": deploy, "pod-template-hash": "7d9f4c5b6", "tier": "backend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs,
                    "uid": f"aaaa-{i % 400}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                        "f:spec": {"f:containers": {'k:{"name":"main"}': {".": {}}}},
                    },
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:05Z",
                    "fieldsType": "FieldsV1",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIPs": {}}},
                },
            ],
        },
        "spec": {
            "nodeName": f"node-{i % 50}",
            "serviceAccountName": "default",
            "containers": [container, sidecar],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}
            ],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
        },
        "status": {
            "phase": "Running",
            "hostIP": f"192.168.{i % 50}.10",
            "podIP": ip4,
            "podIPs": ips,
            "startTime": "2026-01-01T00:00:01Z",
            "qosClass": "Burstable",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": c,
                    "ready": True,
                    "restartCount": 0,
                    "image": f"registry.example.com/{c}:1",
                    "imageID": "sha256:" + "ab" * 32,
                    "containerID": "containerd://" + "cd" * 32,
                    "started": True,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:03Z"}},
                }
                for c in ("main", "proxy")
            ],
        },
    }


def make_service(i: int) -> dict[str, Any]:
    ip = f"10.96.{(i >> 8) & 255}.{i & 255}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"svc-{i}",
            "namespace": f"team-{i % 40}",
            "uid": f"5e1c-{i}",
            "resourceVersion": str(200000 + i),
            "labels": {"app": f"app-{i % 400}"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "selector": {"app": f"app-{i % 400}"},
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        },
        "status": {"loadBalancer": {}},
    }


def measure(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated by what ``build`` returns (tracemalloc), and the thing."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    thing = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, thing


def rate(fn: Callable[[str, int | None], Any], queries: list[tuple[str, int | None]]) -> float:
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for ip, port in queries:
            fn(ip, port)
        dt = time.perf_counter() - t0
        best = max(best, len(queries) / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=2_000)
    ap.add_argument("--model-sample", type=int, default=500)
    args = ap.parse_args()

    # JSON text, as it comes off the wire; every variant parses its own copy
    pods_json = [json.dumps(make_pod(i)) for i in range(args.pods)]
    svcs_json = [json.dumps(make_service(i)) for i in range(args.services)]
    wire = sum(map(len, pods_json)) + sum(map(len, svcs_json))

    def build_index() -> ClusterIndex:
        idx = ClusterIndex()
        idx.replace("pods", (json.loads(p) for p in pods_json))
        idx.replace("services", (json.loads(s) for s in svcs_json))
        return idx

    def build_raw() -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        for text in pods_json:
            obj = json.loads(text)
            for entry in obj["status"]["podIPs"]:
                table[entry["ip"]] = obj
        for text in svcs_json:
            obj = json.loads(text)
            for ip in obj["spec"]["clusterIPs"]:
                table[ip] = obj
        return table

    index_bytes, index = measure(build_index)
    raw_bytes, raw = measure(build_raw)

    from kubernetes import client as k8s_client

    api = k8s_client.ApiClient()
    sample = max(1, min(args.model_sample, args.pods))

    def build_models() -> list[Any]:
        out = [api.deserialize(p, "V1Pod", "application/json") for p in pods_json[:sample]]
        out += [
            api.deserialize(s, "V1Service", "application/json")
            for s in svcs_json[: max(1, sample * args.services // args.pods)]
        ]
        return out

    t0 = time.perf_counter()
    model_sample_bytes, _models = measure(build_models)
    model_seconds = time.perf_counter() - t0
    model_bytes = model_sample_bytes * args.pods // sample
    api.close()

    n = args.pods + args.services
    print(f"objects: {args.pods} pods + {args.services} services, {wire / 1e6:.1f} MB of JSON")
    print(f"{'store':<34}{'memory':>12}{'per object':>14}")
    for label, size in (
        ("index (k8s_index.ClusterIndex)", index_bytes),
        ("raw dicts (parsed JSON by address)", raw_bytes),
        (f"client models (scaled from {sample})", model_bytes),
    ):
        print(f"{label:<34}{size / 1e6:>10.1f}MB{size / n:>12.0f} B")
    print(
        f"model deserialization: {model_seconds / sample * 1e3:.2f} ms per object "
        f"(~{model_seconds / sample * n:.0f} s for all)"
    )

    # queries: pods (v4 and v6), services, unknown addresses
    queries: list[tuple[str, int | None]] = []
    for i in range(0, args.pods, 7):
        queries.append((f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", None))
        if i % 2:
            queries.append((f"fd00:10::{i:x}", 8080))
    for i in range(0, args.services, 3):
        queries.append((f"10.96.{(i >> 8) & 255}.{i & 255}", 80))
    queries += [(f"172.16.{i & 255}.{i >> 8}", 443) for i in range(len(queries) // 4)]

    def raw_lookup(ip: str, port: int | None) -> tuple[str, str, str, str] | None:
        obj = raw.get(ip)
        if obj is None:
            return None
        meta = obj["metadata"]
        refs = meta.get("ownerReferences") or ()
        workload = refs[0]["name"] if refs else meta["name"]
        return (meta["name"], meta["namespace"], workload, obj["kind"].lower())

    rec = ConnectionRecord("", 40000, "", 80, 0, 0, None, 0.0, "established", "fin", 0.0, 0.0)

    def name_both(ip: str, port: int | None) -> None:
        rec.src = ip
        rec.dst = ip
        name_record(rec, index)

    hits = sum(index.lookup(ip, port) is not None for ip, port in queries)
    print(f"lookups: {len(queries)} queries, {hits} hits")
    print(f"{'lookup':<34}{'per second':>14}")
    print(f"{'index.lookup(ip, port)':<34}{rate(index.lookup, queries):>14,.0f}")
    print(f"{'raw dict + field extraction':<34}{rate(raw_lookup, queries):>14,.0f}")
    print(f"{'name_record (2 lookups, records)':<34}{rate(name_both, queries):>14,.0f}")


if __name__ == "__main__":
    main()
