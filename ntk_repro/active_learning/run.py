"""The active-learning study from its config (``conf/active_learning.yaml``): every model and
seed, every strategy from the same trained start, the C8 measurement, then the report."""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

from ntk.checks import check_choice
from ntk_repro.active_learning.claim import check_c8, measure_c8
from ntk_repro.active_learning.report import curves, paired_gain, selection_times, write
from ntk_repro.active_learning.rounds import build_setup, initial_state, run_strategy, save
from ntk_repro.active_learning.strategies import STRATEGIES

log = logging.getLogger(__name__)


def main(cfg: dict) -> dict:
    """Runs the study into ``cfg["out_dir"]`` and returns its summary."""
    t0 = time.perf_counter()
    for s in cfg["strategies"]:
        check_choice("strategies", s, STRATEGIES)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    runs, claims, c8 = [], [], {}
    for model_cfg in cfg["models"]:
        setup = build_setup(cfg, dict(model_cfg))
        per_seed = []
        for seed in cfg["seeds"]:
            run_dir = out / "runs" / f"{setup.name}_w{model_cfg['width']}" / f"seed{seed}"
            state, labelled, first = initial_state(setup, seed)
            if cfg.get("save_checkpoints", True):
                save(run_dir / "initial", 0, state, labelled)
            log.info(
                "%s seed %d: %d labels, test accuracy %.3f",
                setup.name,
                seed,
                len(labelled),
                first["test_acc"],
            )
            if cfg["claim"]["n_candidates"]:
                per_seed.append({"seed": seed, **measure_c8(setup, state, labelled, seed)})
            for strategy in cfg["strategies"]:
                records = [first, *run_strategy(setup, state, labelled, seed, strategy, run_dir)]
                runs.append(
                    {"model": setup.name, "seed": seed, "strategy": strategy, "records": records}
                )
                log.info(
                    "%s seed %d %s: test accuracy %.3f at %d labels",
                    setup.name,
                    seed,
                    strategy,
                    records[-1]["test_acc"],
                    records[-1]["n_labels"],
                )
        if per_seed:
            c8[setup.name] = per_seed
            claims += [c.as_dict() for c in check_c8(per_seed, setup.name)]
    summary = {
        "config": cfg,
        "curves": curves(runs),
        "gain_over_random": paired_gain(runs),
        "selection_times": selection_times(runs),
        "claims": claims,
        "c8_per_seed": c8,
        "runs": runs,
        "wall_seconds": time.perf_counter() - t0,
        "cores": os.cpu_count(),
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }
    write(out, summary)
    return summary
