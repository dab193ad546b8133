# Daedalus: `make demo` and `make test` are the contract with a new user.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := python3
DEMO_ROOT ?= data/demo/sources
export DAEDALUS_SOURCES_ROOT ?= $(DEMO_ROOT)

.PHONY: install demo test test-fast lint bench dev clean

install: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || $(PY) -m pip install --quiet --user uv || $(PY) -m pip install --quiet uv
	@UV=$$(command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv); $$UV sync --frozen --python 3.11
	@touch .venv/.synced

demo: install
	.venv/bin/daeda demo-data --root $(DEMO_ROOT)
	.venv/bin/daeda pipeline compile dssm_ranking > /dev/null
	.venv/bin/daeda pipeline train dssm_ranking --ray-num-cpus 2
	@echo
	@echo "Skeleton output:  $$(pwd)/data/training_output/"
	@echo "Enriched output:  $$(pwd)/data/training_output_enriched/"

test: install
	.venv/bin/python -m pytest -q

test-fast: install
	.venv/bin/python -m pytest -q -m "not slow"

lint: install
	.venv/bin/ruff check src tests bench

bench: install
	.venv/bin/python bench/run_all.py

dev: install
	DAGSTER_HOME=$$(pwd)/.dagster_home .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf data/training_output data/training_output_enriched data/store data/tmp
