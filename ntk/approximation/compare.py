"""How a kind is compared with the eNTK, the same in memory and stored: its ``NO × NO``
embedding, its rank by parameter count, and the exact spectra and solves of kernels read whole
(one ``eigh`` per kernel serves its spectrum and every ridge)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ntk.approximation.inputs import Context
from ntk.metrics import psd_spectrum


def embed(a: np.ndarray, o: int) -> np.ndarray:
    """An approximation's blocks as ``[.., .., O, O]``: ``A ⊗ I_O`` or ``diag_o D[.., o]``."""
    eye = np.eye(o)
    return a[:, :, None, None] * eye if a.ndim == 2 else a[:, :, :, None] * eye


def psd_extremes(name: str, lam_max: float, lam_min: float, dim: int, notes: list):
    """λ_min of a PSD kernel: round-off negatives down to ``-dim·1e-6·λ_max`` read as 0 (as
    :func:`ntk.compare_spectra`); below that, a note."""
    if lam_min < 0:
        if -lam_min <= dim * 1e-6 * abs(lam_max):
            lam_min = 0.0
        else:
            notes.append(f"{name}: λ_min {lam_min:.3e} < 0 beyond round-off; not PSD")
    return lam_max, lam_min


def regressions(ctx: Context, solve: Callable[[str, float], np.ndarray | None]) -> dict:
    """``{(name, ridge): predictions [M, O] or None}`` for the eNTK and every kind."""
    if ctx.y is None:
        return {}
    return {(name, r): solve(name, r) for name in ("entk", *ctx.kinds) for r in ctx.ridges}


def rank_zeros(name: str, n: int, o: int, n_params: int, options: dict) -> int:
    """How many eigenvalues of a kernel on ``n`` points are 0 by rank alone. Each kernel is a
    sum of ``r`` Gram matrices ``J Jᵀ`` of Jacobians with ``n_params`` columns, so its rank is
    at most ``r·n_params``: ``r = 1`` for the eNTK (``NO × NO``), the pNTK and a single logit,
    ``O`` for the trace, ``n_projections`` for a random projection; ``diagonal``'s O kernels
    ``D[..., o]`` are one Gram matrix each."""
    if name == "entk":
        return max(0, n * o - n_params)
    if name == "diagonal":
        return o * max(0, n - n_params)
    r = {"trace": o, "random_projection": options.get("n_projections", 1)}.get(name, 1)
    return max(0, n - r * n_params)


def rank_note(name: str, zeros: int, dim: int, n_params: int) -> str:
    return (
        f"{name}: rank ≤ {dim - zeros} (from the {n_params} parameters) < its dimension {dim}: "
        f"its {zeros} smallest eigenvalues are 0 exactly (λ_min = 0, cond = ∞)"
    )


def sym_eig(name: str, m: np.ndarray, vectors: bool, zeros: int = 0):
    """``(eigenvalues, solver)`` of a symmetric PSD kernel matrix ``m``: ascending
    eigenvalues as :func:`ntk.metrics.psd_spectrum` gives them (round-off negatives set to 0; a
    matrix that is not PSD beyond round-off, or not symmetric, raises), the ``zeros``
    smallest set to 0 (they are 0 by rank; see :func:`rank_zeros`) and, with ``vectors``,
    ``solver(k_st, y, ridge) -> (k_st (M + ridge·mean(diag M)·I)⁻¹ y, singular)`` from the
    same decomposition: a ridge shifts the eigenvalues only, so one ``eigh`` serves the
    spectrum and every ridge (the solve of :func:`ntk.kernel_regression`: the same
    symmetrisation, relative ridge and minimum-norm least-squares cutoff; the zero
    eigenvalues are cut off too)."""
    if not vectors:
        eig = psd_spectrum(name, m, None)[0]
        eig[:zeros] = 0.0
        return eig, None
    asym = np.linalg.norm(m - m.T) / max(np.linalg.norm(m), np.finfo(np.float64).tiny)
    if asym > 1e-5:
        raise ValueError(f"{name}: not symmetric (relative asymmetry {asym:.2e})")
    a = 0.5 * (m + m.T)
    eig, vec = np.linalg.eigh(a)
    tol = m.shape[0] * 1e-6 * max(abs(eig[-1]), abs(eig[0]))
    if eig[0] < -tol:
        raise ValueError(f"{name}: eigenvalue {eig[0]:.3e} is below -{tol:.1e}; not PSD")
    eig[:zeros] = 0.0
    mean_diag = float(np.mean(np.diag(a)))

    def solver(k_st: np.ndarray, y: np.ndarray, ridge: float):
        e = eig + ridge * mean_diag
        lam_max = float(np.max(np.abs(e)))
        cutoff = len(e) * np.finfo(np.float64).eps * lam_max
        keep = e > cutoff
        inv = np.where(keep, 1.0 / np.where(keep, e, 1.0), 0.0)
        return k_st @ (vec @ (inv[:, None] * (vec.T @ y))), lam_max == 0.0 or e[0] <= cutoff

    return np.maximum(eig, 0.0), solver


def nn_eig(name: str, k_tt: np.ndarray, o: int, vectors: bool, zeros: int):
    """``(eigenvalues ascending, solver or [solver per output])`` of an approximation kind's
    training kernel: ``[N, N]`` as one matrix, ``diagonal`` ``[N, N, O]`` as O of them."""
    if k_tt.ndim == 2:
        return sym_eig(name, k_tt, vectors, zeros)
    parts = [sym_eig(f"{name}[..., {q}]", k_tt[:, :, q], vectors, zeros // o) for q in range(o)]
    return np.sort(np.concatenate([p[0] for p in parts])), [p[1] for p in parts]


def nn_prediction(solver, d_NO: np.ndarray | None, k_st: np.ndarray, y: np.ndarray, r: float):
    """``(predictions [M, O], singular)`` of an approximation kind from :func:`nn_eig`'s
    solver(s): one N × N system for all outputs, or (``diagonal``, whose training kernel's
    diagonal is ``d_NO`` ``[N, O]``) one per output with the ridge relative to the NO × NO
    diagonal."""
    if d_NO is None:
        return solver(k_st, y, r)
    o = d_NO.shape[1]
    pred, singular = np.empty((k_st.shape[0], o)), False
    for q in range(o):
        scale = np.mean(d_NO) / np.mean(d_NO[:, q]) if np.mean(d_NO[:, q]) > 0 else 1.0
        p_q, s_q = solver[q](k_st[:, :, q], y[:, q : q + 1], r * scale)
        pred[:, q], singular = p_q[:, 0], singular or s_q
    return pred, singular


def diag_NO(k_tt: np.ndarray) -> np.ndarray | None:
    """The diagonal ``[N, O]`` of diagonal's ``[N, N, O]`` training kernel; None for ``[N, N]``."""
    return np.einsum("nnq->nq", k_tt) if k_tt.ndim == 3 else None


def singular_note(name: str, r: float) -> str:
    return (
        f"{name}, ridge {r:g}: singular to working precision; minimum-norm least-squares solution"
    )
