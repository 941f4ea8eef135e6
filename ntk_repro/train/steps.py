"""Train state and the jitted steps of the training loop: one optimiser step, one masked
evaluation batch, the once-per-epoch summary (mean loss and the divergence check) and the
deterministic batch order of each epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ntk.checks import lookup
from ntk_repro.models import init_model, variables
from ntk_repro.train.optim import LOSSES


@struct.dataclass
class TrainState:
    """Everything the jitted step updates. ``batch_stats`` is ``{}`` without BatchNorm."""

    params: Any
    batch_stats: Any
    opt_state: Any


def create_state(
    model: nn.Module, key: jax.Array, input_shape: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """Initialises params (and batch_stats) for inputs ``[N, *input_shape]`` and the optimiser."""
    variables = init_model(model, key, input_shape)
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params))


def model_variables(state: TrainState, params: Any) -> dict:
    """The Linen variables of ``state`` with ``params`` in place of its own."""
    return variables(params, state.batch_stats)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss: str) -> Callable:
    """Jitted ``train_step(state, x_BX, y_B) -> (state, {"loss", "acc"})`` (train mode;
    BatchNorm statistics are updated from the batch)."""
    loss_fn = lookup("trainer.loss", loss, LOSSES)

    def train_step(state: TrainState, x_BX: jax.Array, y_B: jax.Array):
        def objective(params):
            variables = model_variables(state, params)
            if state.batch_stats:
                logits_BO, updates = model.apply(
                    variables, x_BX, train=True, mutable=["batch_stats"]
                )
                batch_stats = updates["batch_stats"]
            else:
                logits_BO = model.apply(variables, x_BX, train=True)
                batch_stats = state.batch_stats
            return jnp.mean(loss_fn(logits_BO, y_B)), (logits_BO, batch_stats)

        (loss_value, (logits_BO, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = jnp.mean((jnp.argmax(logits_BO, axis=-1) == y_B).astype(jnp.float32))
        return TrainState(params, batch_stats, opt_state), {"loss": loss_value, "acc": acc}

    return jax.jit(train_step)


def make_eval_step(model: nn.Module, loss: str) -> Callable:
    """Jitted ``eval_step(state, x_BX, y_B, mask_B) -> {"loss_sum", "correct"}`` in eval mode;
    rows with ``mask_B == 0`` (padding) are ignored."""
    loss_fn = lookup("trainer.loss", loss, LOSSES)

    def eval_step(state: TrainState, x_BX: jax.Array, y_B: jax.Array, mask_B: jax.Array):
        logits_BO = model.apply(model_variables(state, state.params), x_BX, train=False)
        correct_B = (jnp.argmax(logits_BO, axis=-1) == y_B).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss_fn(logits_BO, y_B) * mask_B),
            "correct": jnp.sum(correct_B * mask_B),
        }

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable, state: TrainState, x_NX: np.ndarray, y_N: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Mean loss and accuracy over ``x_NX`` in fixed-size (zero-padded) batches."""
    n = len(y_N)
    batch_size = min(batch_size, n)
    loss_sum, correct = 0.0, 0.0
    for start in range(0, n, batch_size):
        x_BX, y_B = x_NX[start : start + batch_size], y_N[start : start + batch_size]
        mask_B = np.ones(batch_size, np.float32)
        pad = batch_size - len(y_B)
        if pad:
            x_BX = np.concatenate([x_BX, np.zeros((pad, *x_BX.shape[1:]), x_BX.dtype)])
            y_B = np.concatenate([y_B, np.zeros(pad, y_B.dtype)])
            mask_B[batch_size - pad :] = 0.0
        out = eval_step(state, x_BX, y_B, mask_B)
        loss_sum += float(out["loss_sum"])
        correct += float(out["correct"])
    return {"loss": loss_sum / n, "acc": correct / n}


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: every element of every array leaf of ``tree`` is finite (True for an
    empty tree; integer leaves are always finite)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@jax.jit
def epoch_summary(step_metrics: Sequence[dict], state: TrainState) -> dict[str, jax.Array]:
    """One epoch's step metrics (``train_step``'s ``{"loss", "acc"}``, kept on device) and
    its final state, reduced to scalars to fetch in one transfer: mean ``loss`` and ``acc``,
    ``first_nonfinite`` (the index of the first step whose loss is not finite, -1 if none)
    and ``state_finite`` (params, batch_stats and optimiser state all finite)."""
    loss_S = jnp.stack([m["loss"] for m in step_metrics])
    bad_S = ~jnp.isfinite(loss_S)
    return {
        "loss": jnp.mean(loss_S),
        "acc": jnp.mean(jnp.stack([m["acc"] for m in step_metrics])),
        "first_nonfinite": jnp.where(jnp.any(bad_S), jnp.argmax(bad_S), -1),
        "state_finite": all_finite(state),
    }


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``[n // batch_size, batch_size]`` example indices of epoch ``epoch`` (last partial batch
    dropped), a deterministic function of ``(seed, epoch)``."""
    perm_N = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // batch_size
    return perm_N[: steps * batch_size].reshape(steps, batch_size)
