"""Kernel calls as the study makes them: one built kernel function per model function and
settings, timed first and warm calls, and the kernels' dtype.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import jax
import numpy as np

from ntk.kernels import kernel_fn


@functools.lru_cache(maxsize=64)
def cached_kernel_fn(apply_fn, kind, implementation, batch_size):
    """One built kernel function per (model function, kind, settings): checkpoints of a run
    share it, and with it their compiled computations."""
    return kernel_fn(apply_fn, kind=kind, implementation=implementation, batch_size=batch_size)


def timed(fn, repeats: int = 1):
    """``(result as float64 numpy, warm seconds, first-call seconds, warm spread)``: the
    first call includes any compilation; the warm time is the median of ``repeats`` further
    calls, timed alone, and the spread is their ``(min, max)``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(max(int(repeats), 1)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        warm.append(time.perf_counter() - t0)
    return np.asarray(out, np.float64), float(np.median(warm)), first, (min(warm), max(warm))


DTYPES = {"float32": np.float32, "float64": np.float64}


def cast_tree(tree: Any, dtype: str) -> Any:
    """Floating leaves of ``tree`` as ``dtype`` (numpy; integer leaves untouched)."""
    dt = DTYPES[dtype]

    def cast(a):
        a = np.asarray(a)
        return a.astype(dt) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(cast, tree)


def precision(dtype: str):
    """The context kernels of ``dtype`` run in: float64 needs JAX's 64-bit mode (enabled
    only around the kernel calls; training stays float32)."""
    if dtype not in DTYPES:
        raise ValueError(f"kernel.dtype: unknown value {dtype!r}; valid: {sorted(DTYPES)}")
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """``‖a − ref‖ / ‖ref‖`` (Frobenius)."""
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))
