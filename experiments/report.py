"""Report entry point: ``python experiments/report.py runs_dir=results/runs out_dir=results``."""

import hydra
from omegaconf import DictConfig

from ntk.report import build_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    out = build_report(cfg.runs_dir, cfg.out_dir, ridges=tuple(cfg.ridges))
    print(f"{len(out['summary'])} checkpoints -> {cfg.out_dir}/report.md")
    for c in out["checks"]:
        print(
            f"[{'n/a' if c['agrees'] is None else 'ok ' if c['agrees'] else 'NO '}] "
            f"{c['trend']}: {c['measured']}"
        )


if __name__ == "__main__":
    main()
