"""What a kernel costs: warm time, XLA's compiled memory, the bytes of the kernel arrays and
the FLOP model of the implementation that ran; and what the kernel-regression solve costs with
the eNTK (an NO×NO system) and with the pNTK (N×N) as O grows.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from ntk.kernels.estimates import implementation_estimates
from ntk.regression import kernel_regression
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
        raw: list = []  # the kernel array as computed, before any cast for the analysis

        def call(kfn=kfn, raw=raw):
            out = kfn(params, x, **kw)
            raw[:] = [out]
            return out

        if repeats > 0:
            k, warm, first, (lo, hi) = timed(call, repeats)
        else:
            t0 = time.perf_counter()
            k = np.asarray(jax.block_until_ready(call()), np.float64)
            warm, first, lo, hi = None, time.perf_counter() - t0, None, None
        # the stored size: the kernel array's own bytes (nbytes, in the dtype it came back in)
        s[f"array_bytes_{kind}"] = int(raw[0].nbytes)
        s[f"array_dtype_{kind}"] = str(raw[0].dtype)
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


# The ridge of the timed solves (relative to mean diag K): the solve's cost does not depend
# on it; a ridge keeps float32-computed kernels off the singular-system path.
SOLVE_RIDGE = 1e-4


def solve_cost(entk_NNOO: np.ndarray, outputs, repeats: int) -> dict:
    """Warm time of :func:`ntk.kernel_regression`'s solve with the eNTK (an NO'×NO' system,
    targets flattened) and with the pNTK (N×N, all O' outputs at once), for each O' in
    ``outputs`` (each ≤ O), at this kernel's N.

    The eNTK of the first O' outputs is the leading O'×O' block of every N×N entry of the
    eNTK (the model whose readout keeps its first O' rows), and its pNTK is (1/O') times the
    sum of that block (the pNTK identity), so one kernel gives the whole O' sweep at fixed N.
    ``repeats`` timed calls per kernel and O' (numpy: nothing to compile, no warm-up; the
    report takes the fastest). Returns ``solve_times_entk_s@O=o`` and
    ``solve_times_pntk_s@O=o`` (every repeat, seconds) and ``solve_n`` (N).
    """
    n, _, o, _ = entk_NNOO.shape
    rng = np.random.default_rng(0)
    out: dict = {"solve_n": int(n)}
    for o2 in sorted({int(v) for v in outputs}):
        if not 1 <= o2 <= o:
            raise ValueError(f"kernel.solve_outputs: {o2} is not in 1..O = {o}")
        k_e = np.ascontiguousarray(entk_NNOO[:, :, :o2, :o2], np.float64)
        k_p = k_e.sum(axis=(2, 3)) / o2
        y = rng.normal(size=(n, o2))
        for kind, k in (("entk", k_e), ("pntk", k_p)):
            times = []
            for _ in range(max(int(repeats), 1)):
                t0 = time.perf_counter()
                kernel_regression(k, k[:1], y, ridge=SOLVE_RIDGE)
                times.append(time.perf_counter() - t0)
            out[f"solve_times_{kind}_s@O={o2}"] = times
    return out


def _flop_model(kfn, apply_fn, params, x, kw) -> tuple[str, float | None]:
    """The implementation the kernel function ran and the FLOPs the library's cost model
    (:func:`ntk.kernels.estimates.implementation_estimates`) gives it on these shapes."""
    prep = kfn.prepared(params, x, None, kw)[0]
    est = implementation_estimates(
        lambda p, a: apply_fn(p, a, **kw), params, x, None, prep.proj_KO.shape[0], prep.diag
    )
    flops = est.get(prep.implementation, (None,))[0]
    return prep.implementation, (float(flops) if flops is not None else None)
