"""Kernels at a checkpoint: eNTK vs pNTK (and other approximations) on a fixed evaluation set.

One pure-ish function, :func:`kernel_metrics`, computes everything the reproduction reports
for one ``(apply_fn, params)``: the relative Frobenius error, the eigenspectra (λ_max, λ_min,
condition numbers), kernel regression on held-out points over a ridge grid, the linearised
prediction, and the wall time and peak memory of each kernel. It is called from the training
callback at every checkpoint and again, identically, by the recompute entry point.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ntk.kernels import kernel_fn
from ntk.kernels.estimates import implementation_estimates
from ntk.metrics import as_matrix, compare_spectra, kron_identity, relative_frobenius_error
from ntk.regression import accuracy, kernel_regression, linearized_prediction


@dataclass(frozen=True)
class EvalSet:
    """Fixed kernel-evaluation points: ``x_train [N, ...]`` with labels ``y_train [N]`` and
    held-out ``x_test [M, ...]`` with ``y_test [M]`` (int labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass
class KernelResult:
    """Scalars for ``metrics.jsonl`` plus the arrays worth saving (kernels, spectra)."""

    scalars: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


def make_eval_set(
    dataset: Any, n_per_class: int | None, n_test_per_class: int, seed: int
) -> EvalSet:
    """Stratified, seed-deterministic evaluation points from a :class:`ntk_repro.data.Dataset`;
    ``n_per_class=None`` takes the whole training set as the kernel points (the network is
    then trained on exactly the kernel's X, as the linearised comparison needs)."""
    from ntk_repro.data import stratified_subset

    y_tr = _int_labels(dataset.y_train)
    y_te = _int_labels(dataset.y_test)
    if n_per_class is None:
        i_tr = np.arange(len(y_tr))
    else:
        i_tr = stratified_subset(y_tr, n_per_class, seed)
    i_te = stratified_subset(y_te, n_test_per_class, seed + 1)
    return EvalSet(
        dataset.x_train[i_tr], y_tr[i_tr], dataset.x_test[i_te], y_te[i_te], dataset.num_classes
    )


def _int_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return np.argmax(y, axis=1).astype(np.int32) if y.ndim == 2 else y.astype(np.int32)


@functools.lru_cache(maxsize=64)
def _kernel_fn(apply_fn, kind, implementation, batch_size):
    """One built kernel function per (model function, kind, settings): checkpoints of a run
    share it, and with it their compiled computations."""
    return kernel_fn(apply_fn, kind=kind, implementation=implementation, batch_size=batch_size)


def _timed(fn, repeats: int = 1):
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


def _cast(tree: Any, dtype: str) -> Any:
    """Floating leaves of ``tree`` as ``dtype`` (numpy; integer leaves untouched)."""
    dt = DTYPES[dtype]

    def cast(a):
        a = np.asarray(a)
        return a.astype(dt) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(cast, tree)


def _precision(dtype: str):
    """The context kernels of ``dtype`` run in: float64 needs JAX's 64-bit mode (enabled
    only around the kernel calls; training stays float32)."""
    if dtype not in DTYPES:
        raise ValueError(f"kernel.dtype: unknown value {dtype!r}; valid: {sorted(DTYPES)}")
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


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
    with _precision(dtype):
        p, k_state = _cast(params, dtype), _cast(kw, dtype)
        x_tr = _cast(np.asarray(evalset.x_train), dtype)
        if measure == "auto":
            n_out = jax.eval_shape(lambda a, b: apply_fn(a, b, **k_state), p, x_tr[:1]).shape[-1]
            measure = "all" if n_out == evalset.num_classes else "cost"
        if measure == "cost":
            cost = _cost(apply_fn, p, x_tr, k_state, *options, timing_repeats)
            return KernelResult({k: v for k, v in cost.items() if not k.startswith("_")}, {})
        x_te = _cast(np.asarray(evalset.x_test), dtype)
        res = _quality(apply_fn, p, x_tr, x_te, evalset, k_state, ridges, options, timing_repeats)
        res.scalars["kernel_dtype"] = dtype
        for kind in approximations:
            kfn = _kernel_fn(apply_fn, kind, implementation, batch_size)
            approx, t_a, _, _ = _timed(lambda kfn=kfn: kfn(p, x_tr, **k_state))
            err = relative_frobenius_error(res.arrays["entk"], approx)
            res.scalars.update({f"relative_frobenius_error_{kind}": err, f"time_{kind}_s": t_a})
    if compare_float32 and dtype != "float32":
        res.scalars.update(_float32_changes(apply_fn, params, evalset, kw, options, res.arrays))
    return res


def _float32_changes(apply_fn, params, evalset, kw, options, arrays) -> dict:
    """What float32 kernels change against the float64 ones in ``arrays``: the
    :data:`F32_COMPARED` scalars with an ``_f32`` suffix, and each kernel's relative
    difference (``f32_<kind>_rel_diff``)."""
    x_tr, x_te = _cast(evalset.x_train, "float32"), _cast(evalset.x_test, "float32")
    p, k_state = _cast(params, "float32"), _cast(kw, "float32")
    low = _quality(apply_fn, p, x_tr, x_te, evalset, k_state, (0.0,), options, 0)
    out = {f"{key}_f32": low.scalars[key] for key in F32_COMPARED}
    for kind in ("entk", "pntk"):
        hi, lo = arrays[kind], low.arrays[kind]
        out[f"f32_{kind}_rel_diff"] = float(np.linalg.norm(lo - hi) / np.linalg.norm(hi))
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


def _cost(apply_fn, params, x, kw, implementation, batch_size, repeats) -> dict:
    """Warm time (compile apart) and compiled memory of the eNTK and the pNTK on ``x``; the
    kernels themselves as ``_entk`` / ``_pntk``. ``repeats=0``: no warm timing, no memory
    analysis and no FLOP model (times and bytes None; the first call's time is kept)."""
    s: dict[str, Any] = {"n_cost": int(len(x))}
    for kind in ("entk", "pntk"):
        kfn = _kernel_fn(apply_fn, kind, implementation, batch_size)
        if repeats > 0:
            k, warm, first, (lo, hi) = _timed(lambda kfn=kfn: kfn(params, x, **kw), repeats)
        else:
            t0 = time.perf_counter()
            k = np.asarray(jax.block_until_ready(kfn(params, x, **kw)), np.float64)
            warm, first, lo, hi = None, time.perf_counter() - t0, None, None
        s[f"time_{kind}_s"], s[f"time_first_{kind}_s"] = warm, first
        s[f"time_{kind}_s_min"], s[f"time_{kind}_s_max"] = lo, hi
        # XLA's memory analysis compiles the unblocked computation once more, and the FLOP
        # model retraces the model: only where the cost is the point (timed runs).
        timed = repeats > 0
        s[f"kernel_bytes_{kind}"] = compiled_bytes(kfn, params, x, **kw) if timed else None
        if timed:
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


def _quality(apply_fn, params, x_tr, x_te, evalset, kw, ridges, options, repeats) -> KernelResult:
    """Frobenius error, spectra, regression and the linearised network (see kernel_metrics).

    One kernel call per kind on the N kernel points and the M held-out points together
    (``k(Z, Z)``, Z = X ∪ X*): ``k(X, X)`` and ``k(X*, X)`` are its blocks, and one compiled
    computation serves both (its time and memory are those of N + M points: ``n_cost``)."""
    y_tr, y_te = evalset.y_train, evalset.y_test
    n, o = len(y_tr), evalset.num_classes
    z = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), x_tr, x_te)
    cost = _cost(apply_fn, params, z, kw, *options, repeats)
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
        lin_pred_rel_diff=_rel_diff(lin_p, lin_e),
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
    """Kernel regression with both kernels at every ridge, in two arms: adds the ``kr_*``
    scalars to ``s`` and returns the predictions.

    * relative ridge (``@ridge=r``, and without a suffix at r = 0): each kernel K gets
      ``r·mean(diag K)``, so the ridge follows each kernel's own scale;
    * absolute ridge (``@abs_ridge=r``, r > 0): one λ = ``r·mean(diag Θ)`` for Θ and for
      pNTK⊗I alike. Ridgeless predictions are scale-invariant and a ridge is not, so the two
      arms differ by how far the pNTK's scale is from Θ's (``pntk_diag_scale`` =
      mean diag pNTK / mean diag Θ).
    """
    arrays = {}
    scale = float(np.mean(np.diagonal(pntk_tt)) / np.mean(np.einsum("nnoo->no", entk_tt)))
    s["pntk_diag_scale"] = scale
    arms = [("ridge", r, r, r) for r in ridges]
    arms += [("abs_ridge", r, r, r / scale) for r in ridges if r > 0]
    for arm, ridge, r_e, r_p in arms:
        p_e = kernel_regression(entk_tt, entk_st, y_onehot, ridge=r_e)
        p_p = kernel_regression(pntk_tt, pntk_st, y_onehot, ridge=r_p)
        vals = {
            "kr_pred_rel_diff": _rel_diff(p_p, p_e),
            "kr_acc_entk": accuracy(p_e, y_te),
            "kr_acc_pntk": accuracy(p_p, y_te),
            "kr_argmax_disagree": float(np.mean(np.argmax(p_e, 1) != np.argmax(p_p, 1))),
        }
        for key, val in vals.items():
            s[f"{key}@{arm}={ridge:g}"] = val
            if ridge == 0:
                s[key] = val
        arrays[f"pred_pntk@{arm}={ridge:g}"] = p_p
        if arm == "ridge":
            arrays[f"pred_entk@ridge={ridge:g}"] = p_e
    return arrays


def _rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))


def linearized_gd(k_train, k_test_train, y_NO, f0_train_NO, f0_test_MO, *, lr, steps):
    """Test predictions ``[M, O]`` of the linearised network after ``steps`` full-batch
    gradient-descent steps on the loss ``mean_n ½‖f(x_n) − y_n‖²`` with learning rate ``lr``:

    ``f_t(X*) = f0(X*) + Θ(X*, X) Θ⁻¹ (I − (I − lr·Θ/N)^t) (Y − f0(X))``

    with ``Θ`` the eNTK ``[N, N, O, O]`` (an NO×NO system) or an ``[N, N]`` kernel used as
    ``K ⊗ I`` (the pNTK); computed in float64 through the eigenvalues of Θ (directions with
    λ → 0 contribute ``t·lr/N``, the t-step limit). Lee et al. (2019): a wide network trained
    so follows its linearisation.
    """
    y, f0, f0s = (np.asarray(a, np.float64) for a in (y_NO, f0_train_NO, f0_test_MO))
    n, o = y.shape
    if np.ndim(k_train) == 4:
        k, ks = as_matrix(k_train), as_matrix(k_test_train)
        resid = (y - f0).reshape(n * o, 1)
    else:
        k, ks = np.asarray(k_train, np.float64), np.asarray(k_test_train, np.float64)
        resid = y - f0
    lam, vecs = np.linalg.eigh(0.5 * (k + k.T))
    lam = np.maximum(lam, 0.0)
    a = lr * lam / n
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(
            a < 1.0, -np.expm1(steps * np.log1p(-np.minimum(a, 0.999999))), 1.0 - (1.0 - a) ** steps
        )
        coef = np.where(lam > lam.max() * 1e-14, shrink / lam, steps * lr / n)
    step = ks @ (vecs @ (coef[:, None] * (vecs.T @ resid)))
    return f0s + step.reshape(f0s.shape)


def linearized_vs_network(init: Mapping[str, np.ndarray], f_test_MO, y_test, *, lr, steps):
    """Scalars comparing the trained network's test outputs ``f_test_MO`` at ``steps`` with
    the linearised network from the init kernels (``init``: the arrays of
    :func:`kernel_metrics` at step 0: ``entk``, ``entk_test``, ``pntk``, ``pntk_test``,
    ``f_train``, ``f_test``, ``y_train``)."""
    o = init["entk"].shape[-1]
    y = np.eye(o)[np.asarray(init["y_train"])]
    args = (y, init["f_train"], init["f_test"])
    lin_e = linearized_gd(init["entk"], init["entk_test"], *args, lr=lr, steps=steps)
    lin_p = linearized_gd(init["pntk"], init["pntk_test"], *args, lr=lr, steps=steps)
    f = np.asarray(f_test_MO, np.float64)
    lam_max = float(np.linalg.eigvalsh(as_matrix(init["entk"]))[-1])
    return {
        "net_lin_rel_diff_entk": _rel_diff(f, lin_e),
        "net_lin_rel_diff_pntk": _rel_diff(f, lin_p),
        "lin_t_rel_diff": _rel_diff(lin_p, lin_e),
        "net_acc": accuracy(f, y_test),
        "lin_t_acc_entk": accuracy(lin_e, y_test),
        "lin_t_acc_pntk": accuracy(lin_p, y_test),
        "lin_step_size": lr * lam_max / len(y),  # < 2 for the linear dynamics to be stable
    }


def save_arrays(path, arrays: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> None:
    """Writes the selected arrays to ``path`` (compressed ``.npz``, no pickle) atomically."""
    from pathlib import Path

    from ntk import atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = {k: v for k, v in arrays.items() if keys is None or k in keys}
    atomic.save_npz(path, chosen, compressed=True)


def layer_shares(apply_fn, params, x, apply_kwargs=None, *, max_bytes: float = 3e9) -> dict:
    """Which parameter groups (the top-level entries of ``params``: stem, blocks, readout)
    make the eNTK and its departure from pNTK⊗I, at these points (float32, a diagnosis).

    With ``Θ = Σ_g Θ_g`` (the eNTK of each group alone) and ``D = Θ − pNTK⊗I = Σ_g D_g``,
    returns per group ``kernel_share_<g> = ⟨Θ_g, Θ⟩/‖Θ‖²`` and ``error_share_<g> =
    ⟨D_g, D⟩/‖D‖²`` (each set sums to 1). Empty when the Jacobian (N·O·P floats) would exceed
    ``max_bytes``.
    """
    kw = dict(apply_kwargs or {})
    x = np.asarray(x, np.float32)
    p32 = _cast(params, "float32")
    out_shape = jax.eval_shape(lambda p: apply_fn(p, x, **kw), p32).shape
    n_params = sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(p32))
    if 4.0 * out_shape[0] * out_shape[1] * n_params > max_bytes:
        return {}
    jac = jax.jit(jax.jacrev(lambda p: apply_fn(p, x, **_cast(kw, "float32"))))(p32)
    n, o = out_shape
    groups = {}
    for name, sub in jac.items() if isinstance(jac, Mapping) else [("all", jac)]:
        j_MP = np.concatenate(
            [np.asarray(a).reshape(n * o, -1) for a in jax.tree_util.tree_leaves(sub)], axis=1
        )  # rows (example, output); float32: casting J up costs more than its GEMM
        theta = (j_MP @ j_MP.T).astype(np.float64).reshape(n, o, n, o).transpose(0, 2, 1, 3)
        pntk = theta.sum(axis=(2, 3)) / o
        groups[str(name)] = (theta, theta - pntk[:, :, None, None] * np.eye(o))
    theta_all = sum(t for t, _ in groups.values())
    d_all = sum(d for _, d in groups.values())
    s = {}
    for name, (t, d) in groups.items():
        s[f"kernel_share_{name}"] = float(np.sum(t * theta_all) / np.sum(theta_all**2))
        s[f"error_share_{name}"] = float(np.sum(d * d_all) / np.sum(d_all**2))
    return s
