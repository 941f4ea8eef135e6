"""Gather runs into the report: ``python experiments/report.py runs_dir=RUNS out_dir=OUT``
writes OUT/summary.json (claims C1-C7), OUT/report.md and the figures (conf/report.yaml)."""

import hydra
from omegaconf import DictConfig

from ntk_repro.report.build import build_report, print_checks


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    out = build_report(cfg.runs_dir, cfg.out_dir, ridges=tuple(cfg.ridges))
    print(f"{len(out['summary'])} checkpoints -> {cfg.out_dir}/report.md")
    print_checks(out["checks"])


if __name__ == "__main__":
    main()
