"""Helpers the tests of the study share: the repository root, the Hydra configs and a
composed ``train`` config."""

from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def compose_cfg(overrides, config_name: str = "train"):
    """``conf/CONFIG_NAME.yaml`` composed with ``overrides`` (a list of Hydra overrides)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name, overrides=overrides)
