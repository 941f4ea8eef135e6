"""The stored mode: block by block, resumable. Its phases, in order, each saved under
``DIR/phases/`` by :func:`ntk.approximation.resume.phase`:

1. the kernels into stores (:func:`ntk.approximation.stores.store_kernels`);
2. each kernel's cost on one block (:func:`cost`);
3. the Frobenius terms over the blocks (:func:`frobenius`);
4. per kernel, its spectrum (:func:`ntk.approximation.stored_solve.spectrum`) and its
   regressions (:func:`ntk.approximation.stored_solve.regression`); then its dense copy and
   factors are dropped.

The phases of step 4 share a :class:`ntk.approximation.stored_solve.StoredState`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ntk.approximation.compare import embed, psd_extremes, rank_note
from ntk.approximation.cost import kernel_fn, measured
from ntk.approximation.inputs import Context
from ntk.approximation.result import ridge_key
from ntk.approximation.resume import check_meta, phase, report_meta
from ntk.approximation.stored_solve import StoredState, regression, spectrum
from ntk.approximation.stores import store_kernels
from ntk.kernels.model import take
from ntk.scale.blocks import progress_bar


def stored(ctx: Context, root: Path, settings: dict, y_te, progress: bool, callback) -> dict:
    """The raw numbers :func:`ntk.approximation.assemble.assemble` turns into the report,
    computed under ``root`` (``settings``: ``block_size``, ``lanczos_tol``, ``cg_tol``,
    ``cg_maxiter``)."""
    check_meta(root, report_meta(ctx, y_te, settings))
    train, test = store_kernels(ctx, root, settings["block_size"], progress, callback)
    b = min(settings["block_size"], ctx.n)
    names = ("entk", *ctx.kinds)
    costs = {
        name: phase(root, f"cost_{name}", lambda name=name: cost(ctx, name, train[name], b))
        for name in names
    }
    frob = phase(root, "frobenius", lambda: frobenius(train, ctx.kinds, ctx.o, progress, callback))
    raw = {"kinds": {}, "spectra": {}, "notes": [], "cost_shape": (b, b)}
    raw["entk"] = {**costs["entk"], "trace": frob["trace"]}
    for name in ctx.kinds:
        rel = math.sqrt(frob["diff2"][name] / frob["norm2"])
        raw["kinds"][name] = {
            **costs[name],
            "relative_frobenius_error": rel,
            "ndim": train[name].ndim,
        }
    state = StoredState(ctx, root, settings, progress, callback, train, test, frob["trace"])
    for name in names:
        if state.zeros[name]:
            dim = ctx.n * ctx.o if train[name].ndim != 2 else ctx.n
            raw["notes"].append(rank_note(name, state.zeros[name], dim, ctx.n_params))
    raw["preds"] = {}
    for name in names:  # one kernel at a time: its dense copies and factors are then dropped
        _spectrum_and_regressions(state, name, raw)
        state.release(name)
    return raw


def _spectrum_and_regressions(state: StoredState, name: str, raw: dict) -> None:
    """Kernel ``name``'s spectrum and regressions (saved phases) into ``raw``, notes included."""
    ctx = state.ctx
    s = phase(state.root, f"spectrum_{name}", lambda: spectrum(state, name))
    if s["note"]:
        raw["notes"].append(s["note"])
    dim = ctx.n * ctx.o if name == "entk" else ctx.n
    lam_max, lam_min = psd_extremes(name, s["lambda_max"], s["lambda_min"], dim, raw["notes"])
    target = raw["entk"] if name == "entk" else raw["kinds"][name]
    target.update(lambda_max=lam_max, lambda_min=lam_min)
    for r in ctx.ridges if ctx.y is not None else ():
        out = phase(
            state.root, f"regression_{name}_{ridge_key(r)}", lambda r=r: regression(state, name, r)
        )
        if out["note"]:
            raw["notes"].append(out["note"])
        raw["preds"][name, r] = None if out["pred"] is None else np.asarray(out["pred"], np.float64)


def cost(ctx: Context, name: str, kernel, b: int) -> dict:
    """Phase "cost_NAME": warm time and compiled bytes of kernel ``name`` on the first ``b``
    training points (``b × b``), and the implementation its store was computed with."""
    from ntk.scale.store_read import read_meta

    opts = ctx.options.get(name, {})
    fn = kernel_fn(ctx.apply_fn, name, opts, ctx.memory_budget)
    x_b = take(ctx.x, 0, b)
    _, warm, nbytes, _ = measured(fn, ctx.params, x_b, ctx.apply_kwargs, opts, ctx.repeats)
    impl = read_meta(kernel.path)["info"]["resolved_implementation"]
    return {"warm_seconds": warm, "compiled_bytes": nbytes, "implementation": impl}


def frobenius(train: dict, kinds: tuple[str, ...], o: int, progress: bool, callback) -> dict:
    """Phase "frobenius": ``‖Θ‖²_F``, ``‖Θ − Ã‖²_F`` per kind and ``tr Θ``, over the
    upper-triangle blocks of the stored training kernels ``train``."""
    e = train["entk"]
    nb = e.n_blocks[0]
    total = nb * (nb + 1) // 2
    norm2, trace = 0.0, 0.0
    diff2 = dict.fromkeys(kinds, 0.0)
    bar = progress_bar(total, 0, progress, "frobenius")
    step = 0
    with bar:
        for i in range(nb):
            for j in range(i, nb):
                w = 1.0 if i == j else 2.0  # an off-diagonal block stands for its transpose too
                e_b = e.block(i, j).astype(np.float64)
                norm2 += w * float(np.sum(e_b * e_b))
                if i == j:
                    trace += float(np.einsum("nnoo->", e_b))
                for name in kinds:
                    d = e_b - embed(train[name].block(i, j).astype(np.float64), o)
                    diff2[name] += w * float(np.sum(d * d))
                step += 1
                bar.update(1)
                if callback is not None:
                    callback("frobenius", step)
    return {"norm2": norm2, "diff2": diff2, "trace": trace}
