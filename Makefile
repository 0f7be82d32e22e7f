# Two entry points for users: `make demo` (the demo pipeline) and `make test` (lint + the whole test suite,
# the slow end-to-end tests included). `make test-fast` runs the tests not marked `slow`; `make lint` only lints.
# All build .venv on first use with python3 -m venv + pip install -e ".[test]".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test test-fast lint bench-diagnostics bench-grid clean-results

$(BIN)/lssr: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade -q pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(BIN)/lssr

demo: $(BIN)/lssr
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report report.html

lint: $(BIN)/lssr
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --cores 1

test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=12 tests

test-fast: $(BIN)/lssr
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow" tests

bench-diagnostics: $(BIN)/lssr
	$(BIN)/python benchmarks/bench_diagnostics.py

bench-grid: $(BIN)/lssr
	$(BIN)/python benchmarks/bench_grid.py

clean-results:
	rm -rf results/* figures/* report.html .snakemake
