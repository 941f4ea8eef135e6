"""Recompute kernel metrics from saved checkpoints: ``python experiments/recompute.py
run_dir=RUN`` writes ``RUN/recomputed.jsonl``."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ntk.checkpoint import atomic_write_text
from ntk.experiment import recompute


@hydra.main(version_base="1.3", config_path="../conf", config_name="recompute")
def main(cfg: DictConfig) -> None:
    records = recompute(cfg.run_dir)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_text(Path(cfg.run_dir) / "recomputed.jsonl", text)
    print(f"{len(records)} checkpoints -> {cfg.run_dir}/recomputed.jsonl")


if __name__ == "__main__":
    main()
