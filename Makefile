# Every target creates .venv on first use; nothing else needs installing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/barter/v1/*.proto)

.PHONY: all demo test lint fmt proto proto-check chaos bench clean

all: test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[brain,hands,postgres,dev]'
	touch $(STAMP)

# Regenerates the committed stubs; protoc plugins are found on the venv's PATH.
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=generated --pyi_out=generated \
		--grpc_python_out=generated --mypy_grpc_out=generated \
		$(PROTOS)

proto-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_architecture.py -k generated_stubs

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

# A few minutes of kills, stops and cut links; exits non-zero on any loss or
# duplicate. Pass options with CHAOS_ARGS, e.g. "--store postgres --replicas 2".
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py $(CHAOS_ARGS)

# Prints the performance table and writes bench-results.json. BENCH_ARGS=--quick
# for a short run.
bench: $(STAMP)
	$(BIN)/python tests/bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .demo-data .pytest_cache bench-results.json
