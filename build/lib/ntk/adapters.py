"""Adapters that turn Flax and Equinox models into ``apply_fn(params, x, **state) -> [batch, O]``.

The kernel is always taken with respect to the *trainable* parameters only. Everything else a
model carries (BatchNorm ``batch_stats``, NNX ``BatchStat`` variables, Equinox state) is a
keyword argument of ``apply_fn`` that defaults to its value when the adapter was called.
Give the state of each checkpoint to one :func:`ntk.kernel_fn` as a keyword, so that kernels
at every checkpoint of a run share one compiled computation::

    apply_fn, params = ntk.from_linen(model, variables_0, train=False)
    fn = ntk.kernel_fn(apply_fn, kind="pntk")
    for variables in checkpoints:
        k = fn(variables["params"], x, batch_stats=variables["batch_stats"])

Layers must run in evaluation mode (``train=False``, ``module.eval()``,
``eqx.nn.inference_mode``) so that row n of the output depends on example n only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

ApplyFn = Callable[..., jax.Array]

__all__ = ["from_equinox", "from_linen", "from_nnx", "from_train_state"]


def from_linen(
    module: Any, variables: Mapping[str, Any], **apply_kwargs: Any
) -> tuple[ApplyFn, Any]:
    """Splits a Linen module and its variables into ``(apply_fn, params)``.

    Args:
      module: a ``flax.linen.Module``.
      variables: the dict returned by ``module.init``; must hold a ``"params"`` collection.
        Every other collection (e.g. ``"batch_stats"``) becomes a keyword of ``apply_fn``.
      **apply_kwargs: extra keyword arguments for ``module.apply``, e.g. ``train=False`` so
        that BatchNorm uses its running statistics.

    Returns:
      ``(apply_fn, params)`` with ``apply_fn(params, x, **collections) = module.apply(
      {"params": params, **collections}, x, **apply_kwargs)``, each collection defaulting
      to its value in ``variables``; other keywords (``rngs=``) go to ``module.apply``;
      ``params`` is ``variables["params"]``.
    """
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(
            f"variables: expected the dict from module.init with a 'params' collection, got {keys}"
        )
    rest = {k: v for k, v in variables.items() if k != "params"}
    return _with_collections(module.apply, rest, apply_kwargs), variables["params"]


def _with_collections(apply, defaults: dict, apply_kwargs: dict) -> ApplyFn:
    """Keywords named like a collection replace it; any other keyword (``train=``,
    ``rngs=``) goes to ``apply`` itself, over the adapter's ``apply_kwargs``."""

    def apply_fn(params, x, **kwargs):
        collections = {k: v for k, v in kwargs.items() if k in defaults}
        rest = {k: v for k, v in kwargs.items() if k not in defaults}
        return apply({"params": params, **defaults, **collections}, x, **{**apply_kwargs, **rest})

    return apply_fn


def from_train_state(state: Any, **apply_kwargs: Any) -> tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` from a ``flax.training.train_state.TrainState``-like object.

    Uses ``state.apply_fn`` and ``state.params``; a ``batch_stats`` attribute, when present,
    becomes the ``batch_stats`` keyword of ``apply_fn`` (pass ``train=False`` for
    evaluation-mode normalisation).
    """
    rest = {}
    batch_stats = getattr(state, "batch_stats", None)
    if batch_stats is not None:
        rest["batch_stats"] = batch_stats
    return _with_collections(state.apply_fn, rest, apply_kwargs), state.params


def from_equinox(model: Any, state: Any = None, *, batched: bool = False) -> tuple[ApplyFn, Any]:
    """Splits an Equinox module into ``(apply_fn, params)`` with ``eqx.partition``.

    Args:
      model: an ``eqx.Module``. Its inexact (floating) array leaves are the parameters;
        everything else is held fixed. Use ``eqx.nn.inference_mode(model)`` first if it
        holds BatchNorm or Dropout.
      state: an ``eqx.nn.State`` for stateful models (``model(x, state) -> (out, state)``),
        or None. It becomes the ``state`` keyword of ``apply_fn`` (the new state the model
        returns is discarded).
      batched: False (the Equinox convention) if ``model`` maps one example to ``[O]``; the
        adapter then vmaps it over the batch. True if it already maps ``[batch, ...]`` to
        ``[batch, O]``.

    Returns:
      ``(apply_fn, params)`` with ``apply_fn(params, x, state=state) -> [batch, O]``.
    """
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply_fn(p, x, state=state):
        m = eqx.combine(p, static)
        one = m if state is None else (lambda xi: m(xi, state)[0])
        return one(x) if batched else jax.vmap(one)(x)

    return apply_fn, params


def from_nnx(module: Any, **call_kwargs: Any) -> tuple[ApplyFn, Any]:
    """Splits an NNX module into ``(apply_fn, params)``.

    ``params`` is the ``nnx.Param`` state. ``apply_fn(params, x, state=None)`` runs the module
    with every other variable (BatchNorm statistics, RNG counts) taken from ``state``, an
    ``nnx.State`` as returned by ``nnx.split(module, nnx.Param, ...)[2]``, or held at the
    module's current values when ``state`` is None. Pass the state of each checkpoint as
    ``fn(params, x, state=state)`` to a :func:`ntk.kernel_fn` to reuse one compiled kernel.
    Put the module in eval mode first (``module.eval()``) if it normalises or drops out.
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply_fn(p, x, state=None):
        # Fresh Variable objects on every call: nnx.merge must not reuse objects created
        # outside the current trace (that breaks nnx.scan / nnx.vmap inside the model).
        fresh = jax.tree_util.tree_map(lambda a: a, rest if state is None else state)
        p = jax.tree_util.tree_map(lambda a: a, p)
        return nnx.merge(graphdef, p, fresh)(x, **call_kwargs)

    return apply_fn, params
