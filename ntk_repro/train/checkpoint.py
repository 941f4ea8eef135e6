"""Run directories: Orbax checkpoints, the stored config, metrics.jsonl, atomic writes.

Layout of a run directory ``OUT``::

    OUT/config.yaml          the resolved run config (written atomically)
    OUT/metrics.jsonl        one JSON object per evaluated epoch (rewritten atomically)
    OUT/checkpoints/<epoch>/ one Orbax checkpoint per saved epoch (epoch 0 = initialisation)
    OUT/status.json          how the run stands (written atomically; see write_status)

Each checkpoint has three items: ``model`` (``{"params", ["batch_stats"]}``), ``train``
(``{"opt_state", "key"}``) and ``meta`` (JSON: ``epoch``, ``step``, ``num_classes``,
``input_shape``). Orbax writes a step into a temporary directory and renames it when complete,
and only lists renamed (finalised) steps, so a crash during a save leaves the previous
checkpoint as the latest one. Saves here are synchronous.

Example (recompute something at every checkpoint without retraining)::

    for ckpt in iter_checkpoints("results/train/run"):
        apply_fn, params, state = kernel_model(ckpt.model, variables(ckpt.params, ckpt.batch_stats))
        logits_NO = apply_fn(params, x_NX, **state)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from omegaconf import OmegaConf

from ntk import atomic
from ntk_repro.models import build_model, variables

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "RESUME_IGNORED_KEYS",
    "STATUS_FILE",
    "Checkpoint",
    "checkpoint_epochs_saved",
    "checkpoint_manager",
    "config_diff",
    "delete_checkpoints_after",
    "ensure_writable_dir",
    "iter_checkpoints",
    "load_config",
    "read_metrics",
    "read_status",
    "restore_checkpoint",
    "save_checkpoint",
    "write_metrics",
    "write_status",
]

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
# Config keys (and key prefixes) that may change between a run and its resumption. The
# divergence keys only act once a run diverges (the replay up to there is the same), so a run
# stopped by a divergence can be resumed with ``trainer.on_divergence=lower_lr``.
RESUME_IGNORED_KEYS = (
    "trainer.progress",
    "trainer.on_divergence",
    "trainer.max_lr_restarts",
    "logger",
    "data.data_dir",
    "data.download",
)


def ensure_writable_dir(path: str | Path) -> Path:
    """Creates ``path`` if needed and checks a file can be written there.

    Raises:
      OSError: naming the directory, when it cannot be created or written.
    """
    path = Path(path).absolute()
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"out_dir: cannot write to output directory {str(path)!r}: {e}") from e
    return path


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: tree}


def config_diff(
    saved: Mapping, new: Mapping, ignore: Sequence[str] = RESUME_IGNORED_KEYS
) -> list[str]:
    """Dotted keys whose values differ between two nested configs, as ``"key: a -> b"``.

    Keys equal to, or under, an entry of ``ignore`` are skipped. Missing keys show as
    ``<missing>``.
    """
    flat_saved, flat_new = _flatten(saved), _flatten(new)
    diffs = []
    for key in sorted(set(flat_saved) | set(flat_new)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        a = flat_saved.get(key, "<missing>")
        b = flat_new.get(key, "<missing>")
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def load_config(out_dir: str | Path) -> dict | None:
    """The config stored in ``OUT/config.yaml`` as a plain dict, or None when absent."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.exists():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The records of ``OUT/metrics.jsonl`` (empty when absent)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(out_dir: str | Path, records: Sequence[Mapping]) -> None:
    """Atomically rewrites ``OUT/metrics.jsonl`` with one JSON object per record."""
    text = "".join(json.dumps(dict(r), sort_keys=False) + "\n" for r in records)
    atomic.write_text(Path(out_dir) / METRICS_FILE, text)


def read_status(out_dir: str | Path) -> dict | None:
    """The run's ``OUT/status.json`` (see :func:`write_status`), or None when absent (runs
    made before the file existed)."""
    path = Path(out_dir) / STATUS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_status(out_dir: str | Path, status: Mapping[str, Any]) -> None:
    """Atomically rewrites ``OUT/status.json``.

    Written by :func:`ntk_repro.train.loop.train`: ``status`` (``"running"``, ``"finished"``
    or ``"diverged"``: stopped by a non-finite loss and not recovered), ``diverged`` (null,
    or the divergence that stopped the run: ``epoch``, ``step``, ``learning_rate``,
    ``reason``), ``learning_rate`` (the peak learning rate in use at the end),
    ``lr_lowered`` (one entry per ``trainer.on_divergence=lower_lr`` restart: ``epoch``,
    ``step``, ``old_lr``, ``new_lr``, ``restart_epoch`` and the ``dropped_checkpoints`` it
    abandoned), ``epoch`` and ``step`` (the last finished epoch and its step).
    """
    text = json.dumps(dict(status), indent=1, allow_nan=False) + "\n"
    atomic.write_text(Path(out_dir) / STATUS_FILE, text)


@contextlib.contextmanager
def _quiet_absl():
    """Hides Orbax's absl warnings about read-only managers (expected here)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_manager(out_dir: str | Path, *, read_only: bool = False) -> ocp.CheckpointManager:
    """A synchronous Orbax manager for ``OUT/checkpoints`` that keeps every checkpoint.

    Leftover temporary directories of interrupted saves are removed (unless read-only).
    """
    directory = Path(out_dir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,
    )
    with _quiet_absl():
        return ocp.CheckpointManager(directory, options=options)


def checkpoint_epochs_saved(out_dir: str | Path) -> list[int]:
    """Sorted epochs with a finalised checkpoint in ``OUT/checkpoints`` (interrupted saves,
    left in Orbax temporary directories, are not listed)."""
    directory = Path(out_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(ocp.utils.checkpoint_steps(directory))


def _items(params, batch_stats, opt_state, key) -> tuple[dict, dict]:
    """The ``model`` and ``train`` items of a checkpoint (``key`` as its raw data)."""
    return variables(params, batch_stats), {"opt_state": opt_state, "key": jax.random.key_data(key)}


def save_checkpoint(
    manager: ocp.CheckpointManager,
    epoch: int,
    *,
    params: Any,
    batch_stats: Any,
    opt_state: Any,
    key: jax.Array,
    meta: Mapping[str, Any],
) -> None:
    """Saves one checkpoint as step ``epoch`` and returns once it is finalised on disk.

    ``key`` is a typed PRNG key (stored as its raw ``uint32`` data).
    """
    model_item, train_item = _items(params, batch_stats, opt_state, key)
    manager.save(
        epoch,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(model_item),
            train=ocp.args.StandardSave(train_item),
            meta=ocp.args.JsonSave({"epoch": int(epoch), **dict(meta)}),
        ),
        force=True,
    )
    manager.wait_until_finished()


def delete_checkpoints_after(manager: ocp.CheckpointManager, epoch: int) -> list[int]:
    """Deletes the checkpoints of epochs after ``epoch`` (a run going back to ``epoch``
    abandons them); returns their epochs."""
    dropped = sorted(e for e in manager.all_steps() if e > epoch)
    for e in dropped:
        manager.delete(e)
    manager.wait_until_finished()
    return dropped


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    epoch: int,
    *,
    params: Any,
    batch_stats: Any,
    opt_state: Any,
    key: jax.Array,
) -> dict[str, Any]:
    """Restores step ``epoch`` into the structure of the given templates (e.g. a fresh init).

    Returns ``{"params", "batch_stats", "opt_state", "key", "meta"}`` with ``key`` a typed key.
    """
    abstract = lambda tree: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
    model_item, train_item = _items(params, batch_stats, opt_state, key)
    restored = manager.restore(
        epoch,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract(model_item)),
            train=ocp.args.StandardRestore(abstract(train_item)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    model_out, train_out = restored["model"], restored["train"]
    return {
        "params": model_out["params"],
        "batch_stats": model_out.get("batch_stats", batch_stats),
        "opt_state": train_out["opt_state"],
        "key": jax.random.wrap_key_data(train_out["key"], impl=jax.random.key_impl(key)),
        "meta": dict(restored["meta"]),
    }


class Checkpoint(NamedTuple):
    """A saved model state (:func:`ntk_repro.models.kernel_model` runs it in eval mode)."""

    epoch: int
    step: int
    params: Any
    batch_stats: Any
    model: Any


def iter_checkpoints(
    out_dir: str | Path, epochs: Sequence[int] | None = None
) -> Iterator[Checkpoint]:
    """Yields the finalised checkpoints of a run directory in epoch order, read-only.

    The model is rebuilt from ``OUT/config.yaml``; only ``params`` / ``batch_stats`` are read
    (no optimiser state), so no template is needed.

    Args:
      out_dir: a run directory written by :func:`ntk_repro.train.loop.train`.
      epochs: restrict to these epochs (those not saved are skipped); None yields all.

    Raises:
      FileNotFoundError: ``out_dir`` has no ``config.yaml`` or no checkpoints.
    """
    cfg = load_config(out_dir)
    if cfg is None:
        raise FileNotFoundError(f"out_dir: no {CONFIG_FILE} in {str(out_dir)!r}; not a run dir")
    if not (Path(out_dir) / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"out_dir: no {CHECKPOINT_DIR}/ in {str(out_dir)!r}")
    manager = checkpoint_manager(out_dir, read_only=True)
    try:
        wanted = None if epochs is None else {int(e) for e in epochs}
        for epoch in sorted(manager.all_steps()):
            if wanted is not None and epoch not in wanted:
                continue
            restored = manager.restore(
                epoch,
                args=ocp.args.Composite(
                    model=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                ),
            )
            meta = restored["meta"]
            model_cfg = dict(cfg["model"])
            model = build_model(model_cfg.pop("name"), num_classes=meta["num_classes"], **model_cfg)
            saved = dict(restored["model"])
            yield Checkpoint(
                epoch=int(epoch),
                step=int(meta["step"]),
                params=saved["params"],
                batch_stats=saved.get("batch_stats", {}),
                model=model,
            )
    finally:
        manager.close()
