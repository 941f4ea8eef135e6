"""Schemas of the study's configs: Hydra structured configs that type-check the YAML files.

The values live in the YAML files of the top-level ``conf/`` only; the dataclasses here carry the
keys and their types (every field ``MISSING``), so a misspelt key or a value of the wrong
type fails when Hydra composes the config, before any work. Each YAML file of a schema'd
group starts with ``defaults: [<name>_schema, _self_]``. The Python API (``train(dict)``)
takes its defaults from the same YAML files through :func:`group_defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the top-level conf/ of the checkout


@dataclass
class TrainerSchema:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    train_eval_size: int | None = MISSING
    test_eval_size: int | None = None
    loss: str = MISSING
    checkpoint_epochs: list[int] = MISSING
    checkpoint_every: int | None = MISSING
    eval_every: int = MISSING
    progress: Any = MISSING  # true | false | "auto"
    on_divergence: str = MISSING  # stop | lower_lr
    max_lr_restarts: int = MISSING


@dataclass
class _OptimizerSchema:
    name: str = MISSING
    learning_rate: float = MISSING
    schedule: str = MISSING
    warmup_epochs: int = MISSING
    weight_decay: float = MISSING


@dataclass
class SGDSchema(_OptimizerSchema):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamSchema(_OptimizerSchema):
    b1: float = MISSING
    b2: float = MISSING
    eps: float = MISSING


@dataclass
class NoLoggerSchema:
    name: str = MISSING


@dataclass
class WandbSchema:
    name: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING
    mode: str = MISSING


@dataclass
class MLPSchema:
    name: str = MISSING
    width: int = MISSING
    depth: int = MISSING
    activation: str = MISSING
    norm: str = MISSING
    parameterization: str = MISSING
    sigma_w: float = MISSING
    sigma_b: float = MISSING
    readout_sigma_w: float = MISSING
    num_outputs: int | None = MISSING  # O; null = the data's classes


@dataclass
class CNNSchema(MLPSchema):
    kernel_size: int = MISSING


@dataclass
class ResNetSchema(MLPSchema):
    stage_sizes: list[int] | None = MISSING


@dataclass
class _DataSchema:
    name: str = MISSING
    seed: int = MISSING
    classes: list[int] | None = MISSING
    n_train: int | None = MISSING
    n_test: int | None = MISSING


@dataclass
class DigitsSchema(_DataSchema):
    """scikit-learn's digits and mnist5k: a stratified split of one shipped set."""

    test_fraction: float = MISSING
    image_size: int | None = MISSING


@dataclass
class Mnist1dSchema(_DataSchema):
    """MNIST-1D: the common data keys only."""


@dataclass
class TFDSSchema(_DataSchema):
    tfds_name: str = MISSING
    data_dir: str | None = MISSING
    download: bool = MISSING


@dataclass
class SyntheticSchema(_DataSchema):
    dim: int = MISSING
    train_size: int = MISSING
    test_size: int = MISSING
    num_classes: int = MISSING
    teacher: str = MISSING


@dataclass
class KernelSchema:
    enabled: bool = MISSING
    n_per_class: int | None = MISSING  # null: the whole training set
    n_test_per_class: int = MISSING
    seed: int = MISSING
    implementation: str = MISSING
    ridges: list[float] = MISSING
    dtype: str = MISSING
    compare_float32: bool = MISSING
    timing_repeats: int = MISSING
    measure: str = MISSING
    linearize: bool = MISSING
    layer_shares: bool = MISSING
    approximations: list[str] = MISSING
    batch_size: int | None = MISSING
    save_kernels: bool = MISSING
    solve_outputs: list[int] = MISSING


@dataclass
class PathsSchema:
    results_dir: str = MISSING
    runs_dir: str = MISSING


# (group, YAML name) -> schema, stored in Hydra's ConfigStore as "<group>/<name>_schema".
SCHEMAS: dict[tuple[str, str], type] = {
    ("trainer", "default"): TrainerSchema,
    ("optimizer", "sgd"): SGDSchema,
    ("optimizer", "adam"): AdamSchema,
    ("logger", "none"): NoLoggerSchema,
    ("logger", "wandb"): WandbSchema,
    ("model", "mlp"): MLPSchema,
    ("model", "cnn"): CNNSchema,
    ("model", "resnet18"): ResNetSchema,
    ("data", "digits"): DigitsSchema,
    ("data", "mnist5k"): DigitsSchema,
    ("data", "mnist1d"): Mnist1dSchema,
    ("data", "mnist"): TFDSSchema,
    ("data", "cifar10"): TFDSSchema,
    ("data", "synthetic"): SyntheticSchema,
    ("kernel", "default"): KernelSchema,
    ("paths", "default"): PathsSchema,
}


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore (idempotent; done on ``import ntk_repro``)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=f"{name}_schema", node=node)


def group_defaults(group: str, name: str = "default") -> dict:
    """The values of ``conf/<group>/<name>.yaml``, checked against its schema, as a dict."""
    cfg = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    cfg.pop("defaults", None)
    schema = SCHEMAS.get((group, name))
    if schema is not None:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_container(cfg, resolve=False)
