"""Generate the Grafana dashboards, their ConfigMaps and the app plugin from templates.

The templates live in ``dashboards-gen/`` of a source checkout (this module only
loads them: ``k8spacket dashboards`` and ``make dashboards`` run it). Jinja2 uses
``<< >>``, ``<% %>`` and ``<# #>`` as delimiters there, so Grafana's ``{{label}}``
legends and Helm's templating pass through untouched.

Output (all committed; :func:`stale_files` says which differ from a fresh run):

* ``grafana-provisioning/dashboards/<name>.json``: the dashboard, for Grafana's
  file provider and the app plugin;
* ``grafana-provisioning/configmaps/<configmap>.yaml``: the same JSON in a
  ConfigMap labelled ``grafana_dashboard: "1"`` for Grafana's dashboard sidecar,
  and unlabelled copies under each alias (the seed mounts one by name);
* ``charts/k8spacket/dashboards/<name>.json``: the chart's copy;
* ``grafana-provisioning/plugin/plugin.json``: the app plugin manifest, whose
  ``includes`` list every dashboard and a nav page for each.

Output is deterministic: panels get ids in order and a layout from their sizes,
JSON is written with a fixed indent, and each dashboard's ``revision`` (what
Grafana compares to re-import an app's dashboards) is derived from its content.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from k8spacket import __version__

GEN_DIR = "dashboards-gen"
DASHBOARD_DIR = "grafana-provisioning/dashboards"
CONFIGMAP_DIR = "grafana-provisioning/configmaps"
CHART_DIR = "charts/k8spacket/dashboards"
PLUGIN_DIR = "grafana-provisioning/plugin"
PLUGIN_ID = "k8spacket-app"
#: grid width of a Grafana dashboard
GRID_WIDTH = 24


class GeneratorError(Exception):
    """The templates are missing or render to something that is not a dashboard."""


@dataclass(frozen=True)
class DashboardSpec:
    name: str
    template: str
    uid: str
    title: str
    configmap: str
    aliases: tuple[str, ...]


def find_root(start: Path | None = None, explicit: bool = False) -> Path:
    """The source checkout holding ``dashboards-gen/``.

    ``explicit``: ``start`` itself must be it (``--root``); otherwise it and its
    parents are searched, then the checkout this module was imported from.
    """
    if explicit and start is not None:
        if (start / GEN_DIR / "dashboards.yaml").is_file():
            return start.resolve()
        raise GeneratorError(f"{start} has no {GEN_DIR}/dashboards.yaml")
    candidates = []
    if start is not None:
        candidates.append(start.resolve())
    candidates.append(Path(__file__).resolve().parent)
    for base in candidates:
        for d in (base, *base.parents):
            if (d / GEN_DIR / "dashboards.yaml").is_file():
                return d
    raise GeneratorError(
        f"no {GEN_DIR}/dashboards.yaml above {candidates[0]}: run from a k8spacket source "
        "checkout or pass --root"
    )


def load_specs(root: Path) -> list[DashboardSpec]:
    raw = yaml.safe_load((root / GEN_DIR / "dashboards.yaml").read_text())
    return [
        DashboardSpec(
            name=d["name"],
            template=d["template"],
            uid=d["uid"],
            title=d["title"],
            configmap=d["configmap"],
            aliases=tuple(d.get("aliases", ())),
        )
        for d in raw["dashboards"]
    ]


def _environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / GEN_DIR / "templates"),
        block_start_string="<%",
        block_end_string="%>",
        variable_start_string="<<",
        variable_end_string=">>",
        comment_start_string="<#",
        comment_end_string="#>",
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _layout(panels: list[dict[str, Any]]) -> None:
    """Number panels in order and place them left to right, row by row.

    A template gives each panel a ``gridPos`` with only ``w`` and ``h``; a row
    panel (``type: row``) always starts a new line.
    """
    x = y = line_height = 0
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
        pos = panel["gridPos"]
        w, h = int(pos["w"]), int(pos["h"])
        if panel["type"] == "row" or x + w > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        line_height = max(line_height, h)
        if panel["type"] == "row":
            x, y, line_height = 0, y + h, 0


def render_dashboard(root: Path, spec: DashboardSpec, specs: list[DashboardSpec]) -> dict[str, Any]:
    env = _environment(root)
    text = env.get_template(spec.template).render(spec=spec, dashboards=specs, version=__version__)
    try:
        dash: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as e:
        raise GeneratorError(f"{spec.template} does not render to JSON: {e}") from None
    _layout(dash["panels"])
    dash.pop("revision", None)
    digest = hashlib.sha256(json.dumps(dash, sort_keys=True).encode()).hexdigest()
    dash["revision"] = int(digest[:7], 16)
    return dash


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def configmap_yaml(name: str, spec: DashboardSpec, dashboard_json: str, sidecar: bool) -> str:
    """The dashboard in a ConfigMap; ``sidecar`` adds Grafana's sidecar label."""
    body = "".join(f"    {line}\n" if line else "\n" for line in dashboard_json.splitlines())
    label = '    grafana_dashboard: "1"\n' if sidecar else ""
    return (
        f"# Generated by `k8spacket dashboards` from {GEN_DIR}/templates/{spec.template};"
        " do not edit.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {name}\n"
        "  labels:\n" + label + "    app.kubernetes.io/name: k8spacket\n"
        "    app.kubernetes.io/component: dashboard\n"
        "data:\n"
        f"  {spec.name}.json: |\n" + body
    )


def render_all(root: Path) -> dict[str, str]:
    """Every generated file: {path relative to ``root``: content}."""
    specs = load_specs(root)
    out: dict[str, str] = {}
    for spec in specs:
        text = dump_json(render_dashboard(root, spec, specs))
        out[f"{DASHBOARD_DIR}/{spec.name}.json"] = text
        out[f"{CHART_DIR}/{spec.name}.json"] = text
        out[f"{CONFIGMAP_DIR}/{spec.configmap}.yaml"] = configmap_yaml(
            spec.configmap, spec, text, sidecar=True
        )
        for alias in spec.aliases:
            out[f"{CONFIGMAP_DIR}/{alias}.yaml"] = configmap_yaml(alias, spec, text, sidecar=False)
    plugin_text = (
        _environment(root)
        .get_template("plugin.json.j2")
        .render(dashboards=specs, version=__version__, plugin_id=PLUGIN_ID)
    )
    try:
        plugin = json.loads(plugin_text)
    except json.JSONDecodeError as e:
        raise GeneratorError(f"plugin.json.j2 does not render to JSON: {e}") from None
    out[f"{PLUGIN_DIR}/plugin.json"] = dump_json(plugin)
    return out


def write_all(root: Path) -> list[str]:
    """Regenerate every file; returns the paths that changed."""
    changed = []
    for rel, text in render_all(root).items():
        path = root / rel
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(rel)
    return changed


def stale_files(root: Path) -> list[str]:
    """Generated files that are missing or differ from a fresh generation."""
    return [
        rel
        for rel, text in render_all(root).items()
        if not (root / rel).is_file() or (root / rel).read_text() != text
    ]


def plugin_zip(root: Path, out_dir: Path) -> Path:
    """Pack the app plugin as ``<id>-<version>.zip`` with top folder ``<id>/``.

    Takes the committed (generated) ``plugin.json`` and dashboards, so run the
    generator first; refuses stale files. No MANIFEST.txt: the bundle is unsigned.
    """
    stale = stale_files(root)
    if stale:
        raise GeneratorError(f"generated files are stale, run `make dashboards`: {stale}")
    plugin_dir = root / PLUGIN_DIR
    manifest = json.loads((plugin_dir / "plugin.json").read_text())
    version = manifest["info"]["version"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_ID}-{version}.zip"
    members: dict[str, Path] = {}
    for path in sorted(plugin_dir.rglob("*")):
        rel = path.relative_to(plugin_dir).as_posix()
        if path.is_file() and path.name != "MANIFEST.txt":
            members[rel] = path
    for path in sorted((root / DASHBOARD_DIR).glob("*.json")):
        members[f"dashboards/{path.name}"] = path
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path in sorted(members.items()):
            info = zipfile.ZipInfo(f"{PLUGIN_ID}/{rel}", date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return target
