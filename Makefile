# skewless — every README command is a target here. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

$(STAMP): pyproject.toml constraints.txt $(NATIVE_SRC)
	@scripts/install.sh $(PYTHON) $(VENV)
	@touch $(STAMP)

# what `make demo` needs; the development tools (pytest, ruff, mypy, scikit-learn...) come
# with the first `make test` or `make lint`, so the first demo downloads a quarter less
$(DEV_STAMP): $(STAMP) pyproject.toml constraints.txt
	@echo "==> installing the development tools (pytest, hypothesis, ruff, mypy, scikit-learn, import-linter)"
	$(BIN)/python -m pip install --no-compile -c constraints.txt -e '.[dev]'
	@scripts/bytecode.sh $(BIN)/python
	@touch $(DEV_STAMP)

install: $(STAMP) ## create .venv/ and install skewless (+ its native core, built with cargo) with pinned dependencies

install-dev: $(DEV_STAMP) ## install + the development tools (test, lint)

services: ## install what the real Kafka broker and Redis server need (jars via Maven, redis-server via apt)
	scripts/services.sh install

demo: install ## run the whole loop on embedded defaults (no Kafka/Redis needed), in out/demo
	$(BIN)/skewless --data-dir out/demo demo

test: install-dev services ## run every test; integration tests start a real Kafka broker and Redis
	$(BIN)/python -m pytest

lint: install-dev ## ruff + mypy + import contracts (layers: pyproject.toml), rustfmt + clippy for the native core
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy features flows serving skewless bench
	$(BIN)/lint-imports
	@scripts/devnull.sh
	cd native && cargo fmt --check && cargo clippy --release -- -D warnings

bench: install services ## the benchmark suite, JSON results
	$(BIN)/skewless bench

clean: ## remove the virtualenv and build outputs
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache native/target

.PHONY: help install install-dev services demo test lint bench clean
