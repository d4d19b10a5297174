# flowscope: the README's two commands, `make demo` and `make test`, plus `make bench` and `make lint`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flowscope needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/flowscope run -c examples/demo.yaml

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check flowscope tests

bench: install
	command -v jq >/dev/null || (apt-get update -qq && apt-get install -y -qq jq)
	$(BIN)/python tests/bench/bench_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache flowscope-data demo-flows.jsonl
