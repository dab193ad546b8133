# Daedalus: `make demo` and `make test` are the contract with a new user.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := python3
UVBOOT := .uvboot
DEMO_ROOT ?= data/demo/sources
export DAEDALUS_SOURCES_ROOT ?= $(DEMO_ROOT)

.PHONY: install browser demo test test-fast lint bench dev clean

install: .venv/.synced

# uv: the one on PATH (or UV=...), ~/.local/bin/uv, .uvboot/bin/uv; else pip install --user uv,
# pip install uv, and where a PEP 668 system Python refuses both, a venv of its own (.uvboot).
# --compile-bytecode: every Ray worker process imports Ray Data (and pandas with it); without
# .pyc files, and where PYTHONDONTWRITEBYTECODE is set (as on our development machine) Python never
# writes them, each process compiles those modules from source again: `import ray.data` takes
# 2.0 s instead of 0.65 s, ~12 CPU-s of a 2-CPU enrich day's first minute (bench/README.md).
.venv/.synced: pyproject.toml uv.lock Makefile
	@uv=""; for c in "$(UV)" "$$(command -v uv 2>/dev/null)" "$(HOME)/.local/bin/uv" "$(UVBOOT)/bin/uv"; do \
	  if [ -n "$$c" ] && [ -x "$$c" ]; then uv="$$c"; break; fi; done; \
	if [ -z "$$uv" ] && { $(PY) -m pip install --quiet --user uv 2>/dev/null || $(PY) -m pip install --quiet uv 2>/dev/null; }; then \
	  uv=$$(command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv"); fi; \
	if [ -z "$$uv" ] || [ ! -x "$$uv" ]; then \
	  echo "pip would not install uv (an externally managed Python?): bootstrapping it in $(UVBOOT)/"; \
	  $(PY) -m venv $(UVBOOT) && $(UVBOOT)/bin/pip install --quiet uv || { \
	    echo "error: could not install uv (fix: install it, https://docs.astral.sh/uv/, or python3-venv)" >&2; \
	    exit 1; }; \
	  uv="$(UVBOOT)/bin/uv"; fi; \
	"$$uv" sync --frozen --python 3.11 --compile-bytecode
	@touch .venv/.synced

# Chromium for the UI test (tests/test_dagster_ui.py skips, saying why, without one): one on
# PATH, else Playwright's own build, else Debian's package through apt (as root).
browser: install
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
	  echo "Chromium: $$(command -v chromium || command -v chromium-browser)"; \
	elif .venv/bin/playwright install chromium >/dev/null 2>&1; then \
	  echo "Chromium: Playwright's own build"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } && \
	  echo "Chromium: Debian's package, $$(command -v chromium)"; \
	else \
	  echo "error: could not install Chromium (fix: install it, e.g. sudo apt-get install chromium," \
	    "or set DAEDALUS_CHROMIUM to a Chromium binary)" >&2; exit 1; fi

demo: install
	.venv/bin/daeda demo-data --root $(DEMO_ROOT)
	.venv/bin/daeda pipeline compile dssm_ranking
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
	.venv/bin/python bench/skeleton.py

PORT ?= 3000

dev: install
	DAGSTER_HOME=$$(pwd)/.dagster_home .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(PORT)

clean:
	rm -rf data/training_output data/training_output_enriched data/store data/tmp
