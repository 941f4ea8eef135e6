"""The cost of each kernel: its cached :class:`~ntk.kernels.api.KernelFn`, the warm time of a
call and XLA's compiled memory."""

from __future__ import annotations

import time

import jax
import numpy as np

from ntk.kernels.api import KernelFn
from ntk.kernels.model import LIFETIMES, tree_spec
from ntk.kernels.preparation import options_token

# the key of this package's cache on the model's lifetime (compiled functions, bytes)
CACHE = "ntk.approximation"


def kernel_fn(apply_fn, kind: str, options: dict, memory_budget) -> KernelFn:
    """One :class:`KernelFn` per (callable, kind, option shapes, budget), held as long as
    ``apply_fn`` lives: a second report on the same model compiles nothing."""
    store = LIFETIMES.of(apply_fn).setdefault(CACHE, {})
    key = ("kernel", kind, options_token(options), memory_budget)
    if key not in store:
        store[key] = KernelFn(apply_fn, kind, "auto", None, options, memory_budget, weak=True)
    return store[key]


def _compiled_bytes(fn: KernelFn, params, x, apply_kwargs) -> int | None:
    """XLA's temporaries + output of the unblocked computation; once per shapes."""
    store = LIFETIMES.of(fn.apply_fn).setdefault(CACHE, {})
    key = ("bytes", id(fn), tree_spec((params, x, apply_kwargs)))
    if key not in store:
        try:
            mem = fn.lower(params, x, **apply_kwargs).compile().memory_analysis()
            store[key] = (
                None if mem is None else int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
            )
        except Exception:  # noqa: BLE001 - memory analysis is optional per backend
            store[key] = None
    return store[key]


def measured(fn: KernelFn, params, x, apply_kwargs, options, repeats: int):
    """``(kernel as float64 numpy, warm seconds (median), compiled bytes, implementation)``
    of ``fn`` on ``x`` (x2 = x); the first call compiles and is not timed."""
    prep, _, _ = fn.prepared(params, x, None, apply_kwargs, options)
    out = jax.block_until_ready(fn.call(params, x, None, apply_kwargs, options))
    warm = []
    for _ in range(max(int(repeats), 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn.call(params, x, None, apply_kwargs, options))
        warm.append(time.perf_counter() - t0)
    nbytes = _compiled_bytes(fn, params, x, apply_kwargs)
    return out, float(np.median(warm)), nbytes, prep.implementation
