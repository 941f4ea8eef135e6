"""Kernel regression with the eNTK (an NO×NO system) or an N×N kernel (one solve for all O).

Solves run on the host in float64. ``ridge`` is *relative*: the system solved is
``K + ridge · mean(diag K) · I``, so one ridge value means the same for kernels of any scale
(eNTK vs pNTK, any width or parameterisation).

Singular systems: with ``on_singular="lstsq"`` (default) a system that is singular to working
precision is solved in the least-squares, minimum-norm sense (pseudo-inverse through a
symmetric eigendecomposition that drops eigenvalues below ``n·eps·λ_max``) and a
``RuntimeWarning`` says so; ``on_singular="raise"`` raises ``np.linalg.LinAlgError`` instead.
The result is never NaN.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ntk.checks import check_choice

_ON_SINGULAR = ("lstsq", "raise")


def _f64(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf (shape {arr.shape})")
    return arr


def _flatten_kernels(k_train, k_test_train):
    """Returns ``(K [n, n], K* [m, n], O or None)``; O is set for 4-D eNTKs."""
    kt = _f64("k_train", k_train)
    ks = _f64("k_test_train", k_test_train)
    if kt.ndim == 4:
        n, n_, o, o_ = kt.shape
        if n != n_ or o != o_:
            raise ValueError(f"k_train: expected [N, N, O, O], got {kt.shape}")
        if ks.ndim != 4 or ks.shape[1:] != (n, o, o):
            raise ValueError(
                f"k_test_train: expected [M, {n}, {o}, {o}] to match k_train {kt.shape}, "
                f"got {ks.shape}"
            )
        m = ks.shape[0]
        return (
            kt.transpose(0, 2, 1, 3).reshape(n * o, n * o),
            ks.transpose(0, 2, 1, 3).reshape(m * o, n * o),
            o,
        )
    if kt.ndim == 2:
        if kt.shape[0] != kt.shape[1]:
            raise ValueError(f"k_train: expected a square [N, N] kernel, got {kt.shape}")
        if ks.ndim != 2 or ks.shape[1] != kt.shape[0]:
            raise ValueError(
                f"k_test_train: expected [M, {kt.shape[0]}] to match k_train {kt.shape}, "
                f"got {ks.shape}"
            )
        return kt, ks, None
    raise ValueError(f"k_train: expected rank 2 [N, N] or rank 4 [N, N, O, O], got {kt.shape}")


def _solve(k: np.ndarray, rhs: np.ndarray, ridge: float, on_singular: str) -> np.ndarray:
    """``(K + ridge·mean(diag K)·I)⁻¹ rhs`` for symmetric PSD K, in float64."""
    n = k.shape[0]
    a = 0.5 * (k + k.T)
    if ridge:
        a = a + ridge * np.mean(np.diag(a)) * np.eye(n)
    eig, vec = np.linalg.eigh(a)
    lam_max = np.max(np.abs(eig))
    cutoff = n * np.finfo(np.float64).eps * lam_max
    if lam_max == 0.0 or eig[0] <= cutoff:
        if on_singular == "raise":
            raise np.linalg.LinAlgError(
                f"k_train: singular to working precision (λ_min {eig[0]:.3e}, λ_max "
                f"{lam_max:.3e}); add a ridge or use on_singular='lstsq'"
            )
        warnings.warn(
            f"k_train is singular to working precision (λ_min {eig[0]:.3e}, λ_max "
            f"{lam_max:.3e}); using the minimum-norm least-squares solution",
            RuntimeWarning,
            stacklevel=3,
        )
    keep = eig > cutoff
    inv = np.where(keep, 1.0 / np.where(keep, eig, 1.0), 0.0)
    return vec @ (inv[:, None] * (vec.T @ rhs))


def _check_targets(y: Any, n: int, o: int | None) -> np.ndarray:
    y = _f64("y_train", y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n or (o is not None and y.shape[1] != o):
        want = f"[{n}, {o}]" if o is not None else f"[{n}, O]"
        raise ValueError(f"y_train: expected {want} targets, got shape {y.shape}")
    return y


def kernel_regression(
    k_train: Any,
    k_test_train: Any,
    y_train: Any,
    *,
    ridge: float = 0.0,
    on_singular: str = "lstsq",
    tol: float = 1e-8,
    maxiter: int | None = None,
) -> np.ndarray:
    """Kernel-regression predictions ``K*(K + ridge·mean(diag K)·I)⁻¹ Y``.

    ``k_train`` (and ``k_test_train``) may be stored kernels (:func:`ntk.open_kernel`), for
    kernels larger than memory: the system is then solved by Jacobi-preconditioned conjugate
    gradients in float64, all target columns at once, each iteration streaming the store once
    (one block in memory); ``mean(diag K)`` and the preconditioner come from the diagonal
    blocks. A ``RuntimeError`` reports a true relative residual above ``10·tol``.

    Args:
      k_train: ``[N, N, O, O]`` eNTK (an NO×NO system, targets flattened sample-major) or an
        ``[N, N]`` kernel (one N×N system solved for all O outputs at once); an array or a
        stored kernel (computed with ``x2=None``).
      k_test_train: ``[M, N, O, O]`` or ``[M, N]``, matching ``k_train``; array or stored.
      y_train: ``[N, O]`` targets (e.g. one-hot labels).
      ridge: relative ridge ≥ 0 (see the module docstring).
      on_singular: ``"lstsq"`` or ``"raise"`` (see the module docstring; direct solves only).
      tol: relative residual of conjugate gradients (stored ``k_train`` only).
      maxiter: its iteration limit (stored ``k_train`` only; default 1000).

    Returns:
      ``[M, O]`` predictions (float64).
    """
    check_choice("on_singular", on_singular, _ON_SINGULAR)
    check_ridge(ridge)
    if is_stored(k_train):
        return _stored_regression(k_train, k_test_train, y_train, ridge, tol, maxiter)
    if is_stored(k_test_train):
        raise TypeError("k_test_train: stored, but k_train is in memory; store both or neither")
    kt, ks, o = _flatten_kernels(k_train, k_test_train)
    n = kt.shape[0] if o is None else kt.shape[0] // o
    y = _check_targets(y_train, n, o)
    if o is None:
        return ks @ _solve(kt, y, ridge, on_singular)
    m = ks.shape[0] // o
    return (ks @ _solve(kt, y.reshape(-1, 1), ridge, on_singular)).reshape(m, o)


def is_stored(k: Any) -> bool:
    """A stored kernel (:class:`ntk.scale.store_read.StoredKernel`), told apart without
    importing it."""
    return not callable(k) and hasattr(k, "matvec") and hasattr(k, "block_size")


def stored_square_shape(name: str, k: Any) -> tuple[int, int | None]:
    """``(N, O)`` of a square stored kernel ``[N, N, O, O]``, or ``(N, None)`` for ``[N, N]``."""
    shape = tuple(k.shape)
    if len(shape) == 2 and shape[0] == shape[1]:
        return shape[0], None
    if len(shape) == 4 and shape[0] == shape[1] and shape[2] == shape[3]:
        return shape[0], shape[2]
    raise ValueError(f"{name}: expected a square stored [N, N] or [N, N, O, O] kernel, got {shape}")


def check_ridge(ridge: Any) -> None:
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge: must be a finite number >= 0, got {ridge!r}")


def check_cg_limits(tol: Any, maxiter: Any) -> None:
    """Conjugate gradients' relative tolerance (> 0) and iteration limit (a positive int)."""
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: must be a positive number, got {tol!r}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer):
        raise TypeError(f"maxiter: expected a positive int, got {maxiter!r}")
    if maxiter <= 0:
        raise ValueError(f"maxiter: must be a positive int, got {maxiter}")


def check_converged(rel: float, tol: float, what: str, hint: str) -> None:
    """Raises a ``RuntimeError`` when a solve's true relative residual is not finite or
    exceeds ``10·tol``: an unconverged solve never returns silently."""
    if not np.isfinite(rel) or rel > 10 * tol:
        raise RuntimeError(
            f"{what} did not converge: relative residual {rel:.3e} > 10·tol = "
            f"{10 * tol:.1e}. {hint}"
        )


def _stored_test_kernel(ks: Any, shape: tuple[int, ...], n: int, o: int | None) -> None:
    ks_shape = tuple(np.shape(ks)) if not is_stored(ks) else tuple(ks.shape)
    want = (n,) if o is None else (n, o, o)
    if len(ks_shape) != len(shape) or ks_shape[1:] != want:
        raise ValueError(
            f"k_test_train: expected [M, {', '.join(map(str, want))}] to match k_train "
            f"{shape}, got {ks_shape}"
        )


def _stored_regression(kt, ks, y_train, ridge, tol, maxiter) -> np.ndarray:
    """``K*(K + λI)⁻¹ Y`` with K a stored kernel: preconditioned CG, all columns at once."""
    n, o = stored_square_shape("k_train", kt)
    if not kt.symmetric:
        raise ValueError("k_train: a stored training kernel must be computed with x2=None")
    maxiter = 1000 if maxiter is None else maxiter
    check_cg_limits(tol, maxiter)
    _stored_test_kernel(ks, tuple(kt.shape), n, o)
    y = _check_targets(y_train, n, o)
    d = kt.diagonal().astype(np.float64)  # [N] or [N, O, O]
    d = d if o is None else np.diagonal(d, axis1=1, axis2=2)  # [N, O]
    lam = ridge * float(np.mean(d))
    rhs = y if o is None else y.reshape(n, o, 1)  # one column per output, or the NO vector

    def a_op(v):
        return kt.matvec(v) + lam * v

    dd = (d + lam)[:, None] if o is None else (d + lam)[:, :, None]
    inv_d = np.where(dd > 0, 1.0 / np.where(dd > 0, dd, 1.0), 1.0)
    alpha = _pcg(a_op, rhs, inv_d, tol, maxiter)
    b_norm = np.linalg.norm(rhs.reshape(-1, rhs.shape[-1]), axis=0)
    res = np.linalg.norm((rhs - a_op(alpha)).reshape(-1, rhs.shape[-1]), axis=0)
    rel = float(np.max(res / np.where(b_norm > 0, b_norm, 1.0)))
    what = f"kernel_regression: conjugate gradients on the stored kernel (N={n}, maxiter={maxiter})"
    check_converged(rel, tol, what, "Add a ridge or raise maxiter.")
    if is_stored(ks):
        pred = ks.matvec(alpha)
    elif o is None:
        pred = _f64("k_test_train", ks) @ alpha
    else:
        pred = np.einsum("mnop,npc->moc", _f64("k_test_train", ks), alpha)
    return pred if o is None else pred.reshape(-1, o)


def _pcg(a_op, b, inv_d, tol, maxiter) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for ``A x = b`` column by column (the last
    axis of ``b``), with one ``a_op`` call per iteration for all columns."""
    cols = b.shape[-1]
    x = np.zeros_like(b)
    r = b.copy()
    z = inv_d * r
    p = z.copy()
    rz = np.sum((r * z).reshape(-1, cols), axis=0)
    b_norm = np.linalg.norm(b.reshape(-1, cols), axis=0)
    b_norm = np.where(b_norm > 0, b_norm, 1.0)
    for _ in range(maxiter):
        if np.all(np.linalg.norm(r.reshape(-1, cols), axis=0) <= tol * b_norm):
            break
        ap = a_op(p)
        pap = np.sum((p * ap).reshape(-1, cols), axis=0)
        step = np.where(pap > 0, rz / np.where(pap > 0, pap, 1.0), 0.0)
        x += step * p
        r -= step * ap
        z = inv_d * r
        rz_new = np.sum((r * z).reshape(-1, cols), axis=0)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    return x


def linearized_prediction(
    k_train: Any,
    k_test_train: Any,
    y_train: Any,
    f0_train: Any,
    f0_test: Any,
    *,
    ridge: float = 0.0,
    on_singular: str = "lstsq",
) -> np.ndarray:
    """Prediction of the linearised network trained to convergence on MSE:
    ``f0(X*) + K*(K + ridge·mean(diag K)·I)⁻¹ (Y − f0(X))``: ``[M, O]``.

    ``f0_train`` ``[N, O]`` and ``f0_test`` ``[M, O]`` are the network outputs at the
    parameters where the kernel was taken.
    """
    y = _f64("y_train", y_train)
    f0 = _f64("f0_train", f0_train)
    f0s = _f64("f0_test", f0_test)
    if f0.shape != y.shape:
        raise ValueError(f"f0_train: shape {f0.shape} must match y_train {y.shape}")
    pred = kernel_regression(k_train, k_test_train, y - f0, ridge=ridge, on_singular=on_singular)
    if f0s.shape != pred.shape:
        raise ValueError(f"f0_test: expected shape {pred.shape}, got {f0s.shape}")
    return f0s + pred


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of rows whose argmax matches ``labels`` (int ``[M]`` or one-hot ``[M, O]``)."""
    p = np.asarray(pred)
    t = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"pred: expected [M, O], got shape {p.shape}")
    if t.ndim == 2:
        t = np.argmax(t, axis=1)
    if t.shape != (p.shape[0],):
        raise ValueError(f"labels: expected [{p.shape[0]}] ints or one-hot, got {t.shape}")
    return float(np.mean(np.argmax(p, axis=1) == t))
