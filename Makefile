# Two commands: `make run` (the whole pipeline on the embedded benchmark) and `make test` (the test suite).
# Both create .venv with the pinned dependencies first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
CORES  ?= all

.PHONY: run test test-all lint slurm-test dvc.yaml dvc-check bench clean-smoke

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@echo "report: results/default/report/index.html"

# The fast tier (unit tests, and the end-to-end checks that all reuse ONE smoke DAG run) plus the linters:
# <= 10 minutes on 2 cores. `make test-all` adds the slow checks (served-VOC pipeline, SIGKILL, DDP, re-runs after
# a change; SLURM where its daemons are installed).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-all: $(STAMP) lint
	$(BIN)/python -m pytest -q --durations=30

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/smoke.yaml

# The smoke DAG through SLURM on a single-node cluster on 127.0.0.1: installs Debian's slurm-wlm and munge when
# missing (root, apt-get), then runs only tests/test_slurm.py (`make test` runs it only where they are installed).
slurm-test: $(STAMP)
	bash tests/slurm/localslurm.sh install
	$(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

dvc.yaml: $(STAMP)
	$(BIN)/wsss-dvc-yaml --configfile config/config.yaml --out dvc.yaml

dvc-check: $(STAMP)
	$(BIN)/wsss-dvc-yaml --configfile config/config.yaml --out dvc.yaml --check

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
