# The two quick-start commands: `make demo` and `make test`.
# Each creates its own virtual environment (.venv) and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/gpuslo: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,broker]'
	@touch $@

demo: $(BIN)/gpuslo
	$(BIN)/gpuslo demo $(ARGS)

test: $(BIN)/gpuslo
	./scripts/system-packages.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/gpuslo
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/gpuslo
	$(BIN)/python benchmarks/bench_kafka.py
	$(BIN)/python benchmarks/bench_parser.py
	$(BIN)/python benchmarks/bench_slo.py
	$(BIN)/python -m gpuslo.simulator.bench --nodes 64

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
