"""Schemas of the study's configs: Hydra structured configs that type-check the YAML files.

The values live in the YAML files of ``ntk_repro/conf`` only; the dataclasses here carry the
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

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class TrainerSchema:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    train_eval_size: int | None = MISSING
    loss: str = MISSING
    checkpoint_epochs: list[int] = MISSING
    checkpoint_every: int | None = MISSING
    eval_every: int = MISSING
    progress: Any = MISSING  # true | false | "auto"


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


# (group, YAML name) -> schema, stored in Hydra's ConfigStore as "<group>/<name>_schema".
SCHEMAS: dict[tuple[str, str], type] = {
    ("trainer", "default"): TrainerSchema,
    ("optimizer", "sgd"): SGDSchema,
    ("optimizer", "adam"): AdamSchema,
    ("logger", "none"): NoLoggerSchema,
    ("logger", "wandb"): WandbSchema,
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
