#!/usr/bin/env bash
# What `k8spacket demo` and the agent's /graph page draw with: Graphviz's `dot`
# (Debian package graphviz; the PyPI package graphviz is a runtime dependency in
# pyproject.toml). Prometheus too, so the demo shows the whole cluster's graph
# (source=prometheus); the demo works without it, on each agent's own graph.
# Safe to run again: installs only what is missing; needs root for apt-get.
set -euo pipefail
missing=()
command -v dot >/dev/null || missing+=(graphviz)
command -v prometheus >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "warning: missing ${missing[*]} (install as root: apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
