"""Pool-based active learning rounds: a network trained on an initial random labelled set,
then per round a query from a random candidate subset, labels revealed, and a warm-started
retrain; every strategy of a seed starts from the same trained network and labelled set.

The training is the study's: the model registry, the loop's jitted ``train_step`` /
``eval_step`` (:mod:`ntk_repro.train.loop`), its optax optimisers and Orbax checkpoints. A
retrain is ``steps`` full-batch steps (the labelled set is smaller than a batch) from the
current weights with a fresh optimiser state: deterministic, so the look-ahead's C8 check
compares retrains that differ by one point only. :func:`train` itself is not used: it trains
a fixed dataset from initialisation, and a round needs a changing labelled subset from the
last weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk_repro.active_learning.strategies import KERNELS, STRATEGIES, Query
from ntk_repro.analysis.calls import cached_kernel_fn
from ntk_repro.config import group_defaults
from ntk_repro.data import Dataset, load_dataset, reshape_for
from ntk_repro.models import MODELS, build_model, kernel_model, variables
from ntk_repro.train import checkpoint as ckpt
from ntk_repro.train.loop import (
    TrainState,
    build_optimizer,
    create_state,
    evaluate,
    make_eval_step,
    make_train_step,
)

LOSS = "mse"  # the look-ahead linearises a network trained on the squared loss


@dataclass
class Setup:
    """One model on the data: the jitted steps, the optimiser and the kernel functions."""

    name: str
    model: Any
    ds: Dataset
    tx: Any
    train_step: Any
    eval_step: Any
    cfg: dict

    def apply(self, state: TrainState):
        """``(apply_fn, params, apply_kwargs)`` of the network in eval mode."""
        return kernel_model(self.model, variables(state.params, state.batch_stats))

    def kernels(self, apply_fn) -> dict:
        """The look-ahead's kernel functions of ``apply_fn``, built once per model (in
        ``kernel_batch_size`` blocks: one compile for every size of the labelled set)."""
        bs = int(self.cfg["kernel_batch_size"])
        return {kind: cached_kernel_fn(apply_fn, kind, "auto", bs) for kind in KERNELS}

    def outputs(self, state: TrainState, x: np.ndarray) -> np.ndarray:
        apply_fn, params, kw = self.apply(state)
        bs = int(self.cfg["eval_batch_size"])
        return np.concatenate(
            [
                np.asarray(apply_fn(params, x[s : s + bs], **kw), np.float64)
                for s in range(0, len(x), bs)
            ]
        )


def build_setup(cfg: dict, model_cfg: dict) -> Setup:
    """The model ``model_cfg`` (``name`` and overrides of ``conf/model/<name>.yaml``) on the
    configured data."""
    data_cfg = dict(cfg["data"])
    name = model_cfg["name"]
    ds = reshape_for(
        load_dataset(data_cfg.pop("name"), **data_cfg), MODELS[name].input_kind, model=name
    )
    fields = {**group_defaults("model", name), **model_cfg}
    fields.pop("name")
    model = build_model(name, num_classes=ds.num_classes, **fields)
    tx = build_optimizer(cfg["optimizer"], steps_per_epoch=1, epochs=1)
    return Setup(
        name, model, ds, tx, make_train_step(model, tx, LOSS), make_eval_step(model, LOSS), cfg
    )


def retrain(
    setup: Setup, state: TrainState, x: np.ndarray, y: np.ndarray, steps: int
) -> tuple[TrainState, dict]:
    """``steps`` full-batch steps on ``(x, y)`` from ``state``'s weights with a fresh
    optimiser state; returns the state and the training loss (train mode) at the first step
    (the starting weights) and at the last step (``{"start", "end"}``; NaN for 0 steps)."""
    state = TrainState(state.params, state.batch_stats, setup.tx.init(state.params))
    losses = {"start": float("nan"), "end": float("nan")}
    for i in range(int(steps)):
        state, m = setup.train_step(state, x, y)
        if i == 0:
            losses["start"] = float(m["loss"])
    if steps:
        losses["end"] = float(m["loss"])
    return state, losses


def test_accuracy(setup: Setup, state: TrainState) -> float:
    ds = setup.ds
    return evaluate(
        setup.eval_step, state, ds.x_test, ds.y_test, int(setup.cfg["eval_batch_size"])
    )["acc"]


def draw_round(
    n_train: int, labelled: np.ndarray, cfg: dict, seed: int, rnd: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, pool subset)``: disjoint random subsets of the unlabelled points, drawn
    from ``(seed, round)`` alone (the same for every strategy up to its labelled points)."""
    perm = np.random.default_rng([seed, rnd, 1]).permutation(n_train)
    free = perm[~np.isin(perm, labelled)]
    c, u = int(cfg["n_candidates"]), int(cfg["n_pool_subset"])
    if c + u > len(free):
        raise ValueError(
            f"n_candidates + n_pool_subset: {c} + {u} exceed the {len(free)} unlabelled points"
        )
    return free[:c], free[c : c + u]


def query(
    setup: Setup, state: TrainState, labelled, candidates, pool, strategy: str, rng
) -> np.ndarray:
    """The indices (into the training set) that ``strategy`` picks."""
    apply_fn, params, kw = setup.apply(state)
    ds, cfg = setup.ds, setup.cfg
    q = Query(
        outputs=lambda x: setup.outputs(state, x),
        kernels=setup.kernels(apply_fn),
        params=params,
        state=kw,
        x_labelled=ds.x_train[labelled],
        y_labelled=ds.y_train[labelled],
        x_candidates=ds.x_train[candidates],
        x_pool=ds.x_train[pool],
        batch=int(cfg["batch"]),
        rng=rng,
        ridge=float(cfg["ridge"]),
        chunk_size=int(cfg["kernel_batch_size"]),
    )
    return candidates[np.asarray(STRATEGIES[strategy](q))]


def save(out: Path, rnd: int, state: TrainState, labelled: np.ndarray) -> None:
    """An Orbax checkpoint of ``state`` as step ``rnd`` under ``out`` (the loop's layout) and
    the labelled indices beside it; a rerun of the study replaces the step it saved before."""
    manager = ckpt.checkpoint_manager(out)
    try:
        if rnd in manager.all_steps():
            manager.delete(rnd)
        meta = {"step": rnd, "num_classes": 0, "labelled": [int(i) for i in labelled]}
        ckpt.save_checkpoint(
            manager, rnd, params=state.params, batch_stats=state.batch_stats,
            opt_state=state.opt_state, key=jax.random.key(0), meta=meta,
        )  # fmt: skip
    finally:
        manager.close()


def initial_state(setup: Setup, seed: int) -> tuple[TrainState, np.ndarray, dict]:
    """The network trained from initialisation on ``n_initial`` random labelled points."""
    cfg = setup.cfg
    key = jax.random.key(int(seed))
    state = create_state(setup.model, key, setup.ds.input_shape, setup.tx)
    labelled = np.random.default_rng([seed, 0, 0]).choice(
        len(setup.ds.y_train), int(cfg["n_initial"]), replace=False
    )
    t0 = time.perf_counter()
    state, loss = retrain(
        setup, state, setup.ds.x_train[labelled], setup.ds.y_train[labelled], cfg["initial_steps"]
    )
    record = {
        "round": 0,
        "n_labels": len(labelled),
        "test_acc": test_accuracy(setup, state),
        "train_loss": loss["end"],
        "train_loss_start": loss["start"],
        "train_seconds": time.perf_counter() - t0,
    }
    return state, labelled, record


def run_strategy(
    setup: Setup, state: TrainState, labelled: np.ndarray, seed: int, strategy: str, out: Path
) -> list[dict]:
    """``rounds`` rounds of ``strategy`` from the trained initial ``state``: one record per
    round (labels, test accuracy, selection seconds, first and last training loss)."""
    cfg, ds = setup.cfg, setup.ds
    records = []
    for rnd in range(1, int(cfg["rounds"]) + 1):
        candidates, pool = draw_round(len(ds.y_train), labelled, cfg, seed, rnd)
        rng = np.random.default_rng([seed, rnd, 2])
        t0 = time.perf_counter()
        picked = query(setup, state, labelled, candidates, pool, strategy, rng)
        seconds = time.perf_counter() - t0
        labelled = np.concatenate([labelled, picked])
        state, loss = retrain(
            setup, state, ds.x_train[labelled], ds.y_train[labelled], cfg["round_steps"]
        )
        records.append(
            {
                "round": rnd,
                "n_labels": len(labelled),
                "test_acc": test_accuracy(setup, state),
                "train_loss": loss["end"],
                "train_loss_start": loss["start"],
                "select_seconds": seconds,
            }
        )
    if cfg.get("save_checkpoints", True):
        save(out / strategy, int(cfg["rounds"]), state, labelled)
    return records
