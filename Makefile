# umcluster: build, run a local cluster, test.
#
#   make cluster        build (release) and start a local 3-node cluster on ports 7001-7003
#   make cluster-stop   stop it
#   make test           every test: unit, Rust integration (redis-rs), Python (redis-py, redis-cli)
#   make fuzz           every cargo-fuzz target for FUZZ_SECONDS (default 60) each (needs cargo-fuzz)
#   make valgrind       the hardening tests with redis-server under valgrind; reports module leaks
#
# Variables: PORT (first port, default 7001), NODES (default 3) for `make cluster`.

CARGO ?= cargo
PYTHON ?= python3
VENV ?= .venv
PORT ?= 7001
NODES ?= 3
FUZZ_SECONDS ?= 60

.PHONY: all build build-debug cluster cluster-stop test test-rust test-python venv lint fmt clean fuzz valgrind

all: build

build:
	$(CARGO) build --release

build-debug:
	$(CARGO) build

cluster: build
	PORT=$(PORT) NODES=$(NODES) scripts/cluster.sh start

cluster-stop:
	PORT=$(PORT) NODES=$(NODES) scripts/cluster.sh stop

$(VENV)/.installed: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/python/requirements.txt
	touch $@

venv: $(VENV)/.installed

test: test-rust test-python

test-rust: build-debug
	$(CARGO) test -- --test-threads=2

test-python: build-debug venv
	UMCLUSTER_MODULE=$(CURDIR)/target/debug/libumcluster.so UMCLUSTER_BIN=$(CURDIR)/target/debug/umcluster \
		$(VENV)/bin/python -m pytest -q tests/python

valgrind: build-debug venv
	VENV=$(VENV) scripts/valgrind.sh

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run $(VENV)
