#!/usr/bin/env bash
# Headless Chromium (Debian package chromium) for the test that opens the /graph
# topology page and takes a screenshot (tests/test_demo.py, tests/test_graph_page.py).
# Safe to run again; needs root for apt-get.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "warning: chromium is missing (install as root: apt-get install chromium)" >&2
  exit 0
fi
echo "installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
