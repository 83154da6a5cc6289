"""Where the watch cache gets its API client: in-cluster, kubeconfig, or nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8spacket.enrich.k8s import K8sCache, load_api_client

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:6443"}}],
    "users": [{"name": "u", "user": {"token": "t0ken"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no service account and no kubeconfig (HOME is empty)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("in_cluster_env", "kubeconfig_at", "expected_host"),
    [
        (False, None, None),
        (False, "KUBECONFIG", "http://127.0.0.1:6443"),
        (False, "HOME", "http://127.0.0.1:6443"),
        # a pod without a mounted service account token: falls through to kubeconfig
        (True, "KUBECONFIG", "http://127.0.0.1:6443"),
        (True, None, None),
    ],
    ids=["nothing", "kubeconfig-env", "home-kubeconfig", "broken-in-cluster", "broken-only"],
)
def test_load_api_client(
    no_cluster: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_cluster_env: bool,
    kubeconfig_at: str | None,
    expected_host: str | None,
) -> None:
    if in_cluster_env:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    if kubeconfig_at == "KUBECONFIG":
        path = no_cluster / "elsewhere.yaml"
        monkeypatch.setenv("KUBECONFIG", str(path))
    else:
        path = no_cluster / ".kube" / "config"
    if kubeconfig_at is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(KUBECONFIG))
    api = load_api_client()
    if expected_host is None:
        assert api is None
        return
    assert api is not None
    try:
        assert api.configuration.host == expected_host
        assert api.configuration.retries is False
        # the header the client sends (its api_key dict's key changed across releases)
        headers = {a["key"]: a["value"] for a in api.configuration.auth_settings().values()}
        assert headers == {"authorization": "Bearer t0ken"}
    finally:
        api.close()


def test_disabled_cleanly(no_cluster: Path) -> None:
    assert K8sCache.from_environment() is None


def test_broken_kubeconfig_disables(no_cluster: Path) -> None:
    (no_cluster / ".kube").mkdir()
    (no_cluster / ".kube" / "config").write_text("current-context: nowhere\n")
    assert load_api_client() is None
