# Two commands on a fresh clone: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test lint typecheck unit integration bench bench-waiting bench-scale clean

$(BIN)/python:
	@echo "Creating the virtualenv $(VENV) (once)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project itself goes in editable (-e): `$(BIN)/runner` is the CLI, and edits take effect at once.
# (PYTHONWARNINGS: setuptools' banner about editable installs would be the loudest line of `make dev`.)
$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(BIN)/python
	@echo "Installing the runtime dependencies into $(VENV) (the first time takes about 30 s)..."
	$(BIN)/pip install --quiet -r requirements.txt
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	@echo "Installing the runtime, test and lint dependencies into $(VENV) (the first time takes about a minute)..."
	$(BIN)/pip install --quiet -r requirements-dev.txt
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --no-deps -e .
	touch $(VENV)/.runtime-installed $@

## Run API + workers autoscaling from 1 to the CPU count (+ its own Redis, SQLite) on http://127.0.0.1:8000
dev: $(VENV)/.runtime-installed
	$(BIN)/python -m runner dev $(ARGS)

## Lint, type-check and run every test (starts its own Redis and PostgreSQL)
test: $(VENV)/.dev-installed lint typecheck
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy runner api

$(VENV)/.bench-installed: requirements.txt requirements-bench.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

## Benchmarks against raw RQ and Celery (not part of `make test`); installs wrk (HTTP load) when it can
bench: $(VENV)/.bench-installed
	@bench/ensure-wrk
	$(BIN)/python -m bench.run $(ARGS)

## Only the waiting-jobs section of `make bench`: no-op and 100 ms jobs, ours async and threaded against
## Dramatiq and Celery thread pools (about 9 minutes; ARGS=--quick checks the harness in about 1)
bench-waiting: $(VENV)/.bench-installed
	$(BIN)/python -m bench.waiting $(ARGS)

## Costs as the work grows (PostgreSQL with 1,000,000 history rows, 100,000 queued jobs, prune):
## about 5 minutes on a quiet 2-core machine (15 on a busy one); ARGS=--quick checks the harness in about 2
bench-scale: $(VENV)/.bench-installed
	$(BIN)/python -m bench.scale $(ARGS)

unit: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/unit

integration: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/integration

clean:
	rm -rf $(VENV) .runner .pytest_cache .mypy_cache .ruff_cache
