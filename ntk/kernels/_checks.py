"""Input validation at the public boundary: clear errors that name the argument and the shapes."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


def check_inputs(x1: Any, x2: Any) -> None:
    """x1 (and x2 when given) are non-empty arrays with matching per-example shapes."""
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not hasattr(x, "shape") or len(x.shape) < 1:
            raise ValueError(
                f"{name}: expected an array [batch, ...], got {type(x).__name__} "
                f"with shape {getattr(x, 'shape', None)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name}: empty batch, shape {tuple(x.shape)}")
        if not is_traced(x) and jnp.issubdtype(x.dtype, jnp.inexact):
            if not bool(jnp.all(jnp.isfinite(x))):
                raise ValueError(f"{name}: contains NaN or Inf (shape {tuple(x.shape)})")
    if x2 is not None and tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise ValueError(
            f"x1 and x2: per-example shapes differ: x1 {tuple(x1.shape)} vs x2 "
            f"{tuple(x2.shape)} (only the batch dimension may differ)"
        )


def _spec(tree: Any):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves)


@functools.lru_cache(maxsize=256)
def _output_shape(apply_fn, params_spec, x_spec):
    treedef, leaves = params_spec
    params = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    x = jax.ShapeDtypeStruct(*x_spec)
    return jax.eval_shape(apply_fn, params, x)


def output_dim(apply_fn, params: Any, x: Any) -> int:
    """Checks ``apply_fn(params, x) -> [batch, O]`` (shapes only, no FLOPs) and returns O."""
    return output_spec(apply_fn, params, x)[0]


def output_spec(apply_fn, params: Any, x: Any) -> tuple[int, Any]:
    """Checks ``apply_fn(params, x) -> [batch, O]`` (shapes only, cached) -> ``(O, dtype)``."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    x_spec = (tuple(x.shape), str(x.dtype))
    try:
        out = _output_shape(apply_fn, _spec(params), x_spec)
    except TypeError:  # unhashable apply_fn (e.g. a functools.partial of an array)
        out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(
            f"apply_fn: must return an array [batch, O]; on x of shape {tuple(x.shape)} it "
            f"returned {shape if shape is not None else type(out).__name__}. Wrap it so that "
            "it returns one row of outputs per example."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"apply_fn: output dtype must be floating, got {out.dtype}")
    if shape[1] == 0:
        raise ValueError(f"apply_fn: output has O=0 logits (shape {shape})")
    return int(shape[1]), out.dtype


def check_choice(name: str, value: Any, registry) -> None:
    if value not in registry:
        raise ValueError(f"{name}: unknown value {value!r}; valid: {sorted(registry)}")


def check_batch_size(batch_size: Any) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive int or None, got {batch_size}")
