"""``ntk.approximation_report`` for the study's models, at their saved checkpoints.

:func:`report_run` is what ``experiments/approximation_report.py`` (console script
``ntk-approximation-report``) calls: for one run directory it rebuilds the model and the
kernel points exactly as the study did (the run's own config, :func:`ntk_repro.experiment.
eval_set_for`, the run's kernel dtype) and writes, per checkpoint,
``RUN/approximation_report_epoch<E>.json`` (atomically; readable with
``ntk.ApproximationReport.from_json``). A Hydra multirun over ``run_dir=A,B,...`` makes
reports for many runs; ``epochs=[0,5]`` restricts the checkpoints.

With the run's kernel points and dtype, the report's pNTK relative Frobenius error (and its
spectra and ridgeless regression) are the study's numbers for that checkpoint
(``RUN/metrics.jsonl``). ``n_per_class`` / ``n_test_per_class`` choose other points (same
stratified, seeded selection); ``block_wise`` computes block by block under
``RUN/approximation_report_epoch<E>/`` (resumable) for points that do not fit in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPORT_FILE = "approximation_report_epoch{epoch}.json"


def report_path(run_dir: str | Path, epoch: int) -> Path:
    """``RUN/approximation_report_epoch<E>.json``."""
    return Path(run_dir) / REPORT_FILE.format(epoch=int(epoch))


def kernel_config(run_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """The run's ``kernel`` config (``conf/kernel/default.yaml`` for a run trained without
    kernels), with the non-None ``overrides`` applied."""
    from ntk_repro.config import group_defaults

    kcfg = dict(load_run_config(run_dir).get("kernel") or {})
    if "ridges" not in kcfg:  # trained with kernel=none: the study's default kernel settings
        kcfg = {**group_defaults("kernel"), **kcfg}
    kcfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return kcfg


def report_run(
    run_dir: str | Path,
    *,
    epochs: Sequence[int] | None = None,
    n_per_class: int | None = None,
    n_test_per_class: int | None = None,
    kinds: Sequence[str] | None = None,
    ridge: float = 1e-2,
    block_wise: bool = False,
    block_size: int = 256,
    timing_repeats: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Approximation reports for the saved checkpoints of one study run.

    Args:
      run_dir: a run directory written by training (``config.yaml``, ``checkpoints/``).
      epochs: only these checkpoints (None: every saved one); a listed epoch that was not
        saved is an error.
      n_per_class, n_test_per_class: kernel points per class (None: the run's own).
      kinds: approximation kinds (None: :data:`ntk.approximation.DEFAULT_KINDS`).
      ridge, block_size, timing_repeats, progress: as :func:`ntk.approximation_report`.
      block_wise: compute block by block under ``RUN/approximation_report_epoch<E>/``.

    Returns:
      Per checkpoint ``{"epoch", "step", "path", "report"}`` (the
      :class:`ntk.ApproximationReport`), in epoch order.
    """
    from ntk.approximation import DEFAULT_KINDS, approximation_report
    from ntk_repro.analysis.calls import cast_tree, precision
    from ntk_repro.experiment import eval_set_for, kernel_options
    from ntk_repro.models import kernel_model, variables
    from ntk_repro.train.checkpoint import checkpoint_epochs_saved, iter_checkpoints
    from ntk_repro.train.loop import load_data, resolve_config

    run_dir = Path(run_dir)
    kcfg = kernel_config(
        run_dir, {"n_per_class": n_per_class, "n_test_per_class": n_test_per_class}
    )
    if epochs is not None:
        saved = checkpoint_epochs_saved(run_dir)
        missing = sorted({int(e) for e in epochs} - set(saved))
        if missing:
            raise ValueError(f"epochs: {missing} not saved in {str(run_dir)!r}; saved: {saved}")
    cfg = resolve_config(load_run_config(run_dir))
    dataset = load_data(cfg)
    evalset = eval_set_for(dataset, kcfg, int(kcfg["seed"]))
    dtype = kernel_options(kcfg)["dtype"]
    kinds = tuple(DEFAULT_KINDS if kinds is None else kinds)
    out, shared = [], None
    for ck in iter_checkpoints(run_dir, epochs):
        apply_fn, params, state = kernel_model(ck.model, variables(ck.params, ck.batch_stats))
        # every checkpoint's model is built from the same config: one function for all, so
        # they share the report's compiled kernels
        apply_fn = shared = shared or apply_fn
        with precision(dtype):
            report = approximation_report(
                apply_fn,
                cast_tree(params, dtype),
                cast_tree(evalset.x_train, dtype),
                evalset.y_train,
                x_test=cast_tree(evalset.x_test, dtype),
                y_test=evalset.y_test,
                kinds=kinds,
                ridge=ridge,
                path=(run_dir / f"approximation_report_epoch{ck.epoch}") if block_wise else None,
                block_size=block_size,
                timing_repeats=timing_repeats,
                progress=progress,
                **cast_tree(state, dtype),
            )
        path = report_path(run_dir, ck.epoch)
        report.to_json(path)
        log.info("epoch %d: approximation report -> %s", ck.epoch, path)
        out.append({"epoch": ck.epoch, "step": ck.step, "path": path, "report": report})
    return out


def load_run_config(run_dir: str | Path) -> dict:
    """The run's ``config.yaml`` as a dict (FileNotFoundError when ``run_dir`` is no run)."""
    from ntk_repro.train.checkpoint import load_config

    cfg = load_config(run_dir)
    if cfg is None:
        raise FileNotFoundError(f"run_dir: no config.yaml in {str(run_dir)!r}; not a run dir")
    return cfg


def main(cfg: Mapping[str, Any]) -> list[dict]:
    """The Hydra entry's body: ``cfg`` as in ``conf/approximation_report.yaml``; prints each
    report's table."""
    epochs = cfg.get("epochs")
    kinds = cfg.get("kinds")
    results = report_run(
        cfg["run_dir"],
        epochs=None if epochs is None else [int(e) for e in epochs],
        n_per_class=cfg.get("n_per_class"),
        n_test_per_class=cfg.get("n_test_per_class"),
        kinds=None if kinds is None else [str(k) for k in kinds],
        ridge=float(cfg.get("ridge", 1e-2)),
        block_wise=bool(cfg.get("block_wise", False)),
        block_size=int(cfg.get("block_size", 256)),
        timing_repeats=int(cfg.get("timing_repeats", 1)),
        progress=bool(cfg.get("progress", True)),
    )
    for r in results:
        print(f"== {cfg['run_dir']} epoch {r['epoch']} (step {r['step']}) -> {r['path']}")
        print(r["report"])
    return results
