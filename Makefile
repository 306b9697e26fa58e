# The two front-door commands (see README): `make dev` runs the system, `make test` tests it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint bench services clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run origin + two regions + a seeded demo table locally (Ctrl-C stops everything).
dev: $(STAMP)
	$(BIN)/cache-edge dev

## Lint, type-check and run the whole test suite against real PostgreSQL and Redis.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

## Run the benchmark suite (see bench/README.md); e.g. make bench BENCH_ARGS="--quick --only hit"
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .dev .mypy_cache .ruff_cache .pytest_cache
