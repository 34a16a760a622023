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

run: install
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete
	@echo "table: results/table.md"

dry-run: install
	$(BIN)/snakemake -n --cores $(CORES)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check wsss tests

clean:
	rm -rf results/runs results/cams results/pseudo_labels results/logs results/data data/synthetic .snakemake
