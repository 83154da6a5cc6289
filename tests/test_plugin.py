"""The Grafana app plugin bundle: manifest, zip layout, and a module.js Grafana will load.

What Grafana requires of an app plugin (read from Grafana's plugin loader and
its plugin.json schema): ``type: app``, an ``id`` matching
``^[0-9a-z]+-([0-9a-z]+-)?app$``, ``name``, ``info`` with small and large logos,
``version``, ``updated`` and keywords, ``dependencies.grafanaDependency``;
dashboards as ``includes`` of ``type: dashboard`` with a ``path`` inside the
bundle, nav pages as ``type: page`` with ``path: d/<uid>``. Grafana 11+ refuses a
plugin whose module contains the Angular detector's patterns (the list below is
Grafana's ``defaultDetectors`` in its angulardetector package). Unsigned bundles
must not carry a MANIFEST.txt (a stale one fails signature checks).

module.js is run by the real node binary with a stand-in AMD ``define`` and
``@grafana/data``: it must return ``{plugin: <AppPlugin instance>}``.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, require_tool
from k8spacket import __version__
from k8spacket import dashboards as gen

ANGULAR_STRINGS = (
    "PanelCtrl",
    "ConfigCtrl",
    "QueryCtrl",
    "app/plugins/sdk",
    "angular.isNumber(",
    "editor.html",
    "ctrl.annotation",
    "getLegacyAngularInjector",
)
ANGULAR_REGEXES = (
    r"['\"](app/core/utils/promiseToDigest)|(app/plugins/.*?)|(app/core/core_module)['\"]",
    r"from\s+['\"]grafana\/app\/",
    r"System\.register\(",
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.plugin_zip(REPO, tmp_path_factory.mktemp("dist"))


def read(bundle: Path, member: str) -> bytes:
    with zipfile.ZipFile(bundle) as zf:
        return zf.read(f"{gen.PLUGIN_ID}/{member}")


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads(read(bundle, "plugin.json"))  # type: ignore[no-any-return]


def test_zip_is_versioned_with_the_plugin_id_as_top_folder(bundle: Path) -> None:
    assert bundle.name == f"{gen.PLUGIN_ID}-{__version__}.zip"
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
    assert all(n.startswith(f"{gen.PLUGIN_ID}/") for n in names), names
    assert not [n for n in names if n.endswith("MANIFEST.txt")]
    for required in ("plugin.json", "module.js", "README.md"):
        assert f"{gen.PLUGIN_ID}/{required}" in names


def test_zip_is_reproducible(bundle: Path, tmp_path: Path) -> None:
    assert gen.plugin_zip(REPO, tmp_path).read_bytes() == bundle.read_bytes()


def test_manifest_has_what_grafana_requires(bundle: Path) -> None:
    m = manifest(bundle)
    assert m["type"] == "app"
    assert re.fullmatch(r"[0-9a-z]+-([0-9a-z]+-)?app", m["id"]), m["id"]
    assert m["name"]
    info = m["info"]
    assert info["version"] == __version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", info["updated"])
    assert info["keywords"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", m["dependencies"]["grafanaDependency"])
    plugin_ids = {p["id"] for p in m["dependencies"]["plugins"]}
    assert plugin_ids == {
        "hamedkarbasi93-nodegraphapi-datasource",
        "yesoreyeram-infinity-datasource",
    }
    for size in ("small", "large"):
        svg = read(bundle, info["logos"][size])
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_includes_exist_in_the_zip_and_pages_point_at_the_dashboards(bundle: Path) -> None:
    m = manifest(bundle)
    dash_includes = [i for i in m["includes"] if i["type"] == "dashboard"]
    pages = [i for i in m["includes"] if i["type"] == "page"]
    specs = gen.load_specs(REPO)
    assert len(dash_includes) == len(pages) == len(specs)
    uids = set()
    for inc in dash_includes:
        dash = json.loads(read(bundle, inc["path"]))
        assert dash["title"] == inc["name"]
        assert isinstance(dash["revision"], int)
        uids.add(dash["uid"])
    assert {p["path"] for p in pages} == {f"d/{uid}" for uid in uids}
    assert all(p["addToNav"] for p in pages)
    assert sum(bool(p.get("defaultNav")) for p in pages) == 1


def test_module_js_has_no_angular_detector_patterns(bundle: Path) -> None:
    for member in ("module.js", "plugin.json"):
        text = read(bundle, member).decode()
        for s in ANGULAR_STRINGS:
            assert s not in text, (member, s)
        for rx in ANGULAR_REGEXES:
            assert not re.search(rx, text), (member, rx)


def test_the_angular_check_would_catch_a_bad_module() -> None:
    bad = "define(['app/plugins/sdk'], function (sdk) { return {PanelCtrl: sdk.PanelCtrl}; });"
    assert any(s in bad for s in ANGULAR_STRINGS)
    assert any(re.search(rx, "System.register([], function () {})") for rx in ANGULAR_REGEXES)


STUB = """
const fs = require('fs');
class AppPlugin { constructor() { this.meta = null; } }
let exported;
global.define = function (deps, factory) {
  const mods = { '@grafana/data': { AppPlugin } };
  exported = factory(...deps.map((d) => { if (!(d in mods)) throw new Error('unknown dep ' + d); return mods[d]; }));
};
global.define.amd = {};
eval(fs.readFileSync(process.argv[1], 'utf8'));
console.log(JSON.stringify({ keys: Object.keys(exported), isApp: exported.plugin instanceof AppPlugin }));
"""


def test_module_js_loads_as_an_amd_module_returning_an_app_plugin(
    bundle: Path, tmp_path: Path
) -> None:
    node = require_tool("node")
    module = tmp_path / "module.js"
    module.write_bytes(read(bundle, "module.js"))
    out = subprocess.run(
        [node, "-e", STUB, str(module)], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(out.stdout) == {"keys": ["plugin"], "isApp": True}


def test_stale_generated_files_refuse_to_pack(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    for rel in (gen.GEN_DIR, "grafana-provisioning", "charts/k8spacket/dashboards"):
        shutil.copytree(REPO / rel, copy / rel)
    (copy / gen.PLUGIN_DIR / "plugin.json").write_text("{}\n")
    with pytest.raises(gen.GeneratorError, match="stale"):
        gen.plugin_zip(copy, tmp_path / "dist")
