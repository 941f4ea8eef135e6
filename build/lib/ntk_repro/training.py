"""The one training loop: optax optimisers, jitted train/eval steps, Orbax checkpoints, resume.

:func:`train` takes a config (a Hydra ``DictConfig`` or a nested dict; see ``conf/train.yaml``)
and a run directory ``OUT`` and writes ``OUT/config.yaml``, ``OUT/metrics.jsonl`` and
``OUT/checkpoints/<epoch>`` (layout in :mod:`ntk_repro.checkpoint`).

* Checkpoints are saved at epoch 0 (initialisation), at ``trainer.checkpoint_epochs``, at
  multiples of ``trainer.checkpoint_every`` and at the last epoch. Each holds params,
  batch_stats, optimiser state, the PRNG key and (epoch, step).
* The data order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed,
  e])``, so a resumed run replays exactly the batches an uninterrupted one would.
* Re-running into the same ``OUT`` resumes from the last finalised checkpoint and rewrites
  ``metrics.jsonl`` to the records up to it; on CPU the final params and metrics.jsonl are
  bit-identical to an uninterrupted run. A stored config that differs in any key except
  :data:`ntk_repro.checkpoint.RESUME_IGNORED_KEYS` refuses to resume and names the keys.
* Callbacks ``fn(event: CheckpointEvent)`` run after each checkpoint is finalised on disk
  (see :class:`CheckpointEvent`); they are the hook for kernels at checkpoints.

Example::

    cfg = {"seed": 0, "model": {"name": "mlp", "width": 128}, "data": {"name": "digits"},
           "optimizer": {"name": "sgd", "learning_rate": 0.5},
           "trainer": {"epochs": 5, "checkpoint_epochs": [0, 1, 2]}}
    result = train(cfg, "results/train/demo")
    result.metrics[-1]["test_acc"]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ntk import atomic
from ntk.checks import lookup
from ntk_repro import checkpoint as ckpt
from ntk_repro.config import group_defaults
from ntk_repro.data import LOADERS, Dataset, load_dataset, reshape_for
from ntk_repro.models import MODELS, build_model, kernel_apply_fn
from ntk_repro.optim import LOSSES, OPTIMIZERS, SCHEDULES, build_optimizer
from ntk_repro.steps import (
    TrainState,
    create_state,
    epoch_batches,
    evaluate,
    make_eval_step,
    make_train_step,
    model_variables,
)

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "CheckpointEvent",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "checkpoint_epochs",
    "create_state",
    "epoch_batches",
    "evaluate",
    "make_eval_step",
    "make_train_step",
    "resolve_config",
    "train",
    "validate_config",
]

log = logging.getLogger(__name__)


def checkpoint_epochs(trainer_cfg: Mapping[str, Any]) -> list[int]:
    """Sorted epochs to checkpoint: 0, ``checkpoint_epochs`` (those ≤ ``epochs``), multiples
    of ``checkpoint_every`` and ``epochs``."""
    epochs = int(trainer_cfg["epochs"])
    listed = [int(e) for e in trainer_cfg.get("checkpoint_epochs") or []]
    if any(e < 0 for e in listed):
        raise ValueError(f"trainer.checkpoint_epochs: must be >= 0, got {listed}")
    chosen = {0, epochs, *(e for e in listed if e <= epochs)}
    every = trainer_cfg.get("checkpoint_every")
    if every is not None:
        if int(every) <= 0:
            raise ValueError(f"trainer.checkpoint_every: must be positive, got {every!r}")
        chosen.update(range(0, epochs + 1, int(every)))
    return sorted(chosen)


# --- config ------------------------------------------------------------------------------


def resolve_config(cfg: DictConfig | Mapping) -> dict:
    """A plain nested dict of the resolved config, with the keys ``trainer`` leaves out taken
    from ``conf/trainer/default.yaml`` (the one place the defaults live)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}
    cfg["trainer"] = {**group_defaults("trainer"), **cfg.get("trainer", {})}
    cfg.setdefault("seed", 0)
    cfg.setdefault("logger", {"name": "none"})
    return cfg


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Checks names and values of a resolved config before any work (raises ValueError)."""
    for section in ("model", "data", "optimizer"):
        if not isinstance(cfg.get(section), Mapping) or "name" not in cfg[section]:
            raise ValueError(f"{section}: the config needs a '{section}' group with a 'name'")
    model_cfg = dict(cfg["model"])
    build_model(model_cfg.pop("name"), num_classes=2, **model_cfg)  # checks name and values
    lookup("dataset", cfg["data"]["name"], LOADERS)
    build_optimizer(cfg["optimizer"], steps_per_epoch=1, epochs=1)
    trainer = cfg["trainer"]
    lookup("trainer.loss", trainer["loss"], LOSSES)
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        value = trainer[key]
        low = 0 if key == "epochs" else 1  # epochs=0: the init checkpoint only
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"trainer.{key}: must be an int >= {low}, got {value!r}")
    if trainer["train_eval_size"] is not None and int(trainer["train_eval_size"]) <= 0:
        raise ValueError(
            f"trainer.train_eval_size: must be positive or null, got {trainer['train_eval_size']!r}"
        )
    if trainer["progress"] not in (True, False, "auto"):
        raise ValueError(
            f"trainer.progress: must be true, false or 'auto', got {trainer['progress']!r}"
        )
    checkpoint_epochs(trainer)


def _check_resume(out: Path, cfg: Mapping) -> bool:
    """True when ``out`` holds checkpoints to resume from; refuses an incompatible config."""
    if not ckpt.checkpoint_epochs_saved(out):
        return False
    saved = ckpt.load_config(out)
    if saved is None:
        raise ValueError(
            f"out_dir: {str(out)!r} has checkpoints but no {ckpt.CONFIG_FILE}; cannot check "
            "that they come from this config. Use another hydra.run.dir."
        )
    diffs = ckpt.config_diff(saved, cfg)
    if diffs:
        raise ValueError(
            f"out_dir: refusing to resume in {str(out)!r}: its checkpoints come from an "
            f"incompatible config; differing keys: {'; '.join(diffs)}. Use another "
            "hydra.run.dir, or restore the old values."
        )
    return True


# --- the loop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointEvent:
    """What a checkpoint callback receives, after the checkpoint is finalised on disk.

    Attributes:
      epoch, step: the epoch (0 = initialisation) and the number of optimiser steps taken.
      out_dir: the run directory (callbacks may write under it, e.g. ``OUT/kernels/``).
      checkpoint_dir: the saved checkpoint, ``OUT/checkpoints/<epoch>``.
      model: the Linen module.
      apply_fn: ``apply_fn(params, x_NX) -> [N, O]`` in eval mode, batch_stats held fixed.
      params: the trainable parameters (the kernel's θ).
      state: the full :class:`TrainState` (params, batch_stats, opt_state).
      metrics: the record written to metrics.jsonl for this epoch.
      dataset: the training data, laid out for the model.
      cfg: the resolved config.
    """

    epoch: int
    step: int
    out_dir: Path
    checkpoint_dir: Path
    model: nn.Module
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    params: Any
    state: TrainState
    metrics: dict
    dataset: Dataset
    cfg: dict


Callback = Callable[[CheckpointEvent], None]


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`: final state, all metric records, model and data."""

    state: TrainState
    metrics: list[dict]
    model: nn.Module
    dataset: Dataset
    out_dir: Path
    epoch: int
    step: int
    resumed_from: int | None


def _load_data(cfg: Mapping) -> Dataset:
    data_cfg = dict(cfg["data"])
    ds = load_dataset(data_cfg.pop("name"), **data_cfg)
    return reshape_for(ds, MODELS[cfg["model"]["name"]].input_kind, model=cfg["model"]["name"])


@dataclass
class _Run:
    """One run's fixed pieces (data, model, steps, schedule) and its moving state."""

    cfg: dict
    out: Path
    ds: Dataset
    model: nn.Module
    train_step: Callable
    eval_step: Callable
    manager: Any
    state: TrainState
    key: jax.Array
    callbacks: Sequence[Callback]
    on_epoch: Callable[[dict], None] | None
    step: int = 0
    records: list = field(default_factory=list)

    @property
    def trainer(self) -> dict:
        return self.cfg["trainer"]

    @property
    def batch_size(self) -> int:
        return _batch_size(self.ds, self.trainer)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.ds.y_train) // self.batch_size


def _batch_size(ds: Dataset, trainer: Mapping) -> int:
    return min(int(trainer["batch_size"]), len(ds.y_train))


def _setup(cfg: dict, out: Path, callbacks, on_epoch) -> _Run:
    """Data, model, optimiser, jitted steps and the initial state of a run."""
    ds = _load_data(cfg)
    trainer = cfg["trainer"]
    steps_per_epoch = len(ds.y_train) // _batch_size(ds, trainer)
    model_cfg = dict(cfg["model"])
    model = build_model(model_cfg.pop("name"), num_classes=ds.num_classes, **model_cfg)
    epochs = max(int(trainer["epochs"]), 1)
    tx = build_optimizer(cfg["optimizer"], steps_per_epoch=steps_per_epoch, epochs=epochs)
    init_key, key = jax.random.split(jax.random.key(int(cfg["seed"])))
    return _Run(
        cfg=cfg,
        out=out,
        ds=ds,
        model=model,
        train_step=make_train_step(model, tx, trainer["loss"]),
        eval_step=make_eval_step(model, trainer["loss"]),
        manager=ckpt.checkpoint_manager(out),
        state=create_state(model, init_key, ds.input_shape, tx),
        key=key,
        callbacks=callbacks,
        on_epoch=on_epoch,
    )


def _checkpoint_items(run: _Run) -> dict:
    """What a checkpoint holds besides its meta (and, on restore, the structure to fill)."""
    state = run.state
    return dict(
        params=state.params, batch_stats=state.batch_stats, opt_state=state.opt_state, key=run.key
    )


def _resume(run: _Run) -> int:
    """Restores the last checkpoint into ``run`` and keeps the metric records up to it;
    returns its epoch."""
    epoch = ckpt.checkpoint_epochs_saved(run.out)[-1]
    restored = ckpt.restore_checkpoint(run.manager, epoch, **_checkpoint_items(run))
    run.state = TrainState(restored["params"], restored["batch_stats"], restored["opt_state"])
    run.key = restored["key"]
    run.step = int(restored["meta"]["step"])
    run.records = [r for r in ckpt.read_metrics(run.out) if r["epoch"] <= epoch]
    log.info("resuming %s from epoch %d (step %d)", run.out, epoch, run.step)
    return epoch


def _evaluate_epoch(run: _Run, epoch: int, is_checkpoint: bool) -> dict:
    """Evaluates train (first ``train_eval_size`` examples) and test sets, appends the record
    to ``metrics.jsonl`` and hands it to ``on_epoch``."""
    ds, trainer = run.ds, run.trainer
    n_eval = len(ds.y_train) if trainer["train_eval_size"] is None else trainer["train_eval_size"]
    n_eval, bs = int(n_eval), trainer["eval_batch_size"]
    train_m = evaluate(run.eval_step, run.state, ds.x_train[:n_eval], ds.y_train[:n_eval], bs)
    test_m = evaluate(run.eval_step, run.state, ds.x_test, ds.y_test, bs)
    record = {
        "epoch": epoch,
        "step": run.step,
        "train_loss": train_m["loss"],
        "train_acc": train_m["acc"],
        "test_loss": test_m["loss"],
        "test_acc": test_m["acc"],
        "checkpoint": is_checkpoint,
    }
    run.records.append(record)
    ckpt.write_metrics(run.out, run.records)
    if run.on_epoch is not None:
        run.on_epoch(dict(record))
    keys = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")
    log.info(
        "epoch %d step %d: train_loss %.4f train_acc %.4f test_loss %.4f test_acc %.4f",
        *(record[k] for k in keys),
    )
    return record


def _save_and_call_back(run: _Run, epoch: int, record: dict) -> None:
    """Saves the checkpoint of ``epoch``, then runs the callbacks on it; scalars they return
    join the epoch's record."""
    state = run.state
    meta = {"step": run.step, "num_classes": run.ds.num_classes}
    meta["input_shape"] = list(run.ds.input_shape)
    ckpt.save_checkpoint(run.manager, epoch, **_checkpoint_items(run), meta=meta)
    if not run.callbacks:
        return
    apply_fn, params = kernel_apply_fn(run.model, model_variables(state, state.params))
    event = CheckpointEvent(
        epoch=epoch,
        step=run.step,
        out_dir=run.out,
        checkpoint_dir=run.out / ckpt.CHECKPOINT_DIR / str(epoch),
        model=run.model,
        apply_fn=apply_fn,
        params=params,
        state=state,
        metrics=record,
        dataset=run.ds,
        cfg=run.cfg,
    )
    extra = {}
    for callback in run.callbacks:
        extra.update(callback(event) or {})
    if extra:
        record.update(extra)
        ckpt.write_metrics(run.out, run.records)


def _finish_epoch(run: _Run, epoch: int, save_epochs: set[int]) -> None:
    """Evaluation (every ``eval_every`` epochs and at checkpoints), then the checkpoint.

    Metrics are written before the checkpoint: a crash in between resumes from the previous
    checkpoint, which truncates this record away."""
    is_checkpoint = epoch in save_epochs
    if not (is_checkpoint or epoch % int(run.trainer["eval_every"]) == 0):
        return
    record = _evaluate_epoch(run, epoch, is_checkpoint)
    if is_checkpoint:
        _save_and_call_back(run, epoch, record)


def _train_epoch(run: _Run, epoch: int, bar) -> None:
    """One pass over the epoch's batches (its permutation of ``(seed, epoch)``)."""
    ds, metrics = run.ds, []
    n, seed = len(ds.y_train), int(run.cfg["seed"])
    for idx_B in epoch_batches(n, run.batch_size, seed, epoch):
        run.state, m = run.train_step(run.state, ds.x_train[idx_B], ds.y_train[idx_B])
        metrics.append(m)
        run.step += 1
        bar.update(1)
    if metrics:
        loss = float(jnp.mean(jnp.stack([m["loss"] for m in metrics])))
        acc = float(jnp.mean(jnp.stack([m["acc"] for m in metrics])))
        bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", acc=f"{acc:.3f}")


def _progress_bar(run: _Run, epochs: int):
    progress = run.trainer["progress"]
    return tqdm(
        total=epochs * run.steps_per_epoch,
        initial=run.step,
        desc=f"train {run.cfg['model']['name']}/{run.ds.name}",
        disable=None if progress == "auto" else not progress,
        dynamic_ncols=True,
    )


def train(
    cfg: DictConfig | Mapping,
    out_dir: str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Trains (or resumes) one run described by ``cfg`` in the run directory ``out_dir``.

    Bad inputs fail before any work: unknown model/dataset/optimiser, invalid widths, an
    output directory that cannot be written, a run directory from an incompatible config,
    and TFDS data missing under ``data.data_dir``.

    Args:
      cfg: ``seed``, ``model``, ``data``, ``optimizer``, ``trainer`` groups (see ``conf/``).
      out_dir: the run directory; re-running into it resumes from the last checkpoint.
      callbacks: each ``fn(event: CheckpointEvent)`` is called, in order, after every
        checkpoint saved by this call; a dict it returns is merged into that checkpoint's
        ``metrics.jsonl`` record (not for checkpoints restored on resume; use
        :func:`ntk_repro.checkpoint.iter_checkpoints` to revisit those).
      on_epoch: ``fn(record)``, called with every evaluated epoch's record (epoch, step,
        train/test loss and accuracy) as soon as it is written, before that epoch's checkpoint
        callbacks: the hook for live logging.

    Returns:
      A :class:`TrainResult`.
    """
    cfg = resolve_config(cfg)
    validate_config(cfg)
    out = ckpt.ensure_writable_dir(out_dir)
    resume = _check_resume(out, cfg)
    run = _setup(cfg, out, callbacks, on_epoch)
    resumed_from = _resume(run) if resume else None
    atomic.write_text(out / ckpt.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    ckpt.write_metrics(out, run.records)
    epochs = int(cfg["trainer"]["epochs"])
    save_epochs = set(checkpoint_epochs(cfg["trainer"]))
    try:
        if not resume:
            _finish_epoch(run, 0, save_epochs)
        with _progress_bar(run, epochs) as bar:
            for epoch in range((resumed_from or 0) + 1, epochs + 1):
                _train_epoch(run, epoch, bar)
                _finish_epoch(run, epoch, save_epochs)
    finally:
        run.manager.close()
    if not math.isfinite(run.records[-1]["train_loss"]):
        log.warning("training diverged: final train_loss is %s", run.records[-1]["train_loss"])
    return TrainResult(
        state=run.state,
        metrics=run.records,
        model=run.model,
        dataset=run.ds,
        out_dir=out,
        epoch=epochs,
        step=run.step,
        resumed_from=resumed_from,
    )
