"""What a kernel costs: warm time, XLA's compiled memory and the FLOP model of the
implementation that ran.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from ntk.kernels.estimates import implementation_estimates
from ntk_repro.analysis.calls import cached_kernel_fn, timed


def compiled_bytes(kfn, *args, **apply_kwargs) -> int | None:
    """Bytes the compiled kernel computation needs (temporaries and output, from XLA's own
    memory analysis of the unblocked computation), or None where the backend has none.
    Depends on shapes only: computed once per signature."""
    from ntk.kernels.model import tree_spec

    return _compiled_bytes(kfn, tree_spec((args, apply_kwargs)), args, apply_kwargs)


_BYTES: dict = {}


def _compiled_bytes(kfn, spec, args, apply_kwargs) -> int | None:
    key = (kfn, spec)
    if key not in _BYTES:
        _BYTES[key] = _memory_of(kfn, args, apply_kwargs)
    return _BYTES[key]


def _memory_of(kfn, args, apply_kwargs) -> int | None:
    try:
        mem = kfn.lower(*args, **apply_kwargs).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - memory analysis is optional per backend
        return None
    if mem is None:
        return None
    return int(mem.temp_size_in_bytes + mem.output_size_in_bytes)


def kernel_cost(apply_fn, params, x, kw, implementation, batch_size, repeats) -> dict:
    """Warm time (compile apart) and compiled memory of the eNTK and the pNTK on ``x``; the
    kernels themselves as ``_entk`` / ``_pntk``. ``repeats=0``: no warm timing, no memory
    analysis and no FLOP model (times and bytes None; the first call's time is kept)."""
    s: dict[str, Any] = {"n_cost": int(len(x))}
    for kind in ("entk", "pntk"):
        kfn = cached_kernel_fn(apply_fn, kind, implementation, batch_size)
        if repeats > 0:
            k, warm, first, (lo, hi) = timed(lambda kfn=kfn: kfn(params, x, **kw), repeats)
        else:
            t0 = time.perf_counter()
            k = np.asarray(jax.block_until_ready(kfn(params, x, **kw)), np.float64)
            warm, first, lo, hi = None, time.perf_counter() - t0, None, None
        s[f"time_{kind}_s"], s[f"time_first_{kind}_s"] = warm, first
        s[f"time_{kind}_s_min"], s[f"time_{kind}_s_max"] = lo, hi
        # XLA's memory analysis compiles the unblocked computation once more, and the FLOP
        # model retraces the model: only where the cost is the point (timed runs).
        is_timed = repeats > 0
        s[f"kernel_bytes_{kind}"] = compiled_bytes(kfn, params, x, **kw) if is_timed else None
        if is_timed:
            s[f"implementation_{kind}"], s[f"flops_{kind}"] = _flop_model(
                kfn, apply_fn, params, x, kw
            )
        s[f"_{kind}"] = k
    s["num_outputs"] = int(s["_entk"].shape[-1])
    s["backend"] = jax.default_backend()
    return s


def _flop_model(kfn, apply_fn, params, x, kw) -> tuple[str, float | None]:
    """The implementation the kernel function ran and the FLOPs the library's cost model
    (:func:`ntk.kernels.estimates.implementation_estimates`) gives it on these shapes."""
    prep = kfn.prepared(params, x, None, kw)[0]
    est = implementation_estimates(
        lambda p, a: apply_fn(p, a, **kw), params, x, None, prep.proj_KO.shape[0], prep.diag
    )
    flops = est.get(prep.implementation, (None,))[0]
    return prep.implementation, (float(flops) if flops is not None else None)
