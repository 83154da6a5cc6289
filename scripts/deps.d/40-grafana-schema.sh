#!/usr/bin/env bash
# Grafana's dashboard JSON schema, generated from Grafana's own TypeScript types
# (npm @grafana/schema, type Dashboard in raw/dashboard/x/types.gen.d.ts) by
# ts-json-schema-generator. tests/test_dashboards_schema.py validates every
# generated dashboard against it. Cached: skipped when the schema exists for the
# pinned versions.
#   GRAFANA_SCHEMA_DIR  where to install (default ~/.cache/k8spacket/grafana-schema)
set -euo pipefail

SCHEMA_VERSION=12.4.11         # @grafana/schema: the Grafana release whose types we check against
GENERATOR_VERSION=2.10.0       # ts-json-schema-generator
dir=${GRAFANA_SCHEMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/k8spacket/grafana-schema}
out="$dir/dashboard-$SCHEMA_VERSION.schema.json"

if [ -s "$out" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    echo "warning: npm missing: cannot build Grafana's dashboard schema" >&2
    exit 0
  fi
fi
mkdir -p "$dir"
cd "$dir"
[ -f package.json ] || echo '{"name":"k8spacket-grafana-schema","private":true}' >package.json
echo "installing @grafana/schema@$SCHEMA_VERSION ts-json-schema-generator@$GENERATOR_VERSION in $dir" >&2
npm install --silent --no-audit --no-fund --ignore-scripts \
  "@grafana/schema@$SCHEMA_VERSION" "ts-json-schema-generator@$GENERATOR_VERSION" >/dev/null
types=node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts
[ -f "$types" ] || { echo "error: $types not in @grafana/schema@$SCHEMA_VERSION" >&2; exit 1; }
npx --no-install ts-json-schema-generator --path "$types" --type Dashboard \
  --no-type-check --expose export --out "$out.tmp"
mv "$out.tmp" "$out"
ln -sf "$(basename "$out")" "$dir/dashboard.schema.json"
echo "wrote $out" >&2
