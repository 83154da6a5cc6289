# Targets people expect. `make test` is what CI runs (see .ci/run and README).
# Everything runs in the virtual environment .venv, which `make deps` (and so
# `make test` and `make demo`) creates: Debian's and Ubuntu's own python3 refuse
# `pip install` outside one (PEP 668). The venv need not be on PATH or activated.
# PYTHON=/path/to/python makes the targets use (and install into) another
# interpreter instead.
VENV ?= $(CURDIR)/.venv
PYTHON ?= $(VENV)/bin/python
# the venv's console scripts (k8spacket, kubernetes-validate, ...) for tests and tools
BIN := $(dir $(PYTHON))
export VENV PYTHON

.PHONY: deps deps-runtime test lint typecheck pytest bench demo lock dashboards plugin

deps:
	./scripts/install-deps.sh

deps-runtime:
	./scripts/install-deps.sh --runtime

test: deps lint typecheck pytest

lint:
	$(PYTHON) -m ruff check exporter tests bench
	$(PYTHON) -m ruff format --check exporter tests bench
	PYTHONPATH=exporter $(PYTHON) -c 'from importlinter.cli import lint_imports_command as m; m(["--no-cache"])'

typecheck:
	$(PYTHON) -m mypy

pytest:
	PATH="$(BIN):$$PATH" $(PYTHON) -m pytest

bench: deps
	$(PYTHON) bench/replay_bench.py
	$(PYTHON) bench/metrics_bench.py
	$(PYTHON) bench/enrichment_bench.py
	$(PYTHON) bench/enrichment_callgrind.py
	$(PYTHON) bench/k8s_cache.py
	$(PYTHON) bench/live_capture.py
	$(PYTHON) bench/nodegraph_bench.py

# The live demo (root: network namespaces); exit status 3 means it cannot run here,
# and the replay of the sample capture is shown instead.
demo: deps-runtime
	bash scripts/deps.d/40-demo-graphviz.sh
	$(PYTHON) -m k8spacket demo; rc=$$?; \
	if [ $$rc -eq 3 ]; then \
	  echo "make demo: replaying the sample capture instead" >&2; \
	  $(PYTHON) -m k8spacket replay --format table --inventory exporter/k8spacket/samples/demo-inventory.yaml exporter/k8spacket/samples/demo.pcap; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi

# Refresh requirements.lock: the newest versions of the runtime dependencies that
# pyproject.toml allows, each with its hashes (pip-tools, pinned in the `lock` extra).
lock:
	./scripts/install-deps.sh --venv
	$(PYTHON) -m pip install -q --disable-pip-version-check "pip-tools==7.6.2"
	CUSTOM_COMPILE_COMMAND="make lock" $(PYTHON) -m piptools compile --quiet --upgrade --generate-hashes --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

# Regenerate the dashboards, their ConfigMaps, the chart's copies and the app
# plugin manifest from dashboards-gen/templates (commit the result).
dashboards:
	$(PYTHON) -m k8spacket.cli dashboards

# The Grafana app plugin bundle: dist/k8spacket-app-<version>.zip
plugin: dashboards
	$(PYTHON) -m k8spacket.cli dashboards --plugin-zip dist
