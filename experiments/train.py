"""Train one network with Orbax checkpoints; re-running into the same run dir resumes.

    python experiments/train.py model=mlp data=digits model.width=128 trainer.epochs=5 \
        seed=0 hydra.run.dir=OUT

Writes OUT/config.yaml, OUT/metrics.jsonl and OUT/checkpoints/<epoch>
(see ntk_repro/conf/train.yaml).

The same as the console script `ntk-train`."""

from ntk_repro.cli import train

if __name__ == "__main__":
    train()
