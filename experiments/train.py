"""Train one network with Orbax checkpoints; re-running into the same run dir resumes.

    python experiments/train.py model=mlp data=digits model.width=128 trainer.epochs=5 \
        seed=0 hydra.run.dir=OUT

Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoints/<epoch> (see conf/train.yaml).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ntk.experiment import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Trains in Hydra's run dir (kernels at checkpoints when ``kernel.enabled``); returns the
    final test accuracy."""
    result = run(cfg, HydraConfig.get().runtime.output_dir)
    return result.metrics[-1]["test_acc"]


if __name__ == "__main__":
    main()
