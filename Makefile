# ntk: make help lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv from requirements.txt (rebuilt when it changes) and install ntk editable

test: $(STAMP) ## Run the test suite (builds the venv first if needed)
	$(PY) -m pytest

lint: $(STAMP) ## Lint and check formatting with ruff
	$(VENV)/bin/ruff check ntk experiments tests
	$(VENV)/bin/ruff format --check ntk experiments tests

format: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff check --fix ntk experiments tests
	$(VENV)/bin/ruff format ntk experiments tests

bench: $(STAMP) ## Benchmark every implementation (JSON, Markdown table, plots in results/bench)
	$(PY) experiments/bench.py

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install test lint format bench clean
