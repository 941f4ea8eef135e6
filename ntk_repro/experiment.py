"""The reproduction's glue: train with kernels at every checkpoint, or recompute them later.

``run(cfg, out_dir)`` is what ``experiments/train.py`` calls: it builds the logger, trains
with :func:`kernel_callback` (when ``kernel.enabled``) and logs a metrics table at the end.
``recompute(run_dir)`` re-derives the same kernel metrics from a finished run's saved
checkpoints, without retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ntk_repro.analysis import EvalSet, kernel_metrics, make_eval_set, save_arrays

log = logging.getLogger(__name__)

SAVED_ARRAYS = ("eig_entk", "eig_pntk_kron_i", "y_train", "y_test")
KERNEL_ARRAYS = ("entk", "pntk")


def _kernel_options(kcfg: Mapping[str, Any]) -> dict:
    return dict(
        ridges=tuple(float(r) for r in kcfg["ridges"]),
        implementation=kcfg["implementation"],
        approximations=tuple(kcfg.get("approximations") or ()),
        batch_size=kcfg.get("batch_size"),
    )


def kernels_at(
    model, variables, evalset: EvalSet, kcfg: Mapping[str, Any], out_dir: Path, epoch: int
) -> dict:
    """Kernel metrics for one checkpoint of ``model`` (a Linen module and its variables);
    saves spectra (and kernels if asked) as ``.npz``. Every checkpoint of a model shares one
    compiled kernel computation."""
    from ntk_repro.models import kernel_model

    apply_fn, params, state = kernel_model(model, variables)
    res = kernel_metrics(apply_fn, params, evalset, apply_kwargs=state, **_kernel_options(kcfg))
    keys = SAVED_ARRAYS + (KERNEL_ARRAYS if kcfg.get("save_kernels") else ())
    if epoch == 0:  # the heatmaps of the report need one kernel pair per run
        keys = keys + KERNEL_ARRAYS
    save_arrays(Path(out_dir) / "kernels" / f"epoch_{epoch:04d}.npz", res.arrays, keys)
    return res.scalars


def eval_set_for(dataset, kcfg: Mapping[str, Any], seed: int) -> EvalSet:
    return make_eval_set(dataset, int(kcfg["n_per_class"]), int(kcfg["n_test_per_class"]), seed)


def kernel_callback(kcfg: Mapping[str, Any], logger):
    """A training callback: kernel metrics at each checkpoint, merged into its record."""
    cache: dict = {}

    def callback(event) -> dict:
        if "evalset" not in cache:
            cache["evalset"] = eval_set_for(event.dataset, kcfg, int(kcfg["seed"]))
        variables = {"params": event.params}
        if event.state.batch_stats:
            variables["batch_stats"] = event.state.batch_stats
        scalars = kernels_at(
            event.model, variables, cache["evalset"], kcfg, event.out_dir, event.epoch
        )
        logger.log({**event.metrics, **scalars}, step=event.step)
        log.info(
            "epoch %d kernels: rel. Frobenius %.4f, λmax err %.4f, λmin err %.4f",
            event.epoch,
            scalars["relative_frobenius_error"],
            scalars["lambda_max_rel_error"],
            scalars["lambda_min_rel_error"],
        )
        return scalars

    return callback


def run_figures(run_dir: str | Path) -> dict[str, str]:
    """Spectrum overlays (first and last checkpoint) and the init heatmap of one run."""
    import numpy as np

    from ntk_repro import plotting

    files = sorted((Path(run_dir) / "kernels").glob("epoch_*.npz"))
    if not files:
        return {}
    panels, figs = [], {}
    for f in sorted({files[0], files[-1]}):
        with np.load(f, allow_pickle=False) as z:
            panels.append((f.stem, z["eig_entk"], z["eig_pntk_kron_i"]))
    figs["spectra"] = plotting.spectra_overlay(panels, Path(run_dir) / "fig_spectra.png")
    with np.load(files[0], allow_pickle=False) as z:
        if "entk" in z:
            figs["heatmaps"] = plotting.heatmaps(
                z["entk"], z["pntk"], Path(run_dir) / "fig_heatmaps.png"
            )
    return figs


def run(cfg, out_dir: str | Path):
    """Trains one run (kernels at checkpoints when ``kernel.enabled``), logging as configured."""
    from omegaconf import OmegaConf

    from ntk_repro.loggers import build_logger
    from ntk_repro.training import train

    plain = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    kcfg = plain.get("kernel") or {}
    logger = build_logger(plain.get("logger"), run_dir=out_dir, config=plain)
    try:
        callbacks = [kernel_callback(kcfg, logger)] if kcfg.get("enabled") else []
        result = train(plain, out_dir, callbacks=callbacks)
        logger.log_table("metrics", result.metrics)
        if callbacks:
            logger.log_figures(run_figures(out_dir), step=result.step)
    finally:
        logger.finish()
    return result


def recompute(run_dir: str | Path, kcfg: Mapping[str, Any] | None = None) -> list[dict]:
    """Kernel metrics for every saved checkpoint of ``run_dir`` (no retraining).

    ``kcfg`` defaults to the run's own ``kernel`` config, so the numbers match those logged
    during training. Returns one record per checkpoint (epoch, step and the scalars).
    """
    from ntk_repro.checkpoint import iter_checkpoints, load_config
    from ntk_repro.models import kernel_model
    from ntk_repro.training import _load_data, resolve_config

    cfg = resolve_config(load_config(run_dir))
    kcfg = dict(kcfg or cfg.get("kernel") or {})
    if not kcfg:
        raise ValueError(f"kcfg: the run {str(run_dir)!r} has no kernel config; pass one")
    evalset = eval_set_for(_load_data(cfg), kcfg, int(kcfg["seed"]))
    out = []
    for ck in iter_checkpoints(run_dir):
        apply_fn, params, state = kernel_model(ck.model, _variables_of(ck))
        scalars = kernel_metrics(
            apply_fn, params, evalset, apply_kwargs=state, **_kernel_options(kcfg)
        ).scalars
        out.append({"epoch": ck.epoch, "step": ck.step, **scalars})
    return out


def _variables_of(ck) -> dict:
    variables = {"params": ck.params}
    if ck.batch_stats:
        variables["batch_stats"] = ck.batch_stats
    return variables
