# flowscope: the README's two commands, `make demo` and `make test`, plus `make bench` and `make lint`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real peers the tests talk to: IPFIX decoders and probes, conntrack tools, a browser for the web UI.
DEBIAN_PACKAGES := tshark nfdump pmacct softflowd conntrack nftables iproute2 jq openssl chromium

.PHONY: install system-packages demo test lint bench clean

install: $(STAMP) system-packages

system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "not root: cannot install $$missing; the tests that need them are skipped"; \
		fi; \
	fi

C_SOURCES := $(shell find flowscope -name '*.c' -o -name '*.h')

$(STAMP): pyproject.toml $(C_SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flowscope needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,clickhouse,web,s3,kafka,elasticsearch,opensearch]'
	touch $(STAMP)

demo: install
	$(BIN)/flowscope demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check flowscope tests

bench: install
	rm -f .bench-results.jsonl
	$(BIN)/python tests/bench/bench_pipeline.py
	$(BIN)/python tests/bench/bench_ipfix.py
	$(BIN)/python tests/bench/bench_grpc.py
	$(BIN)/python tests/bench/bench_conntrack.py
	$(BIN)/python tests/bench/bench_kubernetes.py
	$(BIN)/python tests/bench/bench_aggregator.py --flows 10000,100000
	$(BIN)/python tests/bench/bench_clickhouse.py
	$(BIN)/python tests/bench/bench_kafka.py
	$(BIN)/python tests/bench/bench_search.py
	$(BIN)/python tests/bench/bench_scaleout.py
	$(BIN)/python tests/bench/bench_dashboards.py
	$(BIN)/python tests/bench/summary.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache flowscope-data flowscope-demo flowscope-up
