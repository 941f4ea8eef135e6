"""Argument checks shared by the library and the code built on it (public: the study uses
them): registry choices, and the parameters, inputs and batch sizes of kernel calls.

Example:
  >>> from ntk.checks import check_choice
  >>> check_choice("optimizer", "adam", {"sgd": None, "adam": None})
  >>> check_choice("optimizer", "lion", ("sgd", "adam"))
  Traceback (most recent call last):
  ...
  ValueError: optimizer: unknown value 'lion'; valid: ['adam', 'sgd']
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_choice", "lookup"]


def check_choice(name: str, value: Any, registry: Collection) -> None:
    """Raises ``ValueError("NAME: unknown value VALUE; valid: [sorted choices]")`` unless
    ``value`` is one of ``registry`` (a dict of named entries, a tuple or set of names)."""
    if value not in registry:
        raise ValueError(f"{name}: unknown value {value!r}; valid: {sorted(registry)}")


def lookup(name: str, value: Any, registry: Mapping) -> Any:
    """``registry[value]`` after :func:`check_choice` (the registry pattern: names to entries)."""
    check_choice(name, value, registry)
    return registry[value]


def is_traced(x: Any) -> bool:
    """True when ``x`` is an abstract value inside a JAX transformation (no concrete data)."""
    return isinstance(x, jax.core.Tracer)


def _path_str(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


@jax.jit
def _all_finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def check_params(params: Any) -> None:
    """Params must be a non-empty pytree of floating arrays, all finite.

    Integer or boolean leaves raise a ``TypeError``: a kernel with respect to an integer has
    no meaning, and such leaves usually mean a whole train state or a non-trainable
    collection was passed. Use the adapters in :mod:`ntk.adapters` to split them off.
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params: the pytree has no array leaves; nothing to differentiate")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            leaf = np.asarray(leaf)
            dtype = leaf.dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params{_path_str(path)}: leaf has dtype {dtype} with shape "
                f"{tuple(np.shape(leaf))}; the kernel is taken with respect to floating "
                "parameters only. Remove integer/boolean leaves (e.g. pass state.params, "
                "not the whole train state; see ntk.adapters)."
            )
    concrete = [(path, leaf) for path, leaf in leaves if not is_traced(leaf)]
    if concrete and not bool(_all_finite([leaf for _, leaf in concrete])):
        for path, leaf in concrete:
            if not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(
                    f"params{_path_str(path)}: contains NaN or Inf (shape {tuple(leaf.shape)})"
                )


def describe(x: Any) -> str:
    """Shapes of an input pytree, for error messages."""
    leaves = jax.tree_util.tree_leaves_with_path(x)
    if len(leaves) == 1 and not leaves[0][0]:
        return f"shape {tuple(np.shape(leaves[0][1]))}"
    return ", ".join(f"{_path_str(p)}: {tuple(np.shape(a))}" for p, a in leaves)


def _check_one_input(name: str, x: Any) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(x)
    if not leaves:
        raise ValueError(f"{name}: expected an array [batch, ...] or a pytree of them, got {x!r}")
    sizes = set()
    for path, leaf in leaves:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not hasattr(leaf, "shape") or len(leaf.shape) < 1:
            raise ValueError(
                f"{where}: expected an array [batch, ...], got {type(leaf).__name__} "
                f"with shape {getattr(leaf, 'shape', None)}"
            )
        if leaf.shape[0] == 0:
            raise ValueError(f"{where}: empty batch, shape {tuple(leaf.shape)}")
        sizes.add(int(leaf.shape[0]))
        if not is_traced(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            if not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(f"{where}: contains NaN or Inf (shape {tuple(leaf.shape)})")
    if len(sizes) > 1:
        raise ValueError(f"{name}: leaves must share the leading batch axis; got {describe(x)}")
    return sizes.pop()


def check_inputs(x1: Any, x2: Any) -> None:
    """x1 (and x2 when given): non-empty arrays, or pytrees of arrays sharing the leading
    batch axis, with matching per-example structure and shapes."""
    _check_one_input("x1", x1)
    if x2 is None:
        return
    _check_one_input("x2", x2)
    l1, t1 = jax.tree_util.tree_flatten(x1)
    l2, t2 = jax.tree_util.tree_flatten(x2)
    same = t1 == t2 and all(
        tuple(a.shape[1:]) == tuple(b.shape[1:]) for a, b in zip(l1, l2, strict=True)
    )
    if not same:
        raise ValueError(
            f"x1 and x2: per-example shapes differ: x1 {describe(x1)} vs x2 {describe(x2)} "
            "(only the batch dimension may differ)"
        )


def check_optional_count(name: str, value: Any) -> None:
    """Raises unless ``value`` is None or a positive int; the error names ``name``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected a positive int or None, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def check_batch_size(batch_size: Any) -> None:
    check_optional_count("batch_size", batch_size)
