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

from ntk_repro import models
from ntk_repro.analysis.evalset import EvalSet, make_eval_set
from ntk_repro.analysis.layers import layer_shares
from ntk_repro.analysis.linearized import linearized_vs_network
from ntk_repro.analysis.quality import kernel_metrics, save_arrays

log = logging.getLogger(__name__)

SAVED_ARRAYS = ("eig_entk", "eig_pntk_kron_i", "y_train", "y_test", "f_train", "f_test")
KERNEL_ARRAYS = ("entk", "pntk")


def kernel_options(kcfg: Mapping[str, Any]) -> dict:
    """kernel_metrics' options from a kernel config. A config without ``dtype`` (runs made
    before the option existed) keeps the float32 kernels it was made with, so recomputing it
    reproduces its numbers; ``conf/kernel/default.yaml`` asks for float64."""
    return dict(
        ridges=tuple(float(r) for r in kcfg["ridges"]),
        implementation=kcfg["implementation"],
        approximations=tuple(kcfg.get("approximations") or ()),
        batch_size=kcfg.get("batch_size"),
        dtype=kcfg.get("dtype", "float32"),
        compare_float32=bool(kcfg.get("compare_float32", False)),
        timing_repeats=int(kcfg.get("timing_repeats", 1)),
        measure=kcfg.get("measure", "auto"),
        solve_outputs=tuple(int(o) for o in kcfg.get("solve_outputs") or ()),
    )


def kernels_at(
    model, variables, evalset: EvalSet, kcfg: Mapping[str, Any], out_dir: Path, epoch: int
) -> dict:
    """Kernel metrics for one checkpoint of ``model`` (a Linen module and its variables);
    saves spectra (and kernels if asked) as ``.npz``. Every checkpoint of a model shares one
    compiled kernel computation."""
    return _kernels_at(model, variables, evalset, kcfg, out_dir, epoch).scalars


def _kernels_at(model, variables, evalset, kcfg, out_dir, epoch):
    apply_fn, params, state = models.kernel_model(model, variables)
    res = kernel_metrics(apply_fn, params, evalset, apply_kwargs=state, **kernel_options(kcfg))
    if kcfg.get("layer_shares") and epoch == 0:
        res.scalars.update(layer_shares(apply_fn, params, evalset.x_train, state))
    keys = SAVED_ARRAYS + (KERNEL_ARRAYS if kcfg.get("save_kernels") else ())
    if epoch == 0:  # the heatmaps of the report need one kernel pair per run
        keys = keys + KERNEL_ARRAYS
    save_arrays(Path(out_dir) / "kernels" / f"epoch_{epoch:04d}.npz", res.arrays, keys)
    return res


def eval_set_for(dataset, kcfg: Mapping[str, Any], seed: int) -> EvalSet:
    npc = kcfg["n_per_class"]
    return make_eval_set(
        dataset, None if npc is None else int(npc), int(kcfg["n_test_per_class"]), seed
    )


class Linearizer:
    """``kernel.linearize``: the trained network against its linearisation at init.

    Keeps the init kernels (the first checkpoint, epoch 0) and, at every checkpoint, compares
    the network's test outputs with the linearised network after the same number of
    gradient-descent steps (:func:`ntk_repro.analysis.linearized_vs_network`). Only plain
    full-batch gradient descent on the MSE loss over exactly the kernel points has a
    linearisation of that form; for other set-ups (e.g. a preset shrunk by ``debug=smoke``)
    the comparison is skipped with a warning and the reason is stored as
    ``linearize_skipped``.
    """

    def __init__(self, cfg: Mapping[str, Any], evalset: EvalSet):
        opt, trainer = cfg["optimizer"], cfg["trainer"]
        n = len(evalset.y_train)
        problems = []
        if trainer.get("loss") != "mse":
            problems.append(f"trainer.loss={trainer.get('loss')!r} (needs mse)")
        if opt.get("name") != "sgd" or opt.get("momentum") or opt.get("weight_decay"):
            problems.append("optimizer: needs sgd with momentum 0 and weight_decay 0")
        if opt.get("schedule") != "constant":
            problems.append(f"optimizer.schedule={opt.get('schedule')!r} (needs constant)")
        if int(trainer["batch_size"]) < n or cfg["kernel"].get("n_per_class") is not None:
            problems.append(
                "full batch on the kernel points: kernel.n_per_class=null and "
                f"trainer.batch_size >= n_train ({n})"
            )
        self.skipped = "; ".join(problems) if problems else None
        if self.skipped:
            log.warning("kernel.linearize: no linearised comparison: %s", self.skipped)
        self.lr = float(opt["learning_rate"])
        self.init: dict | None = None

    def __call__(self, epoch: int, step: int, arrays: Mapping[str, Any], y_test) -> dict:
        if self.skipped:
            return {"linearize_skipped": self.skipped}
        if epoch == 0:
            self.init = dict(arrays)
        if self.init is None:
            return {}
        return linearized_vs_network(self.init, arrays["f_test"], y_test, lr=self.lr, steps=step)


def kernel_callback(kcfg: Mapping[str, Any], logger):
    """A training callback: kernel metrics at each checkpoint, merged into its record."""
    cache: dict = {}

    def callback(event) -> dict:
        if "evalset" not in cache:
            cache["evalset"] = eval_set_for(event.dataset, kcfg, int(kcfg["seed"]))
            if kcfg.get("linearize"):
                cache["lin"] = Linearizer(event.cfg, cache["evalset"])
        variables = models.variables(event.params, event.state.batch_stats)
        res = _kernels_at(
            event.model, variables, cache["evalset"], kcfg, event.out_dir, event.epoch
        )
        scalars = dict(res.scalars)
        if "lin" in cache:
            scalars.update(
                cache["lin"](event.epoch, event.step, res.arrays, cache["evalset"].y_test)
            )
        logger.log(scalars, step=event.step)  # the epoch's own metrics went out live
        if "relative_frobenius_error" in scalars:
            log.info(
                "epoch %d kernels: rel. Frobenius %.4f, λmax err %.4f, λmin err %.4f",
                event.epoch,
                scalars["relative_frobenius_error"],
                scalars["lambda_max_rel_error"],
                scalars["lambda_min_rel_error"],
            )
        else:
            log.info(
                "epoch %d kernel cost: eNTK %.4g s, pNTK %.4g s (warm)",
                event.epoch,
                scalars["time_entk_s"],
                scalars["time_pntk_s"],
            )
        return scalars

    return callback


def run_figures(run_dir: str | Path) -> dict[str, str]:
    """Spectrum overlays (first and last checkpoint) and the init heatmap of one run."""
    import numpy as np

    from ntk_repro.report import figures as plotting

    files = sorted((Path(run_dir) / "kernels").glob("epoch_*.npz"))
    if not files:
        return {}
    panels, figs = [], {}
    for f in sorted({files[0], files[-1]}):
        with np.load(f, allow_pickle=False) as z:
            if "eig_entk" in z:  # not in cost-only runs
                panels.append((f.stem, z["eig_entk"], z["eig_pntk_kron_i"]))
    if panels:
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
    from ntk_repro.train.loop import train

    plain = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    kcfg = plain.get("kernel") or {}
    logger = build_logger(plain.get("logger"), run_dir=out_dir, config=plain)
    try:
        callbacks = [kernel_callback(kcfg, logger)] if kcfg.get("enabled") else []
        result = train(
            plain,
            out_dir,
            callbacks=callbacks,
            on_epoch=lambda record: logger.log(record, step=record["step"]),
        )
        logger.log_table("metrics", result.metrics)
        if callbacks:
            logger.log_figures(run_figures(out_dir), step=result.step)
    finally:
        logger.finish()
    return result


RECOMPUTED = "recomputed"


def recompute(run_dir: str | Path, kcfg: Mapping[str, Any] | None = None) -> list[dict]:
    """Kernel metrics for every saved checkpoint of ``run_dir`` (no retraining), through the
    path training takes at a checkpoint (:func:`kernels_at`: the same metrics, the layer
    diagnosis at epoch 0 and the saved arrays, here under ``run_dir/recomputed/kernels/``).

    ``kcfg`` defaults to the run's own ``kernel`` config, so the numbers match those logged
    during training. Returns one record per checkpoint (epoch, step and the scalars).
    """
    from ntk_repro.train.checkpoint import iter_checkpoints, load_config
    from ntk_repro.train.loop import load_data, resolve_config

    cfg = resolve_config(load_config(run_dir))
    kcfg = dict(kcfg or cfg.get("kernel") or {})
    if not kcfg:
        raise ValueError(f"kcfg: the run {str(run_dir)!r} has no kernel config; pass one")
    evalset = eval_set_for(load_data(cfg), kcfg, int(kcfg["seed"]))
    lin = Linearizer({**cfg, "kernel": kcfg}, evalset) if kcfg.get("linearize") else None
    out_dir = Path(run_dir) / RECOMPUTED
    out = []
    for ck in iter_checkpoints(run_dir):
        variables = models.variables(ck.params, ck.batch_stats)
        res = _kernels_at(ck.model, variables, evalset, kcfg, out_dir, ck.epoch)
        scalars = dict(res.scalars)
        if lin is not None:
            scalars.update(lin(ck.epoch, ck.step, res.arrays, evalset.y_test))
        out.append({"epoch": ck.epoch, "step": ck.step, **scalars})
    return out


def recompute_to_file(run_dir: str | Path) -> tuple[Path, list[dict]]:
    """:func:`recompute` with the run's own kernel config -> ``run_dir/recomputed.jsonl``
    (written atomically)."""
    import json

    from ntk import atomic

    records = recompute(run_dir)
    out = Path(run_dir) / f"{RECOMPUTED}.jsonl"
    atomic.write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return out, records
