"""Command-line entry points of the study (console scripts ``ntk-train``, ``ntk-report``,
``ntk-recompute``, ``ntk-bench``, ``ntk-approximation-report``; ``experiments/*.py`` call
the same functions).

Each is a Hydra application over the configs in ``ntk_repro/conf``, so every override and
sweep of the README works the same way from a checkout or an installed package.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

_CONF = dict(version_base="1.3", config_path="conf")


@hydra.main(config_name="train", **_CONF)
def train(cfg: DictConfig) -> float:
    """Trains in Hydra's run dir (kernels at checkpoints when ``kernel.enabled``); returns the
    final test accuracy (the value a Hydra sweeper would optimise)."""
    from hydra.core.hydra_config import HydraConfig

    from ntk_repro.experiment import run

    result = run(cfg, HydraConfig.get().runtime.output_dir)
    return result.metrics[-1]["test_acc"]


@hydra.main(config_name="report", **_CONF)
def report(cfg: DictConfig) -> None:
    """``runs_dir`` -> ``out_dir``: summary.json, report.md and the figures."""
    from ntk_repro.report import build_report

    out = build_report(cfg.runs_dir, cfg.out_dir, ridges=tuple(cfg.ridges))
    print(f"{len(out['summary'])} checkpoints -> {cfg.out_dir}/report.md")
    for c in out["checks"]:
        verdict = "n/a" if c["agrees"] is None else "ok " if c["agrees"] else "NO "
        print(f"[{verdict}] {c['trend']}: {c['measured']}")


@hydra.main(config_name="recompute", **_CONF)
def recompute(cfg: DictConfig) -> None:
    """Kernel metrics of every saved checkpoint of ``run_dir`` -> ``run_dir/recomputed.jsonl``."""
    from ntk import atomic
    from ntk_repro.experiment import recompute as recompute_run

    records = recompute_run(cfg.run_dir)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic.write_text(Path(cfg.run_dir) / "recomputed.jsonl", text)
    print(f"{len(records)} checkpoints -> {cfg.run_dir}/recomputed.jsonl")


@hydra.main(config_name="bench", **_CONF)
def bench(cfg: DictConfig) -> None:
    """The benchmark suite: JSON, a Markdown table and plots in ``out_dir``."""
    from ntk_repro.bench import markdown, run_suite

    result = run_suite(cfg.out_dir, quick=cfg.quick, repeats=cfg.repeats, timeout=cfg.timeout_s)
    print(markdown(result))


@hydra.main(config_name="approximation_report", **_CONF)
def approximation_report(cfg: DictConfig) -> None:
    """``ntk.approximation_report`` at the saved checkpoints of ``run_dir`` ->
    ``run_dir/approximation_report_epoch<E>.json`` (and the tables, printed)."""
    from omegaconf import OmegaConf

    from ntk_repro.approximation_cli import main

    main(OmegaConf.to_container(cfg, resolve=True))
