# Two entry points (see README): `make run` regenerates the results table on the
# embedded synthetic benchmark; `make test` runs the test suite. Each creates
# the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test install dry-run lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

# `wsss run` (wsss/tools/run.py) validates the params, refuses to start beside a live run,
# clears what a killed run left (stale Snakemake lock, temporary files, lost dataset
# files) and runs `snakemake --rerun-incomplete`. ARGS: e.g. ARGS="--configfile configs/smoke.yaml".
run: install
	$(BIN)/wsss run --cores $(CORES) $(ARGS)

dry-run: install
	$(BIN)/wsss check-params
	$(BIN)/snakemake -n --cores $(CORES)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check wsss tests

# Every per-run artifact, the dataset manifests, logs and the default synthetic dataset; the
# files tracked in git (table, figures) stay. The next `make run` rebuilds all of it.
clean:
	rm -rf results/runs results/cams results/pseudo_labels results/logs results/data data/synthetic .snakemake
	rm -rf results-smoke data/synthetic-smoke
