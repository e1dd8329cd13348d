# Two commands do all set-up on a fresh clone:
#   make run    - install everything, then start the gateway on the embedded default config
#   make test   - install everything, start the services the tests need, run the whole suite,
#                 then lint (ruff) and type-check (mypy)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (it lies on disk on the project's machines). A GPU site installs the
# CUDA build of the same version instead, e.g. make run TORCH='torch==2.13.0' CONSTRAINTS=
TORCH ?= torch==2.13.0
CONSTRAINTS ?= requirements/constraints-cpu.txt
STAMP := $(VENV)/.deps-stamp
CONFIG ?= gateway/defaults/gateway.yaml
PYTEST_ARGS ?=

.PHONY: setup system-deps venv helm-lint-env run test lint format services clean

setup: system-deps venv

system-deps:
	@scripts/install-system-deps.sh

venv: $(STAMP)

# Best effort: the Helm library for real `helm lint` of deploy/helm (needs Python >= 3.12).
helm-lint-env:
	@scripts/install-helm-lint.sh

$(STAMP): pyproject.toml $(wildcard requirements/*.txt)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test,bench]'
	@touch $@

var/project.key: | venv
	@mkdir -p var
	$(BIN)/deid-gateway keygen $@

run: setup var/project.key
	$(BIN)/deid-gateway check-config $(CONFIG)
	$(BIN)/deid-gateway serve --config $(CONFIG)

services:
	@scripts/start-services.sh

test: setup helm-lint-env services
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory lint

lint: venv
	$(BIN)/ruff check gateway deid_core dicom_io tests benchmarks tools
	$(BIN)/ruff format --check gateway deid_core dicom_io tests benchmarks tools
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format gateway deid_core dicom_io tests benchmarks tools
	$(BIN)/ruff check --fix gateway deid_core dicom_io tests benchmarks tools

clean:
	rm -rf $(VENV) .venv-helm var test-artifacts .pytest_cache .mypy_cache .ruff_cache
