"""Kernels at a checkpoint: eNTK vs pNTK (and other approximations) on a fixed evaluation set.

One pure-ish function, :func:`kernel_metrics`, computes everything the reproduction reports
for one ``(apply_fn, params)``: the relative Frobenius error, the eigenspectra (λ_max, λ_min,
condition numbers), kernel regression on held-out points over a ridge grid, the linearised
prediction, and the wall time and peak memory of each kernel. Training calls it at every
checkpoint and recompute calls it again through the same path
(:mod:`ntk_repro.analysis.checkpoints`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ntk.metrics import as_matrix, compare_spectra, kron_identity, relative_frobenius_error
from ntk.regression import accuracy, kernel_regression, linearized_prediction
from ntk_repro.analysis.calls import cached_kernel_fn, cast_tree, precision, rel_diff, timed
from ntk_repro.analysis.cost import kernel_cost, solve_cost
from ntk_repro.analysis.evalset import EvalSet


@dataclass
class KernelResult:
    """Scalars for ``metrics.jsonl`` plus the arrays worth saving (kernels, spectra)."""

    scalars: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


MEASURES = ("auto", "all", "cost")


def kernel_metrics(
    apply_fn,
    params: Any,
    evalset: EvalSet,
    *,
    ridges: Sequence[float] = (0.0, 1e-4, 1e-2, 1e-1, 1.0),
    implementation: str = "auto",
    approximations: Sequence[str] = (),
    batch_size: int | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    dtype: str = "float64",
    compare_float32: bool = False,
    timing_repeats: int = 1,
    measure: str = "auto",
    solve_outputs: Sequence[int] = (),
) -> KernelResult:
    """All paper metrics for one set of parameters.

    Args:
      apply_fn: ``apply_fn(params, x, **apply_kwargs) -> [batch, O]`` (eval mode). Pass the
        same function at every checkpoint (e.g. :func:`ntk_repro.models.eval_apply_fn`) and the
        kernels compile once per run.
      params: the parameters at this checkpoint (float32 from training).
      evalset: N training points (the kernel's ``X``) and M held-out points.
      ridges: relative ridges for kernel regression (see :mod:`ntk.regression`); 0 must be
        among them (the approximation argument is ridge-free; its numbers are also stored
        without the ``@ridge`` suffix).
      implementation: kernel implementation name (see ``ntk.IMPLEMENTATIONS``).
      approximations: extra kinds compared to the eNTK by relative Frobenius error, e.g.
        ``("trace", "diagonal", "single_logit")``.
      batch_size: block size for the kernels (bounds memory).
      apply_kwargs: non-differentiated model state (e.g. ``batch_stats``) for ``apply_fn``.
      dtype: ``"float64"`` (default: parameters, state and inputs cast up, kernels computed
        in JAX's 64-bit mode; condition numbers reach 10⁶ and ridge-0 solves need it) or
        ``"float32"``.
      compare_float32: also compute the float32 kernels and store what changes
        (``*_f32`` scalars: spectra, ridge-0 regression, the kernels' relative difference).
      timing_repeats: warm calls timed per kernel (the median is ``time_*_s``, the extremes
        ``time_*_s_min`` / ``_max``).
      measure: ``"all"``; ``"cost"``: time and memory only (any O; no labels needed);
        ``"auto"``: all when the model has one output per class, else cost.
      solve_outputs: cost runs only: the O' values at which the kernel-regression solve is
        timed (:func:`ntk_repro.analysis.cost.solve_cost`, on sub-blocks of this run's
        eNTK). Timed in every run whose O is at least the largest of them (a run cannot
        know the other runs of its sweep, and a sweep such as O = 10, 100, 200 holds no run
        at O = max exactly); empty: not timed.

    Returns:
      :class:`KernelResult` with scalars (``relative_frobenius_error``,
      ``lambda_max_rel_error``, ``lambda_min_rel_error``, ``cond_entk``, ``cond_pntk``,
      ``weyl_bound_lambda_max`` = ‖Θ − pNTK⊗I‖₂/λ_max(Θ), ``kr_pred_rel_diff``,
      ``kr_acc_entk``, ``kr_acc_pntk``, ``kr_argmax_disagree`` at ridge 0 and with a
      ``@ridge=r`` suffix for every ridge, ``lin_*`` for the linearised network, warm
      ``time_*_s``, first-call ``time_first_*_s`` and the compiled computation's
      ``kernel_bytes_*``) and arrays (``entk``, ``pntk``, spectra, predictions).
    """
    if measure not in MEASURES:
        raise ValueError(f"kernel.measure: unknown value {measure!r}; valid: {list(MEASURES)}")
    if measure != "cost" and 0.0 not in [float(r) for r in ridges]:
        raise ValueError(f"ridges: must include 0 (the ridgeless headline), got {list(ridges)}")
    kw = dict(apply_kwargs or {})
    options = (implementation, batch_size)
    with precision(dtype):
        p, k_state = cast_tree(params, dtype), cast_tree(kw, dtype)
        x_tr = cast_tree(np.asarray(evalset.x_train), dtype)
        if measure == "auto":
            n_out = jax.eval_shape(lambda a, b: apply_fn(a, b, **k_state), p, x_tr[:1]).shape[-1]
            measure = "all" if n_out == evalset.num_classes else "cost"
        if measure == "cost":
            cost = kernel_cost(apply_fn, p, x_tr, k_state, *options, timing_repeats)
            if solve_outputs and cost["num_outputs"] >= max(int(v) for v in solve_outputs):
                cost.update(solve_cost(cost["_entk"], solve_outputs, timing_repeats))
            return KernelResult({k: v for k, v in cost.items() if not k.startswith("_")}, {})
        x_te = cast_tree(np.asarray(evalset.x_test), dtype)
        res = _quality(apply_fn, p, x_tr, x_te, evalset, k_state, ridges, options, timing_repeats)
        res.scalars["kernel_dtype"] = dtype
        for kind in approximations:
            kfn = cached_kernel_fn(apply_fn, kind, implementation, batch_size)
            approx, t_a, _, _ = timed(lambda kfn=kfn: kfn(p, x_tr, **k_state))
            err = relative_frobenius_error(res.arrays["entk"], approx)
            res.scalars.update({f"relative_frobenius_error_{kind}": err, f"time_{kind}_s": t_a})
    if compare_float32 and dtype != "float32":
        res.scalars.update(_float32_changes(apply_fn, params, evalset, kw, options, res.arrays))
    return res


def _float32_changes(apply_fn, params, evalset, kw, options, arrays) -> dict:
    """What float32 kernels change against the float64 ones in ``arrays``: the
    :data:`F32_COMPARED` scalars with an ``_f32`` suffix, and each kernel's relative
    difference (``f32_<kind>rel_diff``)."""
    x_tr, x_te = cast_tree(evalset.x_train, "float32"), cast_tree(evalset.x_test, "float32")
    p, k_state = cast_tree(params, "float32"), cast_tree(kw, "float32")
    low = _quality(apply_fn, p, x_tr, x_te, evalset, k_state, (0.0,), options, 0)
    out = {f"{key}_f32": low.scalars[key] for key in F32_COMPARED}
    for kind in ("entk", "pntk"):
        hi, lo = arrays[kind], low.arrays[kind]
        out[f"f32_{kind}rel_diff"] = float(np.linalg.norm(lo - hi) / np.linalg.norm(hi))
    return out


# what compare_float32 stores with an ``_f32`` suffix
F32_COMPARED = (
    "relative_frobenius_error",
    "lambda_max_rel_error",
    "lambda_min_rel_error",
    "cond_entk",
    "cond_pntk",
    "n_roundoff_negative",
    "kr_pred_rel_diff",
    "kr_acc_entk",
    "kr_acc_pntk",
)


def _quality(apply_fn, params, x_tr, x_te, evalset, kw, ridges, options, repeats) -> KernelResult:
    """Frobenius error, spectra, regression and the linearised network (see kernel_metrics).

    One kernel call per kind on the N kernel points and the M held-out points together
    (``k(Z, Z)``, Z = X ∪ X*): ``k(X, X)`` and ``k(X*, X)`` are its blocks, and one compiled
    computation serves both (its time and memory are those of N + M points: ``n_cost``)."""
    y_tr, y_te = evalset.y_train, evalset.y_test
    n, o = len(y_tr), evalset.num_classes
    z = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), x_tr, x_te)
    cost = kernel_cost(apply_fn, params, z, kw, *options, repeats)
    entk_zz, pntk_zz = cost.pop("_entk"), cost.pop("_pntk")
    if entk_zz.shape[-1] != o:
        raise ValueError(
            f"apply_fn: returns O={entk_zz.shape[-1]} outputs but the data has {o} classes"
        )
    entk_tt, entk_st = entk_zz[:n, :n], entk_zz[n:, :n]
    pntk_tt, pntk_st = pntk_zz[:n, :n], pntk_zz[n:, :n]
    s: dict[str, Any] = {"n": int(n), "n_test": int(len(y_te)), **cost}
    s["relative_frobenius_error"] = relative_frobenius_error(entk_tt, pntk_tt)
    spec = _spectra(entk_tt, pntk_tt, s)
    arrays: dict[str, np.ndarray] = {
        "entk": entk_tt,
        "pntk": pntk_tt,
        "eig_entk": spec["eig_entk"],
        "eig_pntk_kron_i": spec["eig_approx"],
        "y_train": y_tr,
        "y_test": y_te,
    }
    y_onehot = np.eye(o)[y_tr]
    arrays.update(_regression(entk_tt, entk_st, pntk_tt, pntk_st, y_onehot, y_te, ridges, s))
    f0_tr = np.asarray(apply_fn(params, x_tr, **kw), np.float64)
    f0_te = np.asarray(apply_fn(params, x_te, **kw), np.float64)
    lin_e = linearized_prediction(entk_tt, entk_st, y_onehot, f0_tr, f0_te)
    lin_p = linearized_prediction(pntk_tt, pntk_st, y_onehot, f0_tr, f0_te)
    s.update(
        lin_pred_rel_diff=rel_diff(lin_p, lin_e),
        lin_acc_entk=accuracy(lin_e, y_te),
        lin_acc_pntk=accuracy(lin_p, y_te),
        net_acc=accuracy(f0_te, y_te),
    )
    arrays.update(f_train=f0_tr, f_test=f0_te, entk_test=entk_st, pntk_test=pntk_st)
    return KernelResult(s, arrays)


def _spectra(entk_NNOO, pntk_NN, s: dict) -> dict:
    """Adds λ_max, λ_min, condition numbers, their errors and the Weyl bound
    ‖Θ − pNTK⊗I‖₂/λ_max(Θ) to the scalars ``s``; returns :func:`compare_spectra`'s dict."""
    spec = compare_spectra(entk_NNOO, pntk_NN)
    s.update(
        lambda_max_entk=spec["lambda_max_entk"],
        lambda_max_pntk=spec["lambda_max_approx"],
        lambda_min_entk=spec["lambda_min_entk"],
        lambda_min_pntk=spec["lambda_min_approx"],
        lambda_max_rel_error=spec["lambda_max_rel_error"],
        lambda_min_rel_error=spec["lambda_min_rel_error"],
        cond_entk=spec["cond_entk"],
        cond_pntk=spec["cond_approx"],
        n_roundoff_negative=spec["n_roundoff_negative"],
    )
    diff = as_matrix(entk_NNOO) - kron_identity(pntk_NN, entk_NNOO.shape[-1])
    eig_diff = np.linalg.eigvalsh(0.5 * (diff + diff.T))
    s["weyl_bound_lambda_max"] = float(np.max(np.abs(eig_diff)) / spec["lambda_max_entk"])
    return spec


def _regression(entk_tt, entk_st, pntk_tt, pntk_st, y_onehot, y_te, ridges, s: dict) -> dict:
    """Kernel regression with both kernels at every ridge, in three arms: adds the ``kr_*``
    scalars to ``s`` and returns the predictions.

    * relative ridge (``@ridge=r``, and without a suffix at r = 0): each kernel K gets
      ``r·mean(diag K)``, so the ridge follows each kernel's own scale;
    * absolute ridge (``@abs_ridge=r``, r > 0): one λ = ``r·mean(diag Θ)`` for Θ and for
      pNTK⊗I alike. Ridgeless predictions are scale-invariant and a ridge is not, so the two
      arms differ by how far the pNTK's scale is from Θ's (``pntk_diag_scale`` =
      mean diag pNTK / mean diag Θ);
    * the talk's setting (``@unscaled_ridge=r``, r > 0): the pNTK of Σₒ fₒ without the
      1/√O ("we are not scaling the function values anymore"), O times ours, with the one
      λ = ``r·mean(diag Θ)`` of the absolute arm. Its effective ridge is λ/O against Θ's λ,
      so where pNTK⊗I ≈ Θ its predictions tend to Θ's at ridge λ/O, not at λ: the floor
      the difference levels off at is ``kr_floor@unscaled_ridge=r`` = ‖pred_Θ(λ/O) −
      pred_Θ(λ)‖ / ‖pred_Θ(λ)‖, from this run's own eNTK.
    """
    arrays = {}
    o = entk_tt.shape[-1]
    scale = float(np.mean(np.diagonal(pntk_tt)) / np.mean(np.einsum("nnoo->no", entk_tt)))
    s["pntk_diag_scale"] = scale
    arms = [("ridge", r, r, r) for r in ridges]
    arms += [("abs_ridge", r, r, r / scale) for r in ridges if r > 0]
    # kernel_regression's ridge is relative to mean diag K: λ / mean diag(O·pNTK) = r/(O·scale)
    arms += [("unscaled_ridge", r, r, r / (o * scale)) for r in ridges if r > 0]
    by_ridge = {}
    for arm, ridge, r_e, r_p in arms:
        p_e = by_ridge.get(r_e)
        if p_e is None:
            p_e = by_ridge[r_e] = kernel_regression(entk_tt, entk_st, y_onehot, ridge=r_e)
        p_p = kernel_regression(pntk_tt, pntk_st, y_onehot, ridge=r_p)
        vals = {
            "kr_pred_rel_diff": rel_diff(p_p, p_e),
            "kr_acc_entk": accuracy(p_e, y_te),
            "kr_acc_pntk": accuracy(p_p, y_te),
            "kr_argmax_disagree": float(np.mean(np.argmax(p_e, 1) != np.argmax(p_p, 1))),
        }
        if arm == "unscaled_ridge":  # Θ's own predictions at the pNTK's effective ridge λ/O
            p_floor = kernel_regression(entk_tt, entk_st, y_onehot, ridge=r_e / o)
            vals["kr_floor"] = rel_diff(p_floor, p_e)
        for key, val in vals.items():
            s[f"{key}@{arm}={ridge:g}"] = val
            if ridge == 0:
                s[key] = val
        arrays[f"pred_pntk@{arm}={ridge:g}"] = p_p
        if arm == "ridge":
            arrays[f"pred_entk@ridge={ridge:g}"] = p_e
    return arrays


def save_arrays(path, arrays: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> None:
    """Writes the selected arrays to ``path`` (compressed ``.npz``, no pickle) atomically."""
    from pathlib import Path

    from ntk import atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = {k: v for k, v in arrays.items() if keys is None or k in keys}
    atomic.save_npz(path, chosen, compressed=True)
