#!/usr/bin/env bash
# Do the lower bounds in pyproject.toml really work? Installs every runtime
# dependency at exactly its lower bound (a constraints file made from
# pyproject.toml) into a throw-away venv, with the test extras, and runs the tests
# that need neither root nor a real Prometheus/Kubernetes emulator.
#   scripts/check-lower-bounds.sh [pytest args...]
# BOOTSTRAP_PYTHON (default python3) makes the venv. Not part of `make test`: it
# downloads old releases and takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
boot=${BOOTSTRAP_PYTHON:-python3}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$boot" - >"$tmp/lower.txt" <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    m = re.fullmatch(r"([A-Za-z0-9._-]+)>=([0-9][^,;]*)", d.strip())
    if m is None:
        raise SystemExit(f"no plain lower bound in {d!r}")
    print(f"{m.group(1)}=={m.group(2)}")
PY
echo "lower bounds:" $(cat "$tmp/lower.txt") >&2
"$boot" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check -c "$tmp/lower.txt" -e ".[test]"
"$py" -m pip list --format=freeze 2>/dev/null | grep -iE "^($(sed 's/==.*//' "$tmp/lower.txt" | paste -sd'|'))==" >&2
PATH="$tmp/venv/bin:$PATH" "$py" -m pytest -q -p no:cacheprovider \
  -m "not netns and not prometheus and not kmock and not slow" "$@"
