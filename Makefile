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

test: $(STAMP) ## Lint, then the fast tests and doctests on every core (builds the venv first if needed)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -m "not slow" -n auto

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
# Runs that time nothing (quality metrics only) go JOBS at a time through the joblib launcher;
# the cost runs, which time kernels, run one at a time with nothing beside them.
JOBS ?= 2
PAR := $(RUN) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
MLP_WIDTHS := 2048,1024,256,64
CNN_WIDTHS := 128,64,32,16
RESNET_WIDTHS := 16,8
RESNET_WIDEST := 32
# Width sweeps: quality metrics only (warm timing is the cost presets' job). Widest first, so
# the longest jobs start first and the two job slots finish together.
WIDTH := experiment=width_init logger=wandb kernel.timing_repeats=0 seed=0,1
# ResNet-18 in the paper's regime on the CPU: BatchNorm (frozen in eval mode for kernels),
# digits upsampled to 16x16, readout width 8·width; N = 20 kernel points (eNTK 200 x 200).
RESNET := model=resnet18 data.image_size=16 kernel.n_per_class=2 kernel.n_test_per_class=2
# The per-layer diagnosis (kernel.layer_shares) is reported at the widest width, so only that
# width computes it. Float32 kernels beside float64 (kernel.compare_float32): MLP in
# `reproduce`, CNN (condition numbers up to 3e5) in `fig-float32`.
# The paper's timing figure in small: per-computation cost on N = 10 inputs, float32.
COST_O := experiment=cost_outputs kernel.measure=cost model.num_outputs=10,100,200

reproduce: $(STAMP) ## The whole CPU-scale reproduction on digits -> results/ (timing: results/reproduce_time.txt)
	rm -rf results/runs
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory fig-width fig-training fig-linearized fig-cost && \
	$(MAKE) --no-print-directory report && \
	echo "make reproduce: $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s of runs and report on $$(nproc) cores (load average $$(cut -d' ' -f1-3 /proc/loadavg) at the end), $$(date -u +%Y-%m-%d)" | tee results/reproduce_time.txt

fig-width: $(STAMP) ## (a) C1-C5 at init across widths: MLP and CNN in both parameterisations, ResNet-18
	$(PAR) $(WIDTH) model=mlp model.width=$(MLP_WIDTHS) kernel.compare_float32=true
	$(PAR) $(WIDTH) model=mlp model.width=$(MLP_WIDTHS) model.parameterization=standard
	$(PAR) $(WIDTH) model=cnn model.width=$(CNN_WIDTHS)
	$(PAR) $(WIDTH) model=cnn model.width=$(CNN_WIDTHS) model.parameterization=standard
	$(PAR) $(WIDTH) $(RESNET) model.width=$(RESNET_WIDEST) kernel.layer_shares=true
	$(PAR) $(WIDTH) $(RESNET) model.width=$(RESNET_WIDTHS)

fig-float32: $(STAMP) ## The CNN width sweep again with float32 kernels beside float64 (not in reproduce)
	$(PAR) $(WIDTH) model=cnn model.width=$(CNN_WIDTHS) kernel.compare_float32=true

fig-training: $(STAMP) ## (b) C6: the approximation over training, at checkpoints
	$(PAR) experiment=training logger=wandb model=mlp model.width=1024,128 seed=0,1 \
	    kernel.timing_repeats=0
	$(PAR) experiment=training logger=wandb model=cnn model.width=64,16 seed=0,1 \
	    trainer.epochs=5 trainer.checkpoint_epochs=[0,1,5] kernel.timing_repeats=0
	$(PAR) experiment=training logger=wandb $(RESNET) model.width=16,8 seed=0,1 \
	    trainer.epochs=3 trainer.checkpoint_epochs=[0,1,3] kernel.timing_repeats=0

fig-linearized: $(STAMP) ## (f) the MSE-trained network against its linearisation (eNTK, pNTK)
	$(PAR) experiment=linearized logger=wandb model=mlp model.width=2048,512,128 seed=0,1 \
	    kernel.timing_repeats=0

fig-spectra: $(STAMP) ## (c) eigenspectra of eNTK and pNTK x I with more points (N = 300)
	$(PAR) experiment=spectra logger=wandb model=mlp model.width=64,2048

fig-regression: $(STAMP) ## (d) kernel regression with more points (N = 200); every run has all ridges
	$(PAR) experiment=regression logger=wandb model=mlp model.width=64,256,1024

fig-cost: $(STAMP) ## (e) C7: time and memory of eNTK vs pNTK as width, depth and O grow
	$(RUN) experiment=cost logger=wandb model=mlp model.width=256,1024,4096 model.depth=2,4
	$(RUN) $(COST_O) logger=wandb model=mlp model.width=512
	$(RUN) $(COST_O) logger=wandb model=cnn model.width=32 data.image_size=16
	$(RUN) $(COST_O) logger=wandb model=resnet18 model.depth=18,34 model.width=16 \
	    data.image_size=16

report: $(STAMP) ## Gather results/runs into results/summary.json (claims C1-C7), figures and report.md
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

readme-results: $(STAMP) ## Regenerate the README's results section from results/summary.json
	$(PY) -c "from ntk_repro.report import update_readme; update_readme('results', 'README.md')"
	mkdir -p docs && cp results/fig_frobenius_width.png docs/fig_frobenius_width.png

reproduce-paper: $(STAMP) ## Paper scale on CIFAR-10 via TFDS (GPU; needs data.data_dir)
	$(RUN) experiment=width_init logger=wandb data=cifar10 model=resnet18 \
	    model.width=16,32,64,128 kernel.n_per_class=20 kernel.batch_size=100
	$(RUN) experiment=training logger=wandb data=cifar10 model=resnet18 model.width=16,64 \
	    trainer.epochs=50 trainer.checkpoint_epochs=[0,1,5,10,25,50] kernel.n_per_class=20
	$(RUN) experiment=cost_outputs kernel.measure=cost logger=wandb data=cifar10 \
	    model=resnet18 model.depth=18,34 model.width=64 model.num_outputs=10,100,200
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

bench: $(STAMP) ## Benchmark every implementation (JSON, Markdown table, plots in results/bench)
	$(PY) experiments/bench.py

bench-scale: $(STAMP) ## Streamed pNTK N=20k/50k and eNTK N=2k to disk (needs ~12 GB free under /tmp)
	$(PY) -m ntk_repro.bench_scale --out results/bench_scale --work /tmp/ntk_bench_scale

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install lock lock-upgrade test test-slow lint format bench bench-scale clean reproduce report readme-results reproduce-paper fig-width fig-float32 fig-training fig-linearized fig-spectra fig-regression fig-cost
