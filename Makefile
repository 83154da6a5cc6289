# Targets people expect. `make test` is what CI runs (see .ci/run and README).
PYTHON ?= python3
export PYTHON

.PHONY: deps deps-runtime test lint typecheck pytest bench demo

deps:
	./scripts/install-deps.sh

deps-runtime:
	./scripts/install-deps.sh --runtime

test: deps lint typecheck pytest

lint:
	$(PYTHON) -m ruff check exporter tests bench
	$(PYTHON) -m ruff format --check exporter tests bench

typecheck:
	$(PYTHON) -m mypy

pytest:
	$(PYTHON) -m pytest

bench: deps
	$(PYTHON) bench/replay_bench.py
	$(PYTHON) bench/metrics_bench.py
	$(PYTHON) bench/enrichment_bench.py
	$(PYTHON) bench/enrichment_callgrind.py
	$(PYTHON) bench/k8s_cache.py
	$(PYTHON) bench/live_capture.py

# The live demo (root: network namespaces); exit status 3 means it cannot run here,
# and the replay of the sample capture is shown instead.
demo: deps-runtime
	bash scripts/deps.d/40-demo-graphviz.sh
	k8spacket demo; rc=$$?; \
	if [ $$rc -eq 3 ]; then \
	  echo "make demo: replaying the sample capture instead" >&2; \
	  k8spacket replay --format table --inventory exporter/k8spacket/samples/demo-inventory.yaml exporter/k8spacket/samples/demo.pcap; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi
