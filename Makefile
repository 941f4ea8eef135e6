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

LOCK := $(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.txt

lock: ## Re-lock requirements.txt (hashes) for pyproject.toml, keeping the current pins
	$(LOCK) -c requirements.txt

lock-upgrade: ## Re-lock requirements.txt with the newest versions the constraints allow
	$(LOCK) --upgrade

test: $(STAMP) ## Lint, then the fast tests and doctests (builds the venv first if needed)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP) ## The slow tests (end-to-end runs, notebooks, worker kills); CI runs them too
	$(PY) -m pytest -m slow

LINTED := ntk ntk_repro experiments tests benchmarks

lint: $(STAMP) ## Lint and check formatting with ruff (every Python folder)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

RUN := $(PY) experiments/train.py -m
MLP_WIDTHS := 64,128,256,512,1024,2048

reproduce: $(STAMP) ## The whole CPU-scale reproduction on digits -> results/ (~12 min on 2 cores, venv included)
	rm -rf results/runs
	$(MAKE) --no-print-directory fig-width fig-training fig-spectra fig-regression fig-cost
	$(MAKE) --no-print-directory report

fig-width: $(STAMP) ## (a) eNTK vs pNTK at init across widths: MLP, CNN, ResNet-18
	$(RUN) experiment=width_init logger=wandb model=mlp model.width=$(MLP_WIDTHS) seed=0,1
	$(RUN) experiment=width_init logger=wandb model=cnn model.width=16,32,64,128
	$(RUN) experiment=width_init logger=wandb model=resnet18 model.width=4,8,16

fig-training: $(STAMP) ## (b) the approximation over training, at checkpoints
	$(RUN) experiment=training logger=wandb model=mlp model.width=128,1024

fig-spectra: $(STAMP) ## (c) eigenspectra of eNTK and pNTK x I
	$(RUN) experiment=spectra logger=wandb model=mlp model.width=64,2048

fig-regression: $(STAMP) ## (d) kernel regression, with and without ridge
	$(RUN) experiment=regression logger=wandb model=mlp model.width=64,256,1024

fig-cost: $(STAMP) ## (e) time and memory of eNTK vs pNTK as width and depth grow
	$(RUN) experiment=cost logger=wandb model=mlp model.width=256,1024,4096 model.depth=2,4

report: $(STAMP) ## Gather results/runs into results/summary.json, figures and report.md
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

reproduce-paper: $(STAMP) ## Paper scale on CIFAR-10 via TFDS (GPU; needs data.data_dir)
	$(RUN) experiment=width_init logger=wandb data=cifar10 model=resnet18 \
	    model.width=16,32,64,128 kernel.n_per_class=20 kernel.batch_size=100
	$(RUN) experiment=training logger=wandb data=cifar10 model=resnet18 model.width=16,64 \
	    trainer.epochs=50 trainer.checkpoint_epochs=[0,1,5,10,25,50] kernel.n_per_class=20
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

bench: $(STAMP) ## Benchmark every implementation (JSON, Markdown table, plots in results/bench)
	$(PY) experiments/bench.py

bench-scale: $(STAMP) ## Streamed pNTK N=20k/50k and eNTK N=2k to disk (needs ~12 GB free under /tmp)
	$(PY) -m ntk_repro.bench_scale --out results/bench_scale --work /tmp/ntk_bench_scale

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install lock lock-upgrade test test-slow lint format bench bench-scale clean reproduce report reproduce-paper fig-width fig-training fig-spectra fig-regression fig-cost
