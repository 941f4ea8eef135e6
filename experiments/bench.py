"""Benchmark entry point: ``python experiments/bench.py [quick=true] [out_dir=DIR]``."""

import hydra
from omegaconf import DictConfig

from ntk.bench import markdown, run_suite


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    result = run_suite(cfg.out_dir, quick=cfg.quick, repeats=cfg.repeats, timeout=cfg.timeout_s)
    print(markdown(result))


if __name__ == "__main__":
    main()
