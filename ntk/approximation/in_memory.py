"""The in-memory mode: the kernels of ``Z = X ∪ X*`` in one call per kind, exact eigenvalues,
direct solves."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntk.approximation.compare import (
    diag_NO,
    nn_eig,
    nn_prediction,
    rank_note,
    rank_zeros,
    regressions,
    singular_note,
    sym_eig,
)
from ntk.approximation.cost import kernel_fn, measured
from ntk.approximation.inputs import Context
from ntk.metrics import relative_frobenius_error


def in_memory(ctx: Context) -> dict:
    """The raw numbers :func:`ntk.approximation.assemble.assemble` turns into the report."""
    n, m, o = ctx.n, ctx.m, ctx.o
    z = ctx.x
    if m:
        z = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ctx.x, ctx.x_test)
    vectors = ctx.y is not None  # eigenvectors only for the regressions
    kernels, solvers = {}, {}
    raw = {"kinds": {}, "spectra": {}, "notes": [], "cost_shape": (n + m,) * 2}
    for name in ("entk", *ctx.kinds):
        opts = ctx.options.get(name, {})
        fn = kernel_fn(ctx.apply_fn, name, opts, ctx.memory_budget)
        k, warm, nbytes, impl = measured(fn, ctx.params, z, ctx.apply_kwargs, opts, ctx.repeats)
        k = np.asarray(k, np.float64)
        kernels[name] = (k[:n, :n], k[n:, :n])
        cost = {"warm_seconds": warm, "compiled_bytes": nbytes, "implementation": impl}
        k_tt = kernels[name][0]
        zeros = rank_zeros(name, n, o, ctx.n_params, opts)
        if zeros:
            dim = n * o if name in ("entk", "diagonal") else n
            raw["notes"].append(rank_note(name, zeros, dim, ctx.n_params))
        if name == "entk":
            flat = k_tt.transpose(0, 2, 1, 3).reshape(n * o, n * o)
            eig, solvers[name] = sym_eig("entk", flat, vectors, zeros)
            raw["entk"] = {**cost, "trace": float(np.einsum("nnoo->", k_tt))}
        else:
            eig, solvers[name] = nn_eig(name, k_tt, o, vectors, zeros)
            if k_tt.ndim == 2:
                eig = np.repeat(eig, o)
            frob = relative_frobenius_error(kernels["entk"][0], k_tt)
            raw["kinds"][name] = {**cost, "relative_frobenius_error": frob, "ndim": k_tt.ndim}
        target = raw["entk"] if name == "entk" else raw["kinds"][name]
        target.update(lambda_max=float(eig[-1]), lambda_min=float(eig[0]))
        raw["spectra"][name] = eig.tolist()

    solve = partial(_predict, ctx, kernels, solvers, raw["notes"])
    raw["preds"] = regressions(ctx, solve)
    return raw


def _predict(ctx: Context, kernels: dict, solvers: dict, notes: list, name: str, r: float):
    """Predictions ``[M, O]`` of kernel ``name`` with ridge ``r`` from its solver (``kernels``:
    name -> (train ``[N, N, ...]``, test-train ``[M, N, ...]``)); a singular system is noted."""
    n, m, o = ctx.n, ctx.m, ctx.o
    k_tt, k_st = kernels[name]
    if name == "entk":
        k_st = k_st.transpose(0, 2, 1, 3).reshape(m * o, n * o)
        pred, singular = solvers[name](k_st, ctx.y.reshape(-1, 1), r)
        pred = pred.reshape(m, o)
    else:
        pred, singular = nn_prediction(solvers[name], diag_NO(k_tt), k_st, ctx.y, r)
    if singular:
        notes.append(singular_note(name, r))
    return pred
