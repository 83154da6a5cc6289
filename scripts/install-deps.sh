#!/usr/bin/env bash
# Install what k8spacket needs on a Debian/Ubuntu machine: system tools (from
# apt, when run as root) and the Python package (editable, from PyPI).
#   scripts/install-deps.sh            everything the tests need (test extras,
#                                      tcpdump/tshark/prometheus, MaxMind test DBs)
#   scripts/install-deps.sh --runtime  only what `k8spacket` itself needs (the demo)
# Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=false
[ "${1:-}" = "--runtime" ] && runtime_only=true

if $runtime_only; then
  APT_PACKAGES=(libpcap0.8 iproute2)
else
  APT_PACKAGES=(libpcap0.8 tcpdump tshark tcpreplay iperf3 prometheus iproute2 make)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
if $runtime_only; then
  "$PY" -m pip install -q --disable-pip-version-check -e .
  exit 0
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"

# MaxMind's own GeoIP test databases (they ship only in the maxminddb source archive).
PYTHON="$PY" ./tests/fixtures/fetch_maxmind_test_dbs.sh

# Per-component test tools (helm, a browser, schema generators, ...): scripts/deps.d/*.sh
for f in scripts/deps.d/*.sh; do
  [ -e "$f" ] || continue
  PYTHON="$PY" bash "$f"
done
