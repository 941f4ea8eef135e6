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
# The runs of a sweep share compiled kernels through JAX's persistent cache (the seeds of a
# width have the same shapes): kept under results/ between reproductions.
STUDY := reproduce fig-width fig-standard fig-float32 fig-training fig-linearized \
	fig-spectra fig-regression fig-cost reproduce-paper
$(STUDY): export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/results/jax_cache
# Runs that time nothing (quality metrics only) go JOBS at a time through the joblib launcher;
# the cost runs, which time kernels, run one at a time with nothing beside them.
JOBS ?= 2
PAR := $(RUN) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
SEEDS := 0,1,2
MLP_WIDTHS := 2048,1024,256,64
CNN_WIDTHS := 128,64,32,16
RESNET_WIDTHS := 32,8
RESNET_SHARES := 16
# Width sweeps on mnist5k (28x28 real digits): quality metrics only (warm timing is the cost
# presets' job), three seeds per width. Widest first, so the longest jobs start first and the
# two job slots finish together.
WIDTH := experiment=width_init logger=wandb kernel.timing_repeats=0
# The CNN at 28x28: N = M = 50 kernel points, kernels in blocks of 50 points (memory).
CNN := model=cnn kernel.n_per_class=5 kernel.n_test_per_class=5 kernel.batch_size=50
# ResNet-18 in the paper's regime: BatchNorm (frozen in eval mode for kernels), 28x28 inputs,
# stage widths w·[1, 2, 4, 8]; N = M = 50 kernel points (the kernels run on their 100 points
# together) in blocks of 50: half the per-pair recomputation of blocks of 25, and within the
# memory estimate that keeps implementation="auto" on structured derivatives at width 32;
# three seeds at every width. Widths 8-32: at width 64 (the standard ResNet-18) one eNTK of 50 points
# costs ~7.5 TFLOPs (ntk.diagnose), over a minute on 2 cores per seed, out of the 20-minute
# budget; make reproduce-paper has it. Float32 kernels: the eNTK's condition numbers at this
# N are small enough (summary.json: cond_entk) that float64 changes no reported digit. The
# per-layer diagnosis (kernel.layer_shares, a float32 Jacobian) at width RESNET_SHARES, seed 0.
RESNET := model=resnet18 kernel.n_per_class=5 kernel.n_test_per_class=5 kernel.batch_size=50 \
	kernel.dtype=float32
# The paper's timing figure in small: eNTK and pNTK per computation on N = 70 inputs (the
# contraction matters), float32, O growing on a wider readout. ResNet O stops at 20: at
# O = 200 its eNTK is ~10^14 FLOPs at this N, out of the CPU budget (the C7 report says so).
COST_O := experiment=cost_outputs kernel.measure=cost kernel.n_per_class=7

reproduce: $(STAMP) ## The whole CPU-scale reproduction on mnist5k -> results/ (timing: results/reproduce_time.txt)
	rm -rf results/runs
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory fig-width fig-training fig-linearized fig-cost && \
	$(MAKE) --no-print-directory report && \
	echo "make reproduce: $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s of runs and report on $$(nproc) cores (load average $$(cut -d' ' -f1-3 /proc/loadavg) at the end), $$(date -u +%Y-%m-%d)" | tee results/reproduce_time.txt

fig-width: $(STAMP) ## (a) C1-C5 at init across widths: ResNet-18, CNN, MLP (and its float32 kernels)
	$(PAR) $(WIDTH) $(RESNET) seed=$(SEEDS) model.width=$(RESNET_WIDTHS)
	$(PAR) $(WIDTH) $(RESNET) seed=1,2 model.width=$(RESNET_SHARES)
	$(RUN) $(WIDTH) $(RESNET) seed=0 model.width=$(RESNET_SHARES) kernel.layer_shares=true
	$(PAR) $(WIDTH) $(CNN) seed=$(SEEDS) model.width=$(CNN_WIDTHS)
	$(PAR) $(WIDTH) model=mlp seed=$(SEEDS) model.width=$(MLP_WIDTHS) kernel.compare_float32=true

fig-standard: $(STAMP) ## The MLP and CNN width sweeps in standard parameterisation (not in reproduce)
	$(PAR) $(WIDTH) model=mlp seed=$(SEEDS) model.width=$(MLP_WIDTHS) \
	    model.parameterization=standard
	$(PAR) $(WIDTH) $(CNN) seed=$(SEEDS) model.width=$(CNN_WIDTHS) model.parameterization=standard

fig-float32: $(STAMP) ## The CNN width sweep again with float32 kernels beside float64 (not in reproduce)
	$(PAR) $(WIDTH) $(CNN) seed=$(SEEDS) model.width=$(CNN_WIDTHS) kernel.compare_float32=true

fig-training: $(STAMP) ## (b) C6: the approximation over training (the paper's SGD recipe), at checkpoints
	$(PAR) experiment=training logger=wandb model=mlp seed=$(SEEDS) model.width=1024,128 \
	    kernel.timing_repeats=0
	$(PAR) experiment=training logger=wandb $(CNN) seed=$(SEEDS) model.width=64,16 \
	    data.n_train=1000 trainer.epochs=5 trainer.checkpoint_epochs=[0,1,5] \
	    kernel.timing_repeats=0
	$(PAR) experiment=training logger=wandb $(RESNET) seed=$(SEEDS) model.width=16,8 \
	    data.n_train=1000 trainer.epochs=3 trainer.checkpoint_epochs=[0,3] \
	    kernel.timing_repeats=0

fig-linearized: $(STAMP) ## (f) the MSE-trained network against its linearisation (eNTK, pNTK)
	$(PAR) experiment=linearized logger=wandb model=mlp seed=$(SEEDS) model.width=2048,512,128 \
	    kernel.timing_repeats=0

fig-spectra: $(STAMP) ## (c) eigenspectra of eNTK and pNTK x I with more points (N = 300)
	$(PAR) experiment=spectra logger=wandb model=mlp model.width=64,2048

fig-regression: $(STAMP) ## (d) kernel regression with more points (N = 200); every run has all ridges
	$(PAR) experiment=regression logger=wandb model=mlp model.width=64,256,1024

fig-cost: $(STAMP) ## (e) C7: time and memory of eNTK vs pNTK as width and O grow (N = 70 for the O sweeps)
	$(RUN) experiment=cost logger=wandb model=mlp model.width=256,1024,4096
	$(RUN) $(COST_O) logger=wandb model=mlp model.width=512 model.num_outputs=10,20,50,100,200
	$(RUN) $(COST_O) logger=wandb model=cnn model.width=32 data.image_size=16 \
	    model.num_outputs=10,20,30,45,60
	$(RUN) $(COST_O) logger=wandb model=resnet18 model.width=16 data.image_size=16 \
	    model.num_outputs=5,10,15,20

report: $(STAMP) ## Gather results/runs into results/summary.json (claims C1-C7), figures and report.md
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

readme-results: $(STAMP) ## Regenerate the README's results section from results/summary.json
	$(PY) -c "from ntk_repro.report.build import update_readme; update_readme('results', 'README.md')"
	mkdir -p docs && cp results/fig_frobenius_width.png docs/fig_frobenius_width.png

reproduce-paper: $(STAMP) ## Paper scale on CIFAR-10 via TFDS (GPU; needs data.data_dir)
	$(RUN) experiment=width_init logger=wandb data=cifar10 model=resnet18 \
	    model.width=16,32,64,128 kernel.n_per_class=20 kernel.batch_size=100 seed=0,1,2
	$(RUN) experiment=training logger=wandb data=cifar10 model=resnet18 model.width=16,64 \
	    trainer.epochs=200 trainer.checkpoint_epochs=[0,1,5,10,25,50,100,200] \
	    kernel.n_per_class=20 seed=0,1,2
	$(RUN) experiment=cost_outputs kernel.measure=cost logger=wandb data=cifar10 \
	    model=resnet18 model.depth=18,34 model.width=64 model.num_outputs=10,100,200
	$(PY) experiments/report.py runs_dir=results/runs out_dir=results

bench: $(STAMP) ## Benchmark every implementation (JSON, Markdown table, plots in results/bench)
	$(PY) -m benchmarks.suite
	$(PY) -m benchmarks.approximation results/bench --case small
	$(PY) -m benchmarks.conv_nets results/bench

.PHONY: bench-approx-large
bench-approx-large: $(STAMP) ## approximation_report at N=2,000 (CNNs of width 16 and 32, mnist5k, block-wise, every kind, all phases)
	$(PY) -m benchmarks.approximation results/bench --case large --n 2000
	$(PY) -m benchmarks.approximation results/bench --case large --n 2000 --width 32

bench-scale: $(STAMP) ## Streamed pNTK N=20k/50k and eNTK N=2k to disk (needs ~12 GB free under /tmp)
	$(PY) -m benchmarks.scale --out results/bench_scale --work /tmp/ntk_bench_scale

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install lock lock-upgrade test test-slow lint format bench bench-scale clean reproduce report readme-results reproduce-paper fig-width fig-float32 fig-training fig-linearized fig-spectra fig-regression fig-cost

.PHONY: active-learning
active-learning: export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/results/jax_cache
active-learning: $(STAMP) ## Look-ahead active learning on mnist5k (pNTK, eNTK, random, entropy, margin; C8) -> results/active_learning (not in reproduce)
	$(PY) experiments/active_learning.py

.PHONY: bench-lookahead
bench-lookahead: $(STAMP) ## ntk.lookahead: 2,000 candidates, 500 labelled, 2,000-point pool subset, study CNN, pNTK and eNTK (time, peak RSS, FLOPs) -> results/bench
	$(PY) -m benchmarks.lookahead results/bench
