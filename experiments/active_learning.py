"""Look-ahead active learning on mnist5k: ``python experiments/active_learning.py`` (``make
active-learning``) writes ``results/active_learning/`` (report.md, summary.json, the figure;
conf/active_learning.yaml)."""

import hydra
from omegaconf import DictConfig, OmegaConf

from ntk_repro.active_learning.run import main as run_study


@hydra.main(version_base="1.3", config_path="../conf", config_name="active_learning")
def main(cfg: DictConfig) -> None:
    run_study(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
