"""Adapters that turn Flax models into the kernel interface ``apply_fn(params, x) -> [batch, O]``.

The kernel is always taken with respect to the *trainable* parameters only. Everything else a
model carries (BatchNorm ``batch_stats``, NNX ``BatchStat``/``Variable`` state, RNG state) is
closed over and held fixed, and layers are run in evaluation mode where the caller says so
(``train=False`` for the models in :mod:`ntk.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

ApplyFn = Callable[[Any, jax.Array], jax.Array]

__all__ = ["from_linen", "from_nnx", "from_train_state"]


def from_linen(
    module: Any, variables: Mapping[str, Any], **apply_kwargs: Any
) -> tuple[ApplyFn, Any]:
    """Splits a Linen module and its variables into ``(apply_fn, params)``.

    Args:
      module: a ``flax.linen.Module``.
      variables: the dict returned by ``module.init``; must hold a ``"params"`` collection.
        Every other collection (e.g. ``"batch_stats"``) is held fixed.
      **apply_kwargs: extra keyword arguments for ``module.apply``, e.g. ``train=False`` so
        that BatchNorm uses its running statistics.

    Returns:
      ``(apply_fn, params)`` with ``apply_fn(params, x) = module.apply({"params": params,
      **rest}, x, **apply_kwargs)``; ``params`` is ``variables["params"]``.
    """
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(
            f"variables: expected the dict from module.init with a 'params' collection, got {keys}"
        )
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply_fn(params, x):
        return module.apply({"params": params, **rest}, x, **apply_kwargs)

    return apply_fn, variables["params"]


def from_train_state(state: Any, **apply_kwargs: Any) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` from a ``flax.training.train_state.TrainState``-like object.

    Uses ``state.apply_fn`` and ``state.params``; a ``batch_stats`` attribute, when present, is
    held fixed (pass ``train=False`` for evaluation-mode normalisation).
    """
    variables = {"params": state.params}
    batch_stats = getattr(state, "batch_stats", None)
    if batch_stats is not None:
        variables["batch_stats"] = batch_stats
    apply = state.apply_fn

    def apply_fn(params, x):
        return apply({**variables, "params": params}, x, **apply_kwargs)

    return apply_fn, state.params


def from_nnx(module: Any, **call_kwargs: Any) -> tuple[ApplyFn, Any]:
    """Splits an NNX module into ``(apply_fn, params)``.

    ``params`` is the ``nnx.Param`` state; all other state (e.g. BatchNorm running statistics)
    is held fixed. Put the module in eval mode first (``module.eval()``) if it normalises.
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply_fn(p, x):
        return nnx.merge(graphdef, p, rest)(x, **call_kwargs)

    return apply_fn, params
