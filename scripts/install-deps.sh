#!/usr/bin/env bash
# Install what k8spacket needs on a Debian/Ubuntu machine: system tools (from
# apt, when run as root) and the Python package, editable, in a virtual
# environment (.venv, made here when missing: Debian's and Ubuntu's own python3
# refuse `pip install` outside one, PEP 668).
#   scripts/install-deps.sh            everything the tests need (test extras,
#                                      tcpdump/tshark/prometheus, MaxMind test DBs,
#                                      then every scripts/deps.d/*.sh)
#   scripts/install-deps.sh --runtime  only what `k8spacket` itself needs (the demo)
#   scripts/install-deps.sh --venv     only the virtual environment (for `make lock`)
# The runtime dependencies come from requirements.lock (exact versions, hashed;
# `make lock` refreshes it). Environment: VENV (default .venv); PYTHON (default
# $VENV/bin/python; point it at another interpreter to install there instead);
# BOOTSTRAP_PYTHON (default python3) makes the venv.
# Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=false
venv_only=false
[ "${1:-}" = "--runtime" ] && runtime_only=true
[ "${1:-}" = "--venv" ] && venv_only=true && runtime_only=true

is_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_updated=false
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! $apt_updated; then
    apt-get update -qq
    apt_updated=true
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if $runtime_only; then
  APT_PACKAGES=(libpcap0.8 iproute2)
else
  APT_PACKAGES=(libpcap0.8 tcpdump tshark tcpreplay iperf3 prometheus iproute2 make)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && ! $venv_only; then
  if is_root; then
    echo "installing system packages: ${missing[*]}" >&2
    apt_install "${missing[@]}"
  else
    echo "warning: missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

# ------------------------------------------------------------ the virtual environment
VENV=${VENV:-.venv}
PY=${PYTHON:-$VENV/bin/python}
if [ "$PY" = "$VENV/bin/python" ] && [ ! -x "$PY" ]; then
  boot=${BOOTSTRAP_PYTHON:-python3}
  command -v "$boot" >/dev/null || { echo "error: $boot not found; install python3 (3.11 or later)" >&2; exit 1; }
  echo "creating the virtual environment $VENV with $(command -v "$boot")" >&2
  if ! "$boot" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    if is_root; then
      echo "installing python3-venv (the venv module Debian and Ubuntu ship apart)" >&2
      apt_install python3-venv
      "$boot" -m venv "$VENV"
    else
      echo "error: '$boot -m venv' failed; as root run: apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
pip=("$PY" -m pip install -q --disable-pip-version-check)
$venv_only && exit 0

# Runtime dependencies at the locked versions, then k8spacket itself (editable; a
# dependency added to pyproject.toml since the last `make lock` is resolved here).
"${pip[@]}" -r requirements.lock
if $runtime_only; then
  "${pip[@]}" -e .
  exit 0
fi
"${pip[@]}" -e ".[test]"

# MaxMind's own GeoIP test databases (they ship only in the maxminddb source archive).
PYTHON="$PY" ./tests/fixtures/fetch_maxmind_test_dbs.sh

# Per-component test tools (helm, a browser, schema generators, ...): scripts/deps.d/*.sh
for f in scripts/deps.d/*.sh; do
  [ -e "$f" ] || continue
  PYTHON="$PY" bash "$f"
done
