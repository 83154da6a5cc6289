"""Grafana provisioning files agree with the seed's Grafana values and with the dashboards.

The seed (tests/data/seed/grafana-values-excerpt.yaml) is what users run today:
its Node Graph API datasource (name, type, ``jsonData.url``), its
``dashboardsConfigMaps`` name and its ``GF_INSTALL_PLUGINS`` must mean the same
in every file we ship. Every datasource type a dashboard asks for is provisioned
and declared by the app plugin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from k8spacket import dashboards as gen

PROV = REPO / "grafana-provisioning"
SEED = yaml.safe_load((REPO / "tests/data/seed/grafana-values-excerpt.yaml").read_text())
NODEGRAPH = "hamedkarbasi93-nodegraphapi-datasource"
INFINITY = "yesoreyeram-infinity-datasource"


def seed_nodegraph() -> dict[str, Any]:
    (file,) = SEED["datasources"].values()
    (ds,) = file["datasources"]
    return ds  # type: ignore[no-any-return]


def yaml_file(rel: str) -> Any:
    return yaml.safe_load((PROV / rel).read_text())


def provisioned_datasources() -> dict[str, list[dict[str, Any]]]:
    """Every list of datasources we ship, by where it is."""
    grafana_values = yaml_file("values/grafana-values.yaml")
    kps = yaml_file("values/kube-prometheus-stack-values.yaml")
    return {
        "datasources/k8spacket.yaml": yaml_file("datasources/k8spacket.yaml")["datasources"],
        "values/grafana-values.yaml": [
            ds for f in grafana_values["datasources"].values() for ds in f["datasources"]
        ],
        "values/kube-prometheus-stack-values.yaml": kps["grafana"]["additionalDataSources"],
    }


@pytest.mark.parametrize("where", list(provisioned_datasources()))
def test_node_graph_datasource_matches_the_seed(where: str) -> None:
    seed = seed_nodegraph()
    ours = [d for d in provisioned_datasources()[where] if d["type"] == seed["type"]]
    assert len(ours) == 1, where
    (ds,) = ours
    assert ds["name"] == seed["name"]
    assert ds["access"] == seed["access"] == "proxy"
    # the plugin reads only jsonData.url; a top-level url would be ignored (and mislead)
    assert ds["jsonData"]["url"] == seed["jsonData"]["url"]
    assert "url" not in ds


@pytest.mark.parametrize("where", list(provisioned_datasources()))
def test_infinity_reads_the_same_service(where: str) -> None:
    (ds,) = [d for d in provisioned_datasources()[where] if d["type"] == INFINITY]
    url = seed_nodegraph()["jsonData"]["url"]
    assert ds["url"] == url and url in ds["jsonData"]["allowedHosts"]


def test_plugin_lists_include_the_seeds_and_infinity() -> None:
    seed_plugins = SEED["env"]["GF_INSTALL_PLUGINS"].split(",")
    for install in (
        yaml_file("values/grafana-values.yaml")["env"]["GF_INSTALL_PLUGINS"],
        yaml_file("values/kube-prometheus-stack-values.yaml")["grafana"]["env"][
            "GF_INSTALL_PLUGINS"
        ],
    ):
        plugins = install.split(",")
        assert set(seed_plugins) <= set(plugins)
        assert INFINITY in plugins


def test_values_keep_the_seeds_dashboard_configmap_and_provider() -> None:
    ours = yaml_file("values/grafana-values.yaml")
    assert ours["dashboardsConfigMaps"] == SEED["dashboardsConfigMaps"]
    seed_providers = SEED["dashboardProviders"]["dashboardproviders.yaml"]["providers"]
    our_providers = ours["dashboardProviders"]["dashboardproviders.yaml"]["providers"]
    for p in seed_providers:
        assert p in our_providers
    # every ConfigMap the values mount is one we generate
    for name in ours["dashboardsConfigMaps"].values():
        assert (REPO / gen.CONFIGMAP_DIR / f"{name}.yaml").is_file(), name


def test_sidecar_label_is_the_one_our_configmaps_carry() -> None:
    for sidecar in (
        yaml_file("values/grafana-values.yaml")["sidecar"]["dashboards"],
        yaml_file("values/kube-prometheus-stack-values.yaml")["grafana"]["sidecar"]["dashboards"],
    ):
        assert (sidecar["label"], sidecar["labelValue"]) == ("grafana_dashboard", "1")


def test_every_datasource_type_a_dashboard_uses_is_provisioned_and_declared() -> None:
    used: set[str] = set()
    for path in (REPO / gen.DASHBOARD_DIR).glob("*.json"):
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] == "datasource":
                used.add(v["query"])
    assert used == {"prometheus", NODEGRAPH, INFINITY}
    for where, datasources in provisioned_datasources().items():
        types = {d["type"] for d in datasources}
        if where.startswith("values/kube-prometheus-stack"):
            types.add("prometheus")  # that chart provisions its own Prometheus
        assert used <= types, where
    plugin = json.loads((REPO / gen.PLUGIN_DIR / "plugin.json").read_text())
    declared = {p["id"] for p in plugin["dependencies"]["plugins"]}
    assert used - {"prometheus"} == declared


def test_dashboard_provider_and_app_provisioning() -> None:
    (provider,) = yaml_file("dashboard-providers/k8spacket.yaml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/grafana")
    (app,) = yaml_file("plugins/k8spacket-app.yaml")["apps"]
    assert app["type"] == gen.PLUGIN_ID and app["disabled"] is False


def test_docs_name_every_route_and_the_troubleshooting() -> None:
    text = (REPO / "docs/grafana.md").read_text()
    for needle in (
        "allow_loading_unsigned_plugins",
        "jsonData.url",
        "404",
        "k8spacket-node-graph-dashboard",
        "GF_INSTALL_PLUGINS",
        "make plugin",
        "/api/graph/data",
    ):
        assert needle in text, needle


def test_every_provisioning_file_is_yaml_with_api_version_1() -> None:
    for path in sorted(Path(PROV).glob("*/*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if path.parent.name in ("datasources", "dashboard-providers", "plugins"):
            assert doc["apiVersion"] == 1, path
