#!/usr/bin/env bash
# iptables (kube-proxy-style DNAT rules in the lab's node namespaces) and the
# conntrack CLI (to look at the kernel's table while debugging): the Service
# tests in tests/test_exactly_once_lab.py need iptables. Safe to run again.
set -euo pipefail
need=()
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "warning: missing ${need[*]} (install as root)" >&2
fi
