"""Kernels at a checkpoint: eNTK vs pNTK (and other approximations) on a fixed evaluation set.

One pure-ish function, :func:`kernel_metrics`, computes everything the reproduction reports
for one ``(apply_fn, params)``: the relative Frobenius error, the eigenspectra (λ_max, λ_min,
condition numbers), kernel regression on held-out points over a ridge grid, the linearised
prediction, and the wall time and peak memory of each kernel. It is called from the training
callback at every checkpoint and again, identically, by the recompute entry point.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ntk.kernels import kernel_fn
from ntk.metrics import compare_spectra, relative_frobenius_error
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


def make_eval_set(dataset: Any, n_per_class: int, n_test_per_class: int, seed: int) -> EvalSet:
    """Stratified, seed-deterministic evaluation points from a :class:`ntk_repro.data.Dataset`."""
    from ntk_repro.data import stratified_subset

    y_tr = _int_labels(dataset.y_train)
    y_te = _int_labels(dataset.y_test)
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


def _timed(fn):
    """``(result as float64 numpy, warm seconds, first-call seconds)``: the first call
    includes any compilation, the second is timed alone."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return np.asarray(out, np.float64), time.perf_counter() - t0, first


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


def kernel_metrics(
    apply_fn,
    params: Any,
    evalset: EvalSet,
    *,
    ridges: Sequence[float] = (0.0, 1e-3, 1e-1),
    implementation: str = "auto",
    approximations: Sequence[str] = (),
    batch_size: int | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> KernelResult:
    """All paper metrics for one set of parameters.

    Args:
      apply_fn: ``apply_fn(params, x, **apply_kwargs) -> [batch, O]`` (eval mode). Pass the
        same function at every checkpoint (e.g. :func:`ntk_repro.models.eval_apply_fn`) and the
        kernels compile once per run.
      params: the parameters at this checkpoint.
      evalset: N training points (the kernel's ``X``) and M held-out points.
      ridges: relative ridges for kernel regression (see :mod:`ntk.regression`); the first
        entry is the headline (use 0 first: the approximation argument is ridge-free).
      implementation: kernel implementation name (see ``ntk.IMPLEMENTATIONS``).
      approximations: extra kinds compared to the eNTK by relative Frobenius error, e.g.
        ``("trace", "diagonal", "single_logit")``.
      batch_size: block size for the kernels (bounds memory).
      apply_kwargs: non-differentiated model state (e.g. ``batch_stats``) for ``apply_fn``.

    Returns:
      :class:`KernelResult` with scalars (``relative_frobenius_error``,
      ``lambda_max_rel_error``, ``lambda_min_rel_error``, ``cond_entk``, ``cond_pntk``,
      ``kr_pred_rel_diff``, ``kr_acc_entk``, ``kr_acc_pntk`` at the first ridge, the same
      with a ``@ridge=r`` suffix for every ridge, ``lin_*`` for the linearised network,
      warm ``time_*_s``, first-call ``time_first_*_s`` and the compiled computation's
      ``kernel_bytes_*``) and arrays (``entk``, ``pntk``, spectra,
      predictions).
    """
    x_tr, x_te = np.asarray(evalset.x_train), np.asarray(evalset.x_test)
    y_tr, y_te = evalset.y_train, evalset.y_test
    o = evalset.num_classes
    y_onehot = np.eye(o)[y_tr]
    kw = dict(apply_kwargs or {})

    def kfn(kind):
        return _kernel_fn(apply_fn, kind, implementation, batch_size)

    entk_tt, t_entk, t1_entk = _timed(lambda: kfn("entk")(params, x_tr, **kw))
    pntk_tt, t_pntk, t1_pntk = _timed(lambda: kfn("pntk")(params, x_tr, **kw))
    entk_st = np.asarray(kfn("entk")(params, x_te, x_tr, **kw), np.float64)
    pntk_st = np.asarray(kfn("pntk")(params, x_te, x_tr, **kw), np.float64)
    if entk_tt.shape[-1] != o:
        raise ValueError(
            f"apply_fn: returns O={entk_tt.shape[-1]} outputs but the data has {o} classes"
        )

    s: dict[str, Any] = {
        "n": int(len(x_tr)),
        "n_test": int(len(x_te)),
        "num_outputs": int(o),
        "time_entk_s": t_entk,
        "time_pntk_s": t_pntk,
        "time_first_entk_s": t1_entk,
        "time_first_pntk_s": t1_pntk,
        "kernel_bytes_entk": compiled_bytes(kfn("entk"), params, x_tr, **kw),
        "kernel_bytes_pntk": compiled_bytes(kfn("pntk"), params, x_tr, **kw),
        "relative_frobenius_error": relative_frobenius_error(entk_tt, pntk_tt),
    }
    spec = compare_spectra(entk_tt, pntk_tt)
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
    arrays: dict[str, np.ndarray] = {
        "entk": entk_tt,
        "pntk": pntk_tt,
        "eig_entk": spec["eig_entk"],
        "eig_pntk_kron_i": spec["eig_approx"],
        "y_train": y_tr,
        "y_test": y_te,
    }

    for i, ridge in enumerate(ridges):
        p_e = kernel_regression(entk_tt, entk_st, y_onehot, ridge=ridge)
        p_p = kernel_regression(pntk_tt, pntk_st, y_onehot, ridge=ridge)
        diff = float(np.linalg.norm(p_e - p_p) / max(np.linalg.norm(p_e), 1e-300))
        vals = {
            "kr_pred_rel_diff": diff,
            "kr_acc_entk": accuracy(p_e, y_te),
            "kr_acc_pntk": accuracy(p_p, y_te),
        }
        for key, val in vals.items():
            s[f"{key}@ridge={ridge:g}"] = val
            if i == 0:
                s[key] = val
        arrays[f"pred_entk@ridge={ridge:g}"] = p_e
        arrays[f"pred_pntk@ridge={ridge:g}"] = p_p

    f0_tr = np.asarray(apply_fn(params, x_tr, **kw), np.float64)
    f0_te = np.asarray(apply_fn(params, x_te, **kw), np.float64)
    lin_e = linearized_prediction(entk_tt, entk_st, y_onehot, f0_tr, f0_te, ridge=ridges[0])
    lin_p = linearized_prediction(pntk_tt, pntk_st, y_onehot, f0_tr, f0_te, ridge=ridges[0])
    s.update(
        lin_pred_rel_diff=float(np.linalg.norm(lin_e - lin_p) / max(np.linalg.norm(lin_e), 1e-300)),
        lin_acc_entk=accuracy(lin_e, y_te),
        lin_acc_pntk=accuracy(lin_p, y_te),
    )

    for kind in approximations:
        approx, t_a, _ = _timed(lambda kind=kind: kfn(kind)(params, x_tr, **kw))
        s[f"relative_frobenius_error_{kind}"] = relative_frobenius_error(entk_tt, approx)
        s[f"time_{kind}_s"] = t_a
    return KernelResult(s, arrays)


def save_arrays(path, arrays: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> None:
    """Writes the selected arrays to ``path`` (``.npz``, no pickle) atomically."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = {k: np.asarray(v) for k, v in arrays.items() if keys is None or k in keys}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **chosen)
    os.replace(tmp, path)
