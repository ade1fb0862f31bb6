# skewless — every README command is a target here. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

$(STAMP): pyproject.toml constraints.txt $(NATIVE_SRC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q ./native
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv/ and install skewless (+ its native core, built with cargo) with pinned dependencies

services: ## install what the real Kafka broker and Redis server need (jars via Maven, redis-server via apt)
	scripts/services.sh install

demo: install ## run the whole loop on embedded defaults (no Kafka/Redis needed)
	$(BIN)/skewless demo

test: install services ## run every test; integration tests start a real Kafka broker and Redis
	$(BIN)/python -m pytest

lint: install ## ruff + mypy + import contracts (layers: pyproject.toml), rustfmt + clippy for the native core
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy features flows serving skewless bench
	$(BIN)/lint-imports
	cd native && cargo fmt --check && cargo clippy --release -- -D warnings

bench: install services ## the benchmark suite, JSON results
	$(BIN)/skewless bench

clean: ## remove the virtualenv and build outputs
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache native/target

.PHONY: help install services demo test lint bench clean
