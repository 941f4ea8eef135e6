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

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ntk import atomic
from ntk.checks import lookup
from ntk_repro import checkpoint as ckpt
from ntk_repro.config import group_defaults
from ntk_repro.data import LOADERS, Dataset, load_dataset, reshape_for
from ntk_repro.models import MODELS, build_model, init_model, kernel_apply_fn

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

# --- losses, schedules, optimisers -------------------------------------------------------


def _cross_entropy(logits_BO: jax.Array, y_B: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BO, y_B)


def _mse(logits_BO: jax.Array, y_B: jax.Array) -> jax.Array:
    target_BO = jax.nn.one_hot(y_B, logits_BO.shape[-1], dtype=logits_BO.dtype)
    return 0.5 * jnp.sum((logits_BO - target_BO) ** 2, axis=-1)


# name -> per-example loss fn(logits [B, O], int labels [B]) -> [B]
LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,  # 0.5 · ||f(x) - onehot(y)||²
}

# name -> fn(peak_lr, total_steps, warmup_steps) -> optax schedule
SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "constant": lambda lr, total, warmup: optax.constant_schedule(lr),
    "cosine": lambda lr, total, warmup: optax.cosine_decay_schedule(lr, max(total, 1)),
    "warmup_cosine": lambda lr, total, warmup: optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup, 1), max(total, warmup + 1)
    ),
}


def _sgd(
    learning_rate: optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """SGD (with momentum when > 0); L2 weight decay added to the gradient."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )


def _adam(
    learning_rate: optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (AdamW; plain Adam when ``weight_decay == 0``)."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


# name -> fn(learning_rate schedule, **options) -> optax transformation
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"sgd": _sgd, "adam": _adam}


def build_optimizer(
    opt_cfg: Mapping[str, Any], *, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
    """Builds the optimiser ``opt_cfg["name"]`` from :data:`OPTIMIZERS`.

    Args:
      opt_cfg: ``name``, ``learning_rate``, ``schedule`` (a key of :data:`SCHEDULES`),
        ``warmup_epochs`` and the optimiser's own options (``momentum``, ``weight_decay``...).
      steps_per_epoch, epochs: give the schedule's length.
    """
    opt_cfg = dict(opt_cfg)
    make = lookup("optimizer", opt_cfg.pop("name", None), OPTIMIZERS)
    lr = float(opt_cfg.pop("learning_rate"))
    schedule_fn = lookup("optimizer.schedule", opt_cfg.pop("schedule", "constant"), SCHEDULES)
    warmup_steps = int(round(float(opt_cfg.pop("warmup_epochs", 0)) * steps_per_epoch))
    valid = set(inspect.signature(make).parameters) - {"learning_rate"}
    unknown = sorted(set(opt_cfg) - valid)
    if unknown:
        raise ValueError(f"optimizer: unknown options {unknown}; valid: {sorted(valid)}")
    schedule = schedule_fn(lr, epochs * steps_per_epoch, warmup_steps)
    return make(schedule, **opt_cfg)


# --- state and steps ---------------------------------------------------------------------


@struct.dataclass
class TrainState:
    """Everything the jitted step updates. ``batch_stats`` is ``{}`` without BatchNorm."""

    params: Any
    batch_stats: Any
    opt_state: Any


def create_state(
    model: nn.Module, key: jax.Array, input_shape: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """Initialises params (and batch_stats) for inputs ``[N, *input_shape]`` and the optimiser."""
    variables = init_model(model, key, input_shape)
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params))


def _variables(state: TrainState, params: Any) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss: str) -> Callable:
    """Jitted ``train_step(state, x_BX, y_B) -> (state, {"loss", "acc"})`` (train mode;
    BatchNorm statistics are updated from the batch)."""
    loss_fn = lookup("trainer.loss", loss, LOSSES)

    def train_step(state: TrainState, x_BX: jax.Array, y_B: jax.Array):
        def objective(params):
            variables = _variables(state, params)
            if state.batch_stats:
                logits_BO, updates = model.apply(
                    variables, x_BX, train=True, mutable=["batch_stats"]
                )
                batch_stats = updates["batch_stats"]
            else:
                logits_BO = model.apply(variables, x_BX, train=True)
                batch_stats = state.batch_stats
            return jnp.mean(loss_fn(logits_BO, y_B)), (logits_BO, batch_stats)

        (loss_value, (logits_BO, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = jnp.mean((jnp.argmax(logits_BO, axis=-1) == y_B).astype(jnp.float32))
        return TrainState(params, batch_stats, opt_state), {"loss": loss_value, "acc": acc}

    return jax.jit(train_step)


def make_eval_step(model: nn.Module, loss: str) -> Callable:
    """Jitted ``eval_step(state, x_BX, y_B, mask_B) -> {"loss_sum", "correct"}`` in eval mode;
    rows with ``mask_B == 0`` (padding) are ignored."""
    loss_fn = lookup("trainer.loss", loss, LOSSES)

    def eval_step(state: TrainState, x_BX: jax.Array, y_B: jax.Array, mask_B: jax.Array):
        logits_BO = model.apply(_variables(state, state.params), x_BX, train=False)
        correct_B = (jnp.argmax(logits_BO, axis=-1) == y_B).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss_fn(logits_BO, y_B) * mask_B),
            "correct": jnp.sum(correct_B * mask_B),
        }

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable, state: TrainState, x_NX: np.ndarray, y_N: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Mean loss and accuracy over ``x_NX`` in fixed-size (zero-padded) batches."""
    n = len(y_N)
    batch_size = min(batch_size, n)
    loss_sum, correct = 0.0, 0.0
    for start in range(0, n, batch_size):
        x_BX, y_B = x_NX[start : start + batch_size], y_N[start : start + batch_size]
        mask_B = np.ones(batch_size, np.float32)
        pad = batch_size - len(y_B)
        if pad:
            x_BX = np.concatenate([x_BX, np.zeros((pad, *x_BX.shape[1:]), x_BX.dtype)])
            y_B = np.concatenate([y_B, np.zeros(pad, y_B.dtype)])
            mask_B[batch_size - pad :] = 0.0
        out = eval_step(state, x_BX, y_B, mask_B)
        loss_sum += float(out["loss_sum"])
        correct += float(out["correct"])
    return {"loss": loss_sum / n, "acc": correct / n}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``[n // batch_size, batch_size]`` example indices of epoch ``epoch`` (last partial batch
    dropped), a deterministic function of ``(seed, epoch)``."""
    perm_N = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // batch_size
    return perm_N[: steps * batch_size].reshape(steps, batch_size)


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
    ds = _load_data(cfg)
    trainer = cfg["trainer"]
    seed = int(cfg["seed"])

    n_train = len(ds.y_train)
    batch_size = min(int(trainer["batch_size"]), n_train)
    steps_per_epoch = n_train // batch_size
    epochs = int(trainer["epochs"])
    save_epochs = set(checkpoint_epochs(trainer))
    eval_every = int(trainer["eval_every"])
    n_train_eval = (
        n_train if trainer["train_eval_size"] is None else int(trainer["train_eval_size"])
    )
    x_train_eval, y_train_eval = ds.x_train[:n_train_eval], ds.y_train[:n_train_eval]

    model_cfg = dict(cfg["model"])
    model = build_model(model_cfg.pop("name"), num_classes=ds.num_classes, **model_cfg)
    tx = build_optimizer(cfg["optimizer"], steps_per_epoch=steps_per_epoch, epochs=max(epochs, 1))
    init_key, key = jax.random.split(jax.random.key(seed))
    state = create_state(model, init_key, ds.input_shape, tx)
    train_step = make_train_step(model, tx, trainer["loss"])
    eval_step = make_eval_step(model, trainer["loss"])
    meta = {"num_classes": ds.num_classes, "input_shape": list(ds.input_shape)}

    manager = ckpt.checkpoint_manager(out)
    records: list[dict] = []
    start_epoch, step, resumed_from = 0, 0, None
    if resume:
        resumed_from = ckpt.checkpoint_epochs_saved(out)[-1]
        restored = ckpt.restore_checkpoint(
            manager,
            resumed_from,
            params=state.params,
            batch_stats=state.batch_stats,
            opt_state=state.opt_state,
            key=key,
        )
        state = TrainState(restored["params"], restored["batch_stats"], restored["opt_state"])
        key = restored["key"]
        start_epoch, step = resumed_from, int(restored["meta"]["step"])
        records = [r for r in ckpt.read_metrics(out) if r["epoch"] <= resumed_from]
        log.info("resuming %s from epoch %d (step %d)", out, start_epoch, step)
    atomic.write_text(out / ckpt.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    ckpt.write_metrics(out, records)

    def finish_epoch(epoch: int) -> None:
        is_checkpoint = epoch in save_epochs
        if not (is_checkpoint or epoch % eval_every == 0):
            return
        train_m = evaluate(eval_step, state, x_train_eval, y_train_eval, trainer["eval_batch_size"])
        test_m = evaluate(eval_step, state, ds.x_test, ds.y_test, trainer["eval_batch_size"])
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_m["loss"],
            "train_acc": train_m["acc"],
            "test_loss": test_m["loss"],
            "test_acc": test_m["acc"],
            "checkpoint": is_checkpoint,
        }
        # metrics first, then the checkpoint: a crash in between resumes from the previous
        # checkpoint, which truncates this record away.
        records.append(record)
        ckpt.write_metrics(out, records)
        if on_epoch is not None:
            on_epoch(dict(record))
        log.info(
            "epoch %d step %d: train_loss %.4f train_acc %.4f test_loss %.4f test_acc %.4f",
            epoch,
            step,
            record["train_loss"],
            record["train_acc"],
            record["test_loss"],
            record["test_acc"],
        )
        if not is_checkpoint:
            return
        ckpt.save_checkpoint(
            manager,
            epoch,
            params=state.params,
            batch_stats=state.batch_stats,
            opt_state=state.opt_state,
            key=key,
            meta={"step": step, **meta},
        )
        if callbacks:
            apply_fn, params = kernel_apply_fn(model, _variables(state, state.params))
            event = CheckpointEvent(
                epoch=epoch,
                step=step,
                out_dir=out,
                checkpoint_dir=out / ckpt.CHECKPOINT_DIR / str(epoch),
                model=model,
                apply_fn=apply_fn,
                params=params,
                state=state,
                metrics=record,
                dataset=ds,
                cfg=cfg,
            )
            extra = {}
            for callback in callbacks:
                extra.update(callback(event) or {})
            if extra:  # a callback may return scalars to store with this checkpoint's record
                record.update(extra)
                ckpt.write_metrics(out, records)

    try:
        if not resume:
            finish_epoch(0)
        progress = trainer["progress"]
        bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=step,
            desc=f"train {cfg['model']['name']}/{ds.name}",
            disable=None if progress == "auto" else not progress,
            dynamic_ncols=True,
        )
        with bar:
            for epoch in range(start_epoch + 1, epochs + 1):
                batch_metrics = []
                for idx_B in epoch_batches(n_train, batch_size, seed, epoch):
                    state, m = train_step(state, ds.x_train[idx_B], ds.y_train[idx_B])
                    batch_metrics.append(m)
                    step += 1
                    bar.update(1)
                if batch_metrics:
                    loss = float(jnp.mean(jnp.stack([m["loss"] for m in batch_metrics])))
                    acc = float(jnp.mean(jnp.stack([m["acc"] for m in batch_metrics])))
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", acc=f"{acc:.3f}")
                finish_epoch(epoch)
    finally:
        manager.close()
    if not math.isfinite(records[-1]["train_loss"]):
        log.warning("training diverged: final train_loss is %s", records[-1]["train_loss"])
    return TrainResult(
        state=state,
        metrics=records,
        model=model,
        dataset=ds,
        out_dir=out,
        epoch=epochs,
        step=step,
        resumed_from=resumed_from,
    )
