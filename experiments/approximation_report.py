"""``ntk.approximation_report`` for a study run at its checkpoints: ``python
experiments/approximation_report.py run_dir=RUN [epochs=[0,5]] [n_per_class=N]`` writes
``RUN/approximation_report_epoch<E>.json`` (conf/approximation_report.yaml); ``-m
run_dir=A,B`` sweeps over runs."""

import hydra
from omegaconf import DictConfig, OmegaConf

from ntk_repro.analysis.approximation_runs import main as report_run


@hydra.main(version_base="1.3", config_path="../conf", config_name="approximation_report")
def main(cfg: DictConfig) -> None:
    report_run(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
