"""Losses, learning-rate schedules and optax optimisers of the training loop, by name.

Each table maps a config name to a function; :func:`build_optimizer` turns the
``optimizer`` config group into an optax transformation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ntk.checks import lookup


def _cross_entropy(logits_BO: jax.Array, y_B: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BO, y_B)


def _mse(logits_BO: jax.Array, y_B: jax.Array) -> jax.Array:
    target_BO = jax.nn.one_hot(y_B, logits_BO.shape[-1], dtype=logits_BO.dtype)
    return 0.5 * jnp.sum((logits_BO - target_BO) ** 2, axis=-1)


# name -> per-example loss fn(logits [B, O], int labels [B]) -> [B]
LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,  # 0.5 · ||f(x) - onehot(y)||²
}

# name -> fn(peak_lr, total_steps, warmup_steps) -> optax schedule
SCHEDULES: dict[str, Callable[[float, int, int], optax.Schedule]] = {
    "constant": lambda lr, total, warmup: optax.constant_schedule(lr),
    "cosine": lambda lr, total, warmup: optax.cosine_decay_schedule(lr, max(total, 1)),
    "warmup_cosine": lambda lr, total, warmup: optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup, 1), max(total, warmup + 1)
    ),
}


def _sgd(
    learning_rate: optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """SGD (with momentum when > 0); L2 weight decay added to the gradient."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )


def _adam(
    learning_rate: optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (AdamW; plain Adam when ``weight_decay == 0``)."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


# name -> fn(learning_rate schedule, **options) -> optax transformation
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"sgd": _sgd, "adam": _adam}


def build_optimizer(
    opt_cfg: Mapping[str, Any], *, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
    """Builds the optimiser ``opt_cfg["name"]`` from :data:`OPTIMIZERS`.

    Args:
      opt_cfg: ``name``, ``learning_rate``, ``schedule`` (a key of :data:`SCHEDULES`),
        ``warmup_epochs`` and the optimiser's own options (``momentum``, ``weight_decay``...).
      steps_per_epoch, epochs: give the schedule's length.
    """
    opt_cfg = dict(opt_cfg)
    make = lookup("optimizer", opt_cfg.pop("name", None), OPTIMIZERS)
    lr = float(opt_cfg.pop("learning_rate"))
    schedule_fn = lookup("optimizer.schedule", opt_cfg.pop("schedule", "constant"), SCHEDULES)
    warmup_steps = int(round(float(opt_cfg.pop("warmup_epochs", 0)) * steps_per_epoch))
    valid = set(inspect.signature(make).parameters) - {"learning_rate"}
    unknown = sorted(set(opt_cfg) - valid)
    if unknown:
        raise ValueError(f"optimizer: unknown options {unknown}; valid: {sorted(valid)}")
    schedule = schedule_fn(lr, epochs * steps_per_epoch, warmup_steps)
    return make(schedule, **opt_cfg)
