# umcluster: build, run a local cluster, test.
#
#   make cluster        build (release) and start a local 3-node cluster on ports 7001-7003
#   make cluster-stop   stop it
#   make test           every test: unit, Rust integration (redis-rs), Python (redis-py, redis-cli)
#   make bench          benchmarks (callgrind instruction counts, throughput vs plain and haproxy);
#                       not part of `make test`. BENCH_ARGS are passed to bench/bench.py.
#   make bench-migration  slot migration benchmark (10 M keys x 100 B by default; not part of
#                       `make test`). MIGRATION_ARGS are passed to bench/migration.py (--keys N).
#   make bench-native-reshard  the same move by native Redis Cluster and `redis-cli --cluster
#                       reshard` (the baseline). RESHARD_ARGS go to bench/native_reshard.py.
#   make fuzz           every cargo-fuzz target for FUZZ_SECONDS (default 60) each (needs cargo-fuzz)
#   make valgrind       the hardening tests with redis-server under valgrind; reports module leaks
#
# Variables for `make cluster`: PORT (first port, default 7001), REPLICAS (replicas per master,
# default 0), NODES (default 3 * (REPLICAS + 1)), SENTINELS (redis-sentinel processes, default 0;
# Debian package redis-sentinel), DOWN_AFTER (Sentinel down-after-milliseconds, default 5000).

CARGO ?= cargo
PYTHON ?= python3
VENV ?= .venv
PORT ?= 7001
REPLICAS ?= 0
NODES ?= $(shell echo $$((3 * ($(REPLICAS) + 1))))
SENTINELS ?= 0
DOWN_AFTER ?= 5000
FUZZ_SECONDS ?= 60

.PHONY: all build build-debug cluster cluster-stop test test-rust test-python venv node-deps lint fmt clean bench bench-migration bench-native-reshard fuzz valgrind

all: build

build:
	$(CARGO) build --release

build-debug:
	$(CARGO) build

cluster: build
	PORT=$(PORT) NODES=$(NODES) REPLICAS=$(REPLICAS) SENTINELS=$(SENTINELS) DOWN_AFTER=$(DOWN_AFTER) scripts/cluster.sh start

cluster-stop:
	PORT=$(PORT) NODES=$(NODES) scripts/cluster.sh stop

$(VENV)/.installed: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/python/requirements.txt
	touch $@

venv: $(VENV)/.installed

# Node.js cluster clients (ioredis, node-redis) for the client matrix, pinned by package-lock.json.
tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: tests/node/node_modules/.installed

test: test-rust test-python

test-rust: build-debug
	$(CARGO) test -- --test-threads=2

test-python: build-debug venv node-deps
	UMCLUSTER_MODULE=$(CURDIR)/target/debug/libumcluster.so UMCLUSTER_BIN=$(CURDIR)/target/debug/umcluster \
		$(VENV)/bin/python -m pytest -q tests/python

bench: build
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

bench-migration: build
	$(PYTHON) bench/migration.py $(MIGRATION_ARGS)

bench-native-reshard:
	$(PYTHON) bench/native_reshard.py $(RESHARD_ARGS)

valgrind: build-debug venv
	VENV=$(VENV) scripts/valgrind.sh

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Clippy on the release build too: code under cfg(debug_assertions) changes what it sees.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run $(VENV)
