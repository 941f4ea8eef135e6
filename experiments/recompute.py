"""Recompute kernel metrics from saved checkpoints: ``python experiments/recompute.py
run_dir=RUN`` writes ``RUN/recomputed.jsonl`` (conf/recompute.yaml), through the same
kernels-at-checkpoint path as training."""

import hydra
from omegaconf import DictConfig

from ntk_repro.experiment import recompute_to_file


@hydra.main(version_base="1.3", config_path="../conf", config_name="recompute")
def main(cfg: DictConfig) -> None:
    out, records = recompute_to_file(cfg.run_dir)
    print(f"{len(records)} checkpoints -> {out}")


if __name__ == "__main__":
    main()
