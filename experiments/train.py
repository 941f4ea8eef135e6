"""Train one network with Orbax checkpoints; re-running into the same run dir resumes.

    python experiments/train.py model=mlp data=digits model.width=128 trainer.epochs=5 \
        seed=0 hydra.run.dir=OUT

Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoints/<epoch> (configs: conf/train.yaml);
with ``kernel.enabled`` also the kernel metrics at every checkpoint. Returns the final test
accuracy, the value a Hydra sweeper would optimise (nan for a run whose initialisation is not
finite: it stops at epoch 0 with no record; OUT/status.json says why).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ntk_repro.experiment import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = run(cfg, HydraConfig.get().runtime.output_dir).metrics
    return metrics[-1]["test_acc"] if metrics else float("nan")


if __name__ == "__main__":
    main()
