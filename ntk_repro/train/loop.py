"""The one training loop: optax optimisers, jitted train/eval steps, Orbax checkpoints, resume.

:func:`train` takes a config (a Hydra ``DictConfig`` or a nested dict; see ``conf/train.yaml``)
and a run directory ``OUT`` and writes ``OUT/config.yaml``, ``OUT/metrics.jsonl`` and
``OUT/checkpoints/<epoch>`` (layout in :mod:`ntk_repro.train.checkpoint`).

* Checkpoints are saved at epoch 0 (initialisation), at ``trainer.checkpoint_epochs``, at
  multiples of ``trainer.checkpoint_every`` and at the last epoch. Each holds params,
  batch_stats, optimiser state, the PRNG key and (epoch, step).
* The data order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed,
  e])``, so a resumed run replays exactly the batches an uninterrupted one would.
* Re-running into the same ``OUT`` resumes from the last finalised checkpoint and rewrites
  ``metrics.jsonl`` to the records up to it; on CPU the final params and metrics.jsonl are
  bit-identical to an uninterrupted run. A stored config that differs in any key except
  :data:`ntk_repro.train.checkpoint.RESUME_IGNORED_KEYS` refuses to resume and names the keys.
* Callbacks ``fn(event: CheckpointEvent)`` run after each checkpoint is finalised on disk
  (see :class:`CheckpointEvent`); they are the hook for kernels at checkpoints.
* Divergence: a non-finite initialisation (parameters, or the loss evaluated at epoch 0)
  stops the run at epoch 0, step 0, before any checkpoint or kernel, naming the settings to
  look at (no learning rate can help, so ``lower_lr`` does not retry). The first epoch with
  a non-finite training loss (or non-finite parameters or optimiser state) stops the run
  with a log message naming epoch, step and learning rate. Nothing of that epoch is kept: no
  metrics record, no checkpoint, no callback (so no kernel of non-finite parameters);
  ``OUT/status.json`` says ``"status": "diverged"``. With ``trainer.on_divergence=lower_lr``
  the run restarts instead from its last checkpoint at a tenth of the learning rate (one
  checkpoint further back when a restart from there diverged again; at most
  ``trainer.max_lr_restarts`` times), recorded in ``status.json``'s ``lr_lowered``.
  ``train`` returns normally either way, so the command line exits with status 0 and a Hydra
  multirun sweep goes on past a diverged run; callers read :attr:`TrainResult.diverged`, and
  the report lists such runs and leaves them out.

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
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ntk import atomic
from ntk.checks import lookup
from ntk_repro.config import group_defaults
from ntk_repro.data import LOADERS, Dataset, load_dataset, reshape_for
from ntk_repro.models import MODELS, build_model
from ntk_repro.train import checkpoint as ckpt
from ntk_repro.train.optim import LOSSES, OPTIMIZERS, SCHEDULES, build_optimizer
from ntk_repro.train.steps import (
    TrainState,
    all_finite,
    create_state,
    epoch_batches,
    epoch_summary,
    evaluate,
    make_eval_step,
    make_train_step,
)

__all__ = [
    "LOSSES",
    "ON_DIVERGENCE",
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

# trainer.on_divergence: what a non-finite training loss does
ON_DIVERGENCE = ("stop", "lower_lr")
LR_FACTOR = 10.0  # lower_lr divides the learning rate by this, the paper's own remedy


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
    for key in ("train_eval_size", "test_eval_size"):
        if trainer.get(key) is not None and int(trainer[key]) <= 0:
            raise ValueError(f"trainer.{key}: must be positive or null, got {trainer[key]!r}")
    if trainer["progress"] not in (True, False, "auto"):
        raise ValueError(
            f"trainer.progress: must be true, false or 'auto', got {trainer['progress']!r}"
        )
    if trainer["on_divergence"] not in ON_DIVERGENCE:
        raise ValueError(
            f"trainer.on_divergence: must be one of {list(ON_DIVERGENCE)}, "
            f"got {trainer['on_divergence']!r}"
        )
    restarts = trainer["max_lr_restarts"]
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
        raise ValueError(f"trainer.max_lr_restarts: must be an int >= 0, got {restarts!r}")
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
      model: the Linen module (:func:`ntk_repro.models.kernel_model` gives its kernel
        ``apply_fn``).
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
    diverged: dict | None = None  # the divergence that stopped the run (see status.json)
    lr_lowered: list[dict] = field(default_factory=list)  # trainer.on_divergence=lower_lr
    learning_rate: float | None = None  # the peak learning rate in use at the end


class _Diverged(Exception):
    """Raised inside the epoch loop at the first non-finite loss, parameter or optimiser
    state; :func:`_on_divergence` decides what follows. At epoch 0 (``at_init``) it is the
    initialisation that is not finite, before any optimiser step."""

    def __init__(self, epoch: int, step: int, learning_rate: float, reason: str):
        self.info = {"epoch": epoch, "step": step, "learning_rate": learning_rate}
        self.info["reason"] = reason
        self.at_init = epoch == 0
        super().__init__(
            f"training diverged at epoch {epoch}, step {step} "
            f"(learning rate {learning_rate:g}): {reason}"
        )


def _init_settings(cfg: Mapping, params: Any) -> str:
    """The settings to look at when the initialisation is not finite: the model's scale
    settings (``sigma*``), those whose value overflows the parameters' floating dtype
    (``np.finfo(dtype).max``) first, and the data."""
    dtype = _float_dtype(params)
    model = cfg["model"]
    scales = {k: v for k, v in model.items() if "sigma" in k and isinstance(v, int | float)}
    big = [k for k, v in scales.items() if abs(float(v)) > float(np.finfo(dtype).max)]
    named = [f"model.{k}={scales[k]:g} (overflows {dtype.name})" for k in big]
    named += [f"model.{k}={v:g}" for k, v in scales.items() if k not in big]
    return ", ".join(named + [f"the inputs of data={cfg['data']['name']}"])


def _float_dtype(params: Any) -> np.dtype:
    """The floating dtype of the parameters (the widest of their floating leaves; float32,
    JAX's default, where none is floating)."""
    kinds = [
        np.dtype(leaf.dtype)
        for leaf in jax.tree_util.tree_leaves(params)
        if hasattr(leaf, "dtype") and np.issubdtype(np.dtype(leaf.dtype), np.floating)
    ]
    return max(kinds, key=lambda d: d.itemsize, default=np.dtype(np.float32))


def load_data(cfg: Mapping) -> Dataset:
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
    lr: float
    epoch: int = 0  # the last finished epoch
    step: int = 0
    records: list = field(default_factory=list)
    lr_lowered: list = field(default_factory=list)
    diverged: dict | None = None

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


def _optimizer(cfg: Mapping, ds: Dataset, lr: float):
    """The run's optax optimiser at peak learning rate ``lr`` (the config's, or a lowered
    one: the learning rate lives in the schedule's closure, not in the optimiser state, so
    a state saved at one rate restores into the optimiser of another)."""
    trainer = cfg["trainer"]
    steps_per_epoch = len(ds.y_train) // _batch_size(ds, trainer)
    epochs = max(int(trainer["epochs"]), 1)
    opt_cfg = {**cfg["optimizer"], "learning_rate": lr}
    return build_optimizer(opt_cfg, steps_per_epoch=steps_per_epoch, epochs=epochs)


def _setup(cfg: dict, out: Path, callbacks, on_epoch, lr: float) -> _Run:
    """Data, model, optimiser (at peak learning rate ``lr``), jitted steps and the initial
    state of a run."""
    ds = load_data(cfg)
    trainer = cfg["trainer"]
    model_cfg = dict(cfg["model"])
    model = build_model(model_cfg.pop("name"), num_classes=ds.num_classes, **model_cfg)
    tx = _optimizer(cfg, ds, lr)
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
        lr=lr,
    )


def _checkpoint_items(run: _Run) -> dict:
    """What a checkpoint holds besides its meta (and, on restore, the structure to fill)."""
    state = run.state
    return dict(
        params=state.params, batch_stats=state.batch_stats, opt_state=state.opt_state, key=run.key
    )


def _restore(run: _Run, epoch: int) -> None:
    """Restores the checkpoint of ``epoch`` into ``run`` and keeps the records up to it."""
    restored = ckpt.restore_checkpoint(run.manager, epoch, **_checkpoint_items(run))
    run.state = TrainState(restored["params"], restored["batch_stats"], restored["opt_state"])
    run.key = restored["key"]
    run.step = int(restored["meta"]["step"])
    run.epoch = epoch
    run.records = [r for r in run.records if r["epoch"] <= epoch]


def _resume(run: _Run) -> int:
    """Restores the last checkpoint into ``run`` and keeps the metric records up to it;
    returns its epoch."""
    epoch = ckpt.checkpoint_epochs_saved(run.out)[-1]
    run.records = ckpt.read_metrics(run.out)
    _restore(run, epoch)
    log.info("resuming %s from epoch %d (step %d)", run.out, epoch, run.step)
    return epoch


def _write_status(run: _Run, status: str) -> None:
    ckpt.write_status(
        run.out,
        {
            "status": status,
            "diverged": run.diverged,
            "learning_rate": run.lr,
            "lr_lowered": run.lr_lowered,
            "epoch": run.epoch,
            "step": run.step,
        },
    )


def _restart_epoch(run: _Run, saved: list[int]) -> int:
    """The checkpoint a ``lower_lr`` restart goes back to: the last one, unless the previous
    restart already went back there and diverged again before the next checkpoint. That
    checkpoint, though finite, may be blown up past what any learning rate recovers from
    (e.g. a loss of 1e27), so the restart goes one checkpoint further back."""
    if run.lr_lowered and run.lr_lowered[-1]["restart_epoch"] == saved[-1] and len(saved) > 1:
        return saved[-2]
    return saved[-1]


def _on_divergence(run: _Run, error: _Diverged, before: tuple) -> int | None:
    """After a divergence: the epoch to go on from (``lower_lr``: a checkpoint, restored,
    at a tenth of the learning rate; see :func:`_restart_epoch`), or None when the run
    stops there.

    ``before`` is ``(state, step)`` at the start of the diverged epoch, the last finite
    state, which a stopped run returns. The diverged epoch's record (if any) is dropped."""
    info = error.info
    run.state, run.step = before
    run.records = [r for r in run.records if r["epoch"] < info["epoch"]]
    ckpt.write_metrics(run.out, run.records)
    saved = ckpt.checkpoint_epochs_saved(run.out)  # all finite: none is saved otherwise
    limit = int(run.trainer["max_lr_restarts"])
    lower = run.trainer["on_divergence"] == "lower_lr"
    if error.at_init:  # no step was taken: no learning rate changes the initialisation
        run.diverged = info
        log.error(
            "%s. The run stops at initialisation, before any step: no checkpoint is kept and "
            "no kernel computed; a lower learning rate cannot help (trainer.on_divergence is "
            "not used). Look at %s. %s marks it diverged.",
            error,
            _init_settings(run.cfg, run.state.params),
            run.out / ckpt.STATUS_FILE,
        )
        return None
    if lower and saved and len(run.lr_lowered) < limit:
        new_lr, restart = run.lr / LR_FACTOR, _restart_epoch(run, saved)
        log.warning(
            "%s; restarting from the checkpoint of epoch %d at learning rate %g "
            "(trainer.on_divergence=lower_lr, restart %d of at most %d)",
            error,
            restart,
            new_lr,
            len(run.lr_lowered) + 1,
            limit,
        )
        run.lr_lowered.append(
            {
                "epoch": info["epoch"],
                "step": info["step"],
                "old_lr": run.lr,
                "new_lr": new_lr,
                "restart_epoch": restart,
                "dropped_checkpoints": ckpt.delete_checkpoints_after(run.manager, restart),
            }
        )
        run.lr = new_lr
        run.train_step = make_train_step(
            run.model, _optimizer(run.cfg, run.ds, new_lr), run.trainer["loss"]
        )
        _restore(run, restart)
        ckpt.write_metrics(run.out, run.records)
        _write_status(run, "running")
        return restart
    run.diverged = info
    if not lower:
        action = "set trainer.on_divergence=lower_lr to restart at a lower learning rate"
    elif not saved:
        action = "no finite checkpoint to restart from"
    else:
        action = f"gave up after trainer.max_lr_restarts={limit} learning-rate restarts"
    kept = f"epoch {saved[-1]}" if saved else "none"
    log.error(
        "%s. The run stops (%s); last finite checkpoint: %s; %s marks it diverged.",
        error,
        action,
        kept,
        run.out / ckpt.STATUS_FILE,
    )
    return None


def _evaluate_epoch(run: _Run, epoch: int, is_checkpoint: bool) -> dict:
    """Evaluates the train and test sets (their first ``train_eval_size`` and
    ``test_eval_size`` examples; null: all), appends the record to ``metrics.jsonl`` and hands
    it to ``on_epoch``."""
    ds, trainer = run.ds, run.trainer
    n_eval = len(ds.y_train) if trainer["train_eval_size"] is None else trainer["train_eval_size"]
    n_test = len(ds.y_test) if trainer.get("test_eval_size") is None else trainer["test_eval_size"]
    n_eval, n_test, bs = int(n_eval), int(n_test), trainer["eval_batch_size"]
    if epoch == 0 and not bool(all_finite(run.state)):
        raise _Diverged(0, run.step, run.lr, "the initial parameters are not finite")
    train_m = evaluate(run.eval_step, run.state, ds.x_train[:n_eval], ds.y_train[:n_eval], bs)
    # At init only where the run trains: a run that takes no step (a cost run whose wider
    # readout O' < classes has no defined loss) still has its kernels.
    trains = epoch > 0 or int(run.trainer["epochs"]) > 0
    if trains and not math.isfinite(train_m["loss"]):  # at init: the initial outputs
        what = "initial training loss" if epoch == 0 else "evaluated train_loss"
        raise _Diverged(epoch, run.step, run.lr, f"{what} is {train_m['loss']}")
    test_m = evaluate(run.eval_step, run.state, ds.x_test[:n_test], ds.y_test[:n_test], bs)
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
    if not bool(all_finite(state)):  # never a checkpoint (or a kernel) of non-finite params
        raise _Diverged(epoch, run.step, run.lr, "non-finite parameters at the checkpoint")
    meta = {"step": run.step, "num_classes": run.ds.num_classes}
    meta["input_shape"] = list(run.ds.input_shape)
    ckpt.save_checkpoint(run.manager, epoch, **_checkpoint_items(run), meta=meta)
    if not run.callbacks:
        return
    event = CheckpointEvent(
        epoch=epoch,
        step=run.step,
        out_dir=run.out,
        checkpoint_dir=run.out / ckpt.CHECKPOINT_DIR / str(epoch),
        model=run.model,
        params=state.params,
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
    """One pass over the epoch's batches (its permutation of ``(seed, epoch)``); raises
    :class:`_Diverged` when a step's loss, or the final state, is not finite.

    Divergence is checked once per epoch, not per step: the step losses stay on device and
    :func:`epoch_summary` reduces them, with a finiteness check of the state, to scalars
    fetched in the one transfer the epoch already made for its progress-bar loss. The hot
    loop gains no device sync; a diverging epoch runs on to its end before it is caught (its
    steps are cheap and nothing of it is kept), and its first non-finite loss names the
    step."""
    ds, metrics = run.ds, []
    n, seed = len(ds.y_train), int(run.cfg["seed"])
    first_step = run.step
    for idx_B in epoch_batches(n, run.batch_size, seed, epoch):
        run.state, m = run.train_step(run.state, ds.x_train[idx_B], ds.y_train[idx_B])
        metrics.append(m)
        run.step += 1
        bar.update(1)
    if not metrics:
        return
    summary = jax.device_get(epoch_summary(metrics, run.state))
    bad = int(summary["first_nonfinite"])
    if bad >= 0:  # step numbers count from 1: step k is the k-th optimiser update
        raise _Diverged(
            epoch, first_step + bad + 1, run.lr, f"training loss is {float(metrics[bad]['loss'])}"
        )
    if not summary["state_finite"]:
        raise _Diverged(epoch, run.step, run.lr, "non-finite parameters or optimiser state")
    loss, acc = float(summary["loss"]), float(summary["acc"])
    bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", acc=f"{acc:.3f}")


def _run_epochs(run: _Run, first: int, epochs: int, save_epochs: set[int], bar) -> None:
    """Epochs ``first + 1 .. epochs``, restarting or stopping at a divergence."""
    epoch = first + 1
    while epoch <= epochs:
        before = (run.state, run.step)
        try:
            _train_epoch(run, epoch, bar)
            _finish_epoch(run, epoch, save_epochs)
        except _Diverged as error:
            restart = _on_divergence(run, error, before)
            if restart is None:
                return
            bar.n = run.step
            bar.refresh()
            epoch = restart + 1
            continue
        run.epoch = epoch
        epoch += 1


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
        :func:`ntk_repro.train.checkpoint.iter_checkpoints` to revisit those).
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
    # a resumed run goes on at the learning rate its last lower_lr restart left
    status = (ckpt.read_status(out) if resume else None) or {}
    lr = float(status.get("learning_rate", cfg["optimizer"]["learning_rate"]))
    run = _setup(cfg, out, callbacks, on_epoch, lr)
    run.lr_lowered = list(status.get("lr_lowered", []))
    resumed_from = _resume(run) if resume else None
    atomic.write_text(out / ckpt.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    ckpt.write_metrics(out, run.records)
    _write_status(run, "running")
    epochs = int(cfg["trainer"]["epochs"])
    save_epochs = set(checkpoint_epochs(cfg["trainer"]))
    try:
        if not resume:
            try:
                _finish_epoch(run, 0, save_epochs)
            except _Diverged as error:  # a non-finite initialisation: nothing to go back to
                _on_divergence(run, error, (run.state, run.step))
        if run.diverged is None:
            with _progress_bar(run, epochs) as bar:
                _run_epochs(run, resumed_from or 0, epochs, save_epochs, bar)
    finally:
        run.manager.close()
    _write_status(run, "finished" if run.diverged is None else "diverged")
    return TrainResult(
        state=run.state,
        metrics=run.records,
        model=run.model,
        dataset=run.ds,
        out_dir=out,
        epoch=run.epoch,
        step=run.step,
        resumed_from=resumed_from,
        diverged=run.diverged,
        lr_lowered=list(run.lr_lowered),
        learning_rate=run.lr,
    )
