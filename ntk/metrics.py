"""How well an approximation matches the eNTK: Frobenius error and eigenspectra.

All metrics run on the host in float64 (numpy), whatever the kernels' dtype. Kernels follow the
library's layouts: the eNTK is ``[N1, N2, O, O]``, and its matrix form is ``[N1·O, N2·O]``
indexed sample-major (``n·O + o``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_f64(name: str, k: Any, ndims: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(k, dtype=np.float64)
    if arr.ndim not in ndims:
        raise ValueError(
            f"{name}: expected rank {' or '.join(map(str, ndims))}, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf (shape {arr.shape})")
    return arr


def _check_entk(name: str, k: Any) -> np.ndarray:
    arr = _as_f64(name, k, (4,))
    if arr.shape[2] != arr.shape[3]:
        raise ValueError(f"{name}: expected [N1, N2, O, O], got shape {arr.shape}")
    return arr


def as_matrix(entk_NNOO: Any) -> np.ndarray:
    """``[N1, N2, O, O] -> [N1·O, N2·O]``, sample-major."""
    k = _check_entk("entk", entk_NNOO)
    n1, n2, o, _ = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n1 * o, n2 * o)


def kron_identity(approx_NN: Any, o: int) -> np.ndarray:
    """``A ⊗ I_O`` in the sample-major layout: ``[N1, N2] -> [N1·O, N2·O]``."""
    a = _as_f64("approx", approx_NN, (2,))
    if isinstance(o, bool) or not isinstance(o, int | np.integer) or o <= 0:
        raise ValueError(f"o: expected a positive int, got {o!r}")
    return np.kron(a, np.eye(o))


def _approx_blocks(approx: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcasts an ``[N1,N2]``, ``[N1,N2,O]`` or ``[N1,N2,O,O]`` approximation to blocks."""
    a = _as_f64("approx", approx, (2, 3, 4))
    n1, n2, o, _ = shape
    expected = {2: (n1, n2), 3: (n1, n2, o), 4: (n1, n2, o, o)}[a.ndim]
    if a.shape != expected:
        raise ValueError(
            f"approx: shape {a.shape} does not match the eNTK {shape}; expected {expected}"
        )
    eye = np.eye(o)
    if a.ndim == 2:
        return a[:, :, None, None] * eye[None, None]
    if a.ndim == 3:
        return a[:, :, :, None] * eye[None, None]
    return a


def relative_frobenius_error(entk_NNOO: Any, approx: Any) -> float:
    """``‖Θ − A⊗I‖_F / ‖Θ‖_F``.

    Args:
      entk_NNOO: the eNTK ``[N1, N2, O, O]``.
      approx: ``[N1, N2]`` (compared as ``A ⊗ I_O``, e.g. the pNTK), ``[N1, N2, O]`` (a
        block-diagonal approximation) or ``[N1, N2, O, O]``.

    Returns:
      The relative error, a float ≥ 0.
    """
    k = _check_entk("entk", entk_NNOO)
    a = _approx_blocks(approx, k.shape)
    norm = np.linalg.norm(k)
    if norm == 0.0:
        raise ValueError("entk: the kernel is identically zero; relative error is undefined")
    return float(np.linalg.norm(k - a) / norm)


def psd_spectrum(name: str, m: np.ndarray, rtol: float | None) -> tuple[np.ndarray, int]:
    """Ascending eigenvalues of a symmetric PSD matrix; round-off negatives are set to 0.

    Negative eigenvalues with ``|λ| ≤ rtol·λ_max`` are round-off of a PSD kernel. A larger
    negative eigenvalue means the matrix is not a kernel Gram matrix, and raises.
    """
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"{name}: eigenvalues need a square kernel k(X, X), got {m.shape}")
    asym = np.linalg.norm(m - m.T) / max(np.linalg.norm(m), np.finfo(np.float64).tiny)
    if asym > 1e-5:
        raise ValueError(f"{name}: not symmetric (relative asymmetry {asym:.2e})")
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    lam_max = max(abs(eig[-1]), abs(eig[0]))
    tol = (rtol if rtol is not None else m.shape[0] * 1e-6) * lam_max
    if eig[0] < -tol:
        raise ValueError(
            f"{name}: eigenvalue {eig[0]:.3e} is below -{tol:.1e}; the matrix is not PSD"
        )
    n_neg = int(np.sum(eig < 0))
    return np.maximum(eig, 0.0), n_neg


def _rel(a: float, b: float) -> float:
    return float(abs(a - b) / abs(b)) if b != 0 else float("inf")


def _cond(eig: np.ndarray) -> float:
    return float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf")


def compare_spectra(entk_NNOO: Any, approx_NN: Any, *, rtol: float | None = None) -> dict:
    """Eigenspectrum of Θ(X, X) against that of ``A ⊗ I_O``.

    Args:
      entk_NNOO: ``[N, N, O, O]`` eNTK on one set of inputs.
      approx_NN: ``[N, N]`` approximation, e.g. the pNTK; its spectrum ⊗ I_O is each of its
        eigenvalues repeated O times.
      rtol: negative eigenvalues down to ``-rtol·λ_max`` are round-off (set to 0 and counted);
        default ``N·O·1e-6``, suited to float32 kernels.

    Returns:
      dict with ``eig_entk`` ``[N·O]`` and ``eig_approx`` ``[N·O]`` (ascending),
      ``lambda_max_rel_error``, ``lambda_min_rel_error`` (relative to the eNTK's),
      ``cond_entk``, ``cond_approx`` (``inf`` when λ_min is 0) and ``n_roundoff_negative``.
    """
    k = _check_entk("entk", entk_NNOO)
    n1, n2, o, _ = k.shape
    a = _as_f64("approx", approx_NN, (2,))
    if a.shape != (n1, n2):
        raise ValueError(f"approx: expected shape {(n1, n2)} to match the eNTK, got {a.shape}")
    eig_k, neg_k = psd_spectrum("entk", as_matrix(k), rtol)
    eig_a, neg_a = psd_spectrum("approx", a, rtol)
    eig_ak = np.repeat(eig_a, o)
    return {
        "eig_entk": eig_k,
        "eig_approx": eig_ak,
        "lambda_max_entk": float(eig_k[-1]),
        "lambda_max_approx": float(eig_ak[-1]),
        "lambda_min_entk": float(eig_k[0]),
        "lambda_min_approx": float(eig_ak[0]),
        "lambda_max_rel_error": _rel(eig_ak[-1], eig_k[-1]),
        "lambda_min_rel_error": _rel(eig_ak[0], eig_k[0]),
        "cond_entk": _cond(eig_k),
        "cond_approx": _cond(eig_ak),
        "n_roundoff_negative": neg_k + o * neg_a,
    }
