"""Look-ahead active learning through the linearised network (Mohamadi, Bae, Sutherland,
NeurIPS 2022, "Making Look-Ahead Active Learning Strategies Feasible with Neural Tangent
Kernels").

The network ``f0`` is linearised at its current weights and trained to convergence on the
labelled set L with the squared loss. Its outputs on a pool subset U are

    f_L(U) = f0(U) + K_UL (K_LL + λI)⁻¹ (Y_L − f0(L)).

Adding one candidate x with a label ŷ grows the system by one block row. By the block
(Schur-complement) inverse, with ``b = K_Lx``, ``V = (K_LL + λI)⁻¹ b`` and
``S = K_xx + λI − bᵀV``, the new outputs are, exactly,

    f_{L+x}(U) = f_L(U) + (K_Ux − K_UL V) S⁻¹ (ŷ − f_L(x)),

so scoring every candidate needs one factorisation of ``K_LL`` and one solve against all
candidates' columns, never a refactorisation. With the pNTK (``[N, N]``, used as pNTK ⊗ I_O,
one system for all O output columns) ``S`` is a scalar; with the eNTK (``[N, N, O, O]``, the
NO×NO system, sample-major) it is an O×O block.

Acquisition scores (:class:`LookAhead`): ``changes``, the number of points of U whose
predicted class (argmax) differs between ``f_L(U)`` and ``f_{L+x}(U)``, as published, and
``l2_change``, ``‖f_{L+x}(U) − f_L(U)‖_F``. By default a candidate's label ŷ is the one-hot
class the network ``f0`` predicts for it, as published. Targets are one-hot and not centred:
the squared loss ``½‖f(x) − onehot(y)‖²`` a network is trained with has exactly these targets
as its fixed point, and the linearised network converges to the same one.

All solves run on the host in float64 (numpy/scipy) whatever the kernels' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import scipy.linalg

from ntk import checks

__all__ = ["LookAhead", "lookahead", "lookahead_from_kernels", "SCORES"]

SCORES = ("changes", "l2_change")
# float64 entries of the per-chunk intermediates (the [u, q, c, q] kernel block and the
# [c, u, O] changes) allowed when chunk_size is None: 2**25 · 8 bytes = 256 MiB
_CHUNK_ENTRIES = 2**25


@dataclass(frozen=True)
class LookAhead:
    """The look-ahead of every candidate.

    Attributes:
      changes: ``[C]`` int, the points of U whose predicted class changes when the candidate
        joins L with its label (the published score).
      l2_change: ``[C]``, ``‖f_{L+x}(U) − f_L(U)‖_F`` over U's points and outputs.
      predictions: ``[U, O]``, ``f_L(U)``: the linearised network trained on L.
      candidate_predictions: ``[C, O]``, ``f_L(x)`` at each candidate.
      candidate_targets: ``[C, O]``, the labels ŷ the candidates were scored with.
      schur_min: ``[C]``, the smallest eigenvalue of each candidate's Schur complement ``S``
        (a scalar for the pNTK): how much of the candidate the kernel on L does not explain.
      deltas: ``[C, U, O]``, ``f_{L+x}(U) − f_L(U)`` (only with ``return_deltas=True``).
      ridge: the absolute ridge λ added to the diagonal.
    """

    changes: np.ndarray
    l2_change: np.ndarray
    predictions: np.ndarray
    candidate_predictions: np.ndarray
    candidate_targets: np.ndarray
    schur_min: np.ndarray
    ridge: float
    deltas: np.ndarray | None = None

    def select(self, batch: int, score: str = "changes") -> np.ndarray:
        """``[batch]`` candidate indices with the highest ``score``, best first. Ties in
        ``changes`` (counts tie often) are broken by ``l2_change``, then by index."""
        if score not in SCORES:
            raise ValueError(f"score: unknown value {score!r}; valid: {list(SCORES)}")
        n = len(self.changes)
        if isinstance(batch, bool) or not isinstance(batch, int | np.integer):
            raise TypeError(f"batch: expected an int, got {batch!r}")
        if not 0 < batch <= n:
            raise ValueError(f"batch: must be in [1, {n}] (the number of candidates), got {batch}")
        keys = (np.arange(n), -self.l2_change)  # np.lexsort: the last key is the primary one
        if score == "changes":
            keys = (*keys, -self.changes)
        return np.lexsort(keys)[:batch]


# --- argument checks -------------------------------------------------------------------------


def _f64(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or Inf (shape {a.shape})")
    return a


def _check_ridge(ridge: Any) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, int | float | np.number):
        raise TypeError(f"ridge: expected a number >= 0, got {ridge!r}")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge: must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def _targets(name: str, y: Any, n: int, o: int) -> np.ndarray:
    """``[n, O]`` float64 targets from int labels ``[n]`` (one-hot) or an ``[n, O]`` array."""
    a = np.asarray(y)
    if a.ndim == 1:
        if a.shape != (n,):
            raise ValueError(
                f"{name}: expected [{n}] int labels or [{n}, {o}] targets, got {a.shape}"
            )
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: 1-D labels must be ints, got dtype {a.dtype}")
        bad = (a < 0) | (a >= o)
        if np.any(bad):
            raise ValueError(
                f"{name}: labels must be in [0, {o}) (O = {o} outputs); got {a[bad][:5].tolist()} "
                f"at rows {np.flatnonzero(bad)[:5].tolist()}"
            )
        return np.eye(o)[a]
    if a.shape != (n, o):
        raise ValueError(f"{name}: expected [{n}] int labels or [{n}, {o}] targets, got {a.shape}")
    return _f64(name, a)


def _block_size(k_ll: np.ndarray) -> int:
    """q, the kernel's block size: 1 for an ``[N, N]`` kernel, O for an ``[N, N, O, O]`` eNTK."""
    if k_ll.ndim == 2 and k_ll.shape[0] == k_ll.shape[1]:
        return 1
    if k_ll.ndim == 4 and k_ll.shape[0] == k_ll.shape[1] and k_ll.shape[2] == k_ll.shape[3]:
        return k_ll.shape[2]
    raise ValueError(f"k_ll: expected a square [N, N] or [N, N, O, O] kernel, got {k_ll.shape}")


def _as_blocks(name: str, k: Any, rows: int, cols: int, q: int) -> np.ndarray:
    """``[rows, q, cols, q]`` float64 blocks of an ``[rows, cols]`` or ``[rows, cols, q, q]``
    kernel (checked against the shapes expected)."""
    a = _f64(name, k)
    want = (rows, cols) if q == 1 else (rows, cols, q, q)
    if a.shape != want:
        raise ValueError(f"{name}: expected {list(want)} to match k_ll, got {a.shape}")
    return a[:, None, :, None] if q == 1 else a.transpose(0, 2, 1, 3)


def _candidate_diagonal(k_cc: Any, c: int, q: int) -> np.ndarray:
    """``[C, q, q]`` blocks K(x, x) from ``k_cc``: the diagonal (``[C]`` / ``[C, O, O]``) or
    the whole candidate kernel (``[C, C]`` / ``[C, C, O, O]``)."""
    a = _f64("k_cc", k_cc)
    diag, full = ((c,), (c, c)) if q == 1 else ((c, q, q), (c, c, q, q))
    if a.shape == full:
        a = a[np.arange(c), np.arange(c)]
    elif a.shape != diag:
        raise ValueError(
            f"k_cc: expected the candidates' diagonal {list(diag)} or their kernel {list(full)} "
            f"to match k_ll and k_lc, got {a.shape}"
        )
    return a.reshape(c, q, q)


# --- the computation ------------------------------------------------------------------------


@dataclass
class _Labelled:
    """What every candidate shares: the factor of ``K_LL + λI``, ``α = (K_LL + λI)⁻¹(Y − f0)``
    and ``K_UL`` as a matrix."""

    factor: tuple
    alpha_Kt: np.ndarray  # [n·q, t]
    k_ul_UK: np.ndarray  # [u·q, n·q]
    ridge: float
    q: int
    o: int


def _factor(k_ll_nqnq: np.ndarray, ridge: float) -> tuple[tuple, float]:
    n, q = k_ll_nqnq.shape[:2]
    a = k_ll_nqnq.reshape(n * q, n * q)
    a = 0.5 * (a + a.T)
    lam = ridge * float(np.mean(np.diag(a)))
    try:
        return scipy.linalg.cho_factor(a + lam * np.eye(n * q), lower=True), lam
    except np.linalg.LinAlgError as error:
        raise np.linalg.LinAlgError(
            f"k_ll: K_LL + ridge·mean(diag)·I ({n * q}×{n * q}, ridge {ridge:g}) is not positive "
            "definite (Cholesky failed); the kernel is singular on the labelled points (a "
            "duplicate point, or fewer parameters than N·O for the eNTK): pass ridge > 0"
        ) from error


def _chunk(
    lab: _Labelled,
    k_lc_KCq: np.ndarray,  # [n·q, c, q]
    k_cc_Cqq: np.ndarray,  # [c, q, q]
    k_uc_UqCq: np.ndarray,  # [u, q, c, q]
    f0_c_CO: np.ndarray,
    yhat_CO: np.ndarray,
    base_UO: np.ndarray,
    offset: int,
    want_deltas: bool,
) -> dict:
    """The look-ahead of one chunk of candidates (module docstring), all at once."""
    q, o = lab.q, lab.o
    t = o // q  # target columns: O for the pNTK (q = 1), 1 for the eNTK (q = O)
    c = k_lc_KCq.shape[1]
    u = k_uc_UqCq.shape[0]
    v_KCq = scipy.linalg.cho_solve(lab.factor, k_lc_KCq.reshape(-1, c * q)).reshape(-1, c, q)
    s_Cqq = k_cc_Cqq + lab.ridge * np.eye(q) - np.einsum("kci,kcj->cij", k_lc_KCq, v_KCq)
    s_Cqq = 0.5 * (s_Cqq + s_Cqq.transpose(0, 2, 1))
    s_min_C = np.linalg.eigvalsh(s_Cqq)[:, 0]
    scale = max(float(np.max(np.abs(k_cc_Cqq))), np.finfo(np.float64).tiny)
    bad = s_min_C <= 10 * lab.alpha_Kt.shape[0] * np.finfo(np.float64).eps * scale
    if np.any(bad):
        idx = (np.flatnonzero(bad)[:5] + offset).tolist()
        raise np.linalg.LinAlgError(
            f"x_candidates: the Schur complement K_xx + λ − K_xL (K_LL + λI)⁻¹ K_Lx is not "
            f"positive for candidates {idx} (smallest {float(np.min(s_min_C)):.3e}): the "
            "kernel on L already spans them (e.g. a candidate equal to a labelled point); "
            "pass ridge > 0"
        )
    pred_CO = f0_c_CO + np.einsum("kci,kt->cit", k_lc_KCq, lab.alpha_Kt).reshape(c, o)
    rho_Cqt = (yhat_CO - pred_CO).reshape(c, q, t)
    e_Cqt = np.linalg.solve(s_Cqq, rho_Cqt)
    if q == 1:  # pNTK: W = K_UL V first (2·U·N·C FLOPs), then (K_UC − W)[:, c] ⊗ e_c
        w_UC = lab.k_ul_UK @ v_KCq[:, :, 0]
        d_CUO = np.einsum("uc,ct->cut", k_uc_UqCq[:, 0, :, 0] - w_UC, e_Cqt[:, 0, :])
    else:  # eNTK: Z = V E first (K_UL V would cost O times more): 2·UO·NO·C
        z_KCt = np.einsum("kci,cit->kct", v_KCq, e_Cqt)
        d_CUO = np.einsum("uicj,cjt->cuit", k_uc_UqCq, e_Cqt).reshape(c, u, o)
        d_CUO -= (
            (lab.k_ul_UK @ z_KCt.reshape(-1, c * t))
            .reshape(u, q, c, t)
            .transpose(2, 0, 1, 3)
            .reshape(c, u, o)
        )
    base_U = np.argmax(base_UO, axis=1)
    changes_C = np.sum(np.argmax(base_UO[None] + d_CUO, axis=2) != base_U[None], axis=1)
    return {
        "changes": changes_C,
        "l2_change": np.sqrt(np.sum(d_CUO**2, axis=(1, 2))),
        "candidate_predictions": pred_CO,
        "schur_min": s_min_C,
        "deltas": d_CUO if want_deltas else None,
    }


def _gather(parts: list[dict], base_UO, yhat_CO, lam, want_deltas) -> LookAhead:
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "deltas"}
    deltas = np.concatenate([p["deltas"] for p in parts]) if want_deltas else None
    return LookAhead(
        changes=cat["changes"].astype(np.int64),
        l2_change=cat["l2_change"],
        predictions=base_UO,
        candidate_predictions=cat["candidate_predictions"],
        candidate_targets=yhat_CO,
        schur_min=cat["schur_min"],
        ridge=lam,
        deltas=deltas,
    )


def _default_chunk(u: int, q: int, o: int, n: int) -> int:
    per_candidate = u * q * q + u * o + 2 * n * q * q
    return max(1, _CHUNK_ENTRIES // per_candidate)


def _labelled(k_ll, k_ul, y_l, f0_l, f0_u, ridge) -> tuple[_Labelled, np.ndarray]:
    """Checks the labelled-side arguments and factors ``K_LL + λI``; returns the shared state
    and the base predictions ``f_L(U)`` ``[U, O]``."""
    k_ll = _f64("k_ll", k_ll)
    q = _block_size(k_ll)
    n = k_ll.shape[0]
    if n < 1:
        raise ValueError(
            f"k_ll, y_labelled: no labelled points (k_ll {k_ll.shape}, y_labelled "
            f"{np.shape(y_l)}); the look-ahead needs N >= 1"
        )
    f0_l = _f64("f0_labelled", f0_l)
    if f0_l.ndim != 2 or f0_l.shape[0] != n or (q > 1 and f0_l.shape[1] != q):
        want = f"[{n}, O]" if q == 1 else f"[{n}, {q}]"
        raise ValueError(
            f"f0_labelled: expected {want} outputs to match k_ll {k_ll.shape}, got {f0_l.shape}"
        )
    o = f0_l.shape[1]
    y_NO = _targets("y_labelled", y_l, n, o)
    f0_u = _f64("f0_pool", f0_u)
    if f0_u.ndim != 2 or f0_u.shape[1] != o:
        raise ValueError(f"f0_pool: expected [U, {o}] outputs, got {f0_u.shape}")
    u = f0_u.shape[0]
    if u < 1:
        raise ValueError(f"f0_pool, k_ul: no pool points (f0_pool {f0_u.shape}); need U >= 1")
    k_ul_UqKq = _as_blocks("k_ul", k_ul, u, n, q)
    factor, lam = _factor(_as_blocks("k_ll", k_ll, n, n, q), ridge)
    t = o // q
    alpha_Kt = scipy.linalg.cho_solve(factor, (y_NO - f0_l).reshape(n * q, t))
    k_ul_UK = k_ul_UqKq.reshape(u * q, n * q)
    base_UO = f0_u + (k_ul_UK @ alpha_Kt).reshape(u, o)
    return _Labelled(factor, alpha_Kt, k_ul_UK, lam, q, o), base_UO


def _candidate_targets(labels, f0_c_CO: np.ndarray) -> np.ndarray:
    c, o = f0_c_CO.shape
    if labels is None:  # the network's own predicted class, as published
        return np.eye(o)[np.argmax(f0_c_CO, axis=1)]
    return _targets("candidate_labels", labels, c, o)


def lookahead_from_kernels(
    k_ll: Any,
    k_lc: Any,
    k_cc: Any,
    k_ul: Any,
    k_uc: Any,
    y_labelled: Any,
    f0_labelled: Any,
    f0_candidates: Any,
    f0_pool: Any,
    *,
    candidate_labels: Any = None,
    ridge: float = 0.0,
    chunk_size: int | None = None,
    return_deltas: bool = False,
) -> LookAhead:
    """Look-ahead scores of every candidate from precomputed kernels (module docstring).

    Kernels are all ``[N1, N2]`` (the pNTK or any N×N kind, used as ``K ⊗ I_O``) or all
    ``[N1, N2, O, O]`` (the eNTK), with L the labelled points (N of them), C the candidates
    and U the pool subset whose predicted classes are counted.

    Args:
      k_ll: ``[N, N]`` or ``[N, N, O, O]``, K(L, L).
      k_lc: ``[N, C]`` or ``[N, C, O, O]``, K(L, C).
      k_cc: the candidates' diagonal ``[C]`` / ``[C, O, O]`` (K(x, x) for each), or their
        whole kernel ``[C, C]`` / ``[C, C, O, O]`` (its diagonal is used).
      k_ul: ``[U, N]`` or ``[U, N, O, O]``, K(U, L).
      k_uc: ``[U, C]`` or ``[U, C, O, O]``, K(U, C).
      y_labelled: ``[N]`` int labels (one-hot targets) or ``[N, O]`` targets.
      f0_labelled, f0_candidates, f0_pool: ``[N, O]``, ``[C, O]``, ``[U, O]``, the network's
        outputs at the weights where the kernels were taken.
      candidate_labels: ``[C]`` ints or ``[C, O]`` targets; ``None``: the one-hot class
        ``argmax f0(x)`` the network predicts (as published).
      ridge: relative ridge ≥ 0: ``λ = ridge · mean(diag K_LL)`` is added to the diagonal of
        ``K_LL`` and of each ``K_xx`` (λ is fixed by L, so adding x gives exactly the
        system ``K_{L+x} + λI``).
      chunk_size: candidates per chunk (memory ∝ chunk · U · O²); None: chunks of about 256 MiB.
      return_deltas: also return ``deltas`` ``[C, U, O]``.

    Returns:
      A :class:`LookAhead`; ``.select(batch)`` gives the query.

    Raises:
      ValueError / TypeError: shapes that do not match (named, with the shapes), labels out
        of range, NaN/Inf, a negative ridge or a bad chunk size.
      numpy.linalg.LinAlgError: ``K_LL + λI`` not positive definite, or a candidate's Schur
        complement not positive (both need ``ridge > 0``).

    Example:
      >>> import numpy as np, ntk
      >>> x = np.random.default_rng(0).normal(size=(7, 3)); k = x @ x.T + np.eye(7)
      >>> f0 = np.zeros((7, 2)); L, C, U = [0, 1], [2, 3, 4], [5, 6]
      >>> la = ntk.lookahead_from_kernels(k[np.ix_(L, L)], k[np.ix_(L, C)], np.diag(k)[C],
      ...     k[np.ix_(U, L)], k[np.ix_(U, C)], [0, 1], f0[L], f0[C], f0[U],
      ...     candidate_labels=[1, 0, 1])
      >>> la.changes.shape, la.select(2).shape
      ((3,), (2,))
    """
    lam = _check_ridge(ridge)
    checks.check_optional_count("chunk_size", chunk_size)
    f0_c = _f64("f0_candidates", f0_candidates)
    if f0_c.ndim == 2 and f0_c.shape[0] < 1:
        raise ValueError(
            f"f0_candidates, k_lc: no candidates (f0_candidates {f0_c.shape}, k_lc "
            f"{np.shape(k_lc)}); the look-ahead needs C >= 1"
        )
    lab, base_UO = _labelled(k_ll, k_ul, y_labelled, f0_labelled, f0_pool, lam)
    n, u, q, o = lab.alpha_Kt.shape[0] // lab.q, base_UO.shape[0], lab.q, lab.o
    if f0_c.ndim != 2 or f0_c.shape[1] != o:
        raise ValueError(f"f0_candidates: expected [C, {o}] outputs, got {f0_c.shape}")
    c = f0_c.shape[0]
    yhat_CO = _candidate_targets(candidate_labels, f0_c)
    k_lc_KCq = _as_blocks("k_lc", k_lc, n, c, q).reshape(n * q, c, q)
    k_uc_UqCq = _as_blocks("k_uc", k_uc, u, c, q)
    k_cc_Cqq = _candidate_diagonal(k_cc, c, q)
    step = chunk_size or _default_chunk(u, q, o, n)
    parts = [
        _chunk(
            lab,
            k_lc_KCq[:, s : s + step],
            k_cc_Cqq[s : s + step],
            k_uc_UqCq[:, :, s : s + step],
            f0_c[s : s + step],
            yhat_CO[s : s + step],
            base_UO,
            s,
            return_deltas,
        )
        for s in range(0, c, step)
    ]
    return _gather(parts, base_UO, yhat_CO, lab.ridge, return_deltas)


def _batch_len(name: str, x: Any) -> int:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError(f"{name}: no array leaves")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            f"{name}: leaves must share a leading batch axis, got sizes {sorted(sizes)}"
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name}: empty batch")
    return n


def _rows(x: Any, start: int, stop: int, pad_to: int | None = None) -> Any:
    """Rows ``start:stop`` of every leaf, padded (repeating the last row) to ``pad_to`` rows
    so that every chunk has one shape (one compile)."""

    def take(a):
        a = a[start:stop]
        if pad_to is not None and a.shape[0] < pad_to:
            a = np.concatenate(
                [np.asarray(a), np.repeat(np.asarray(a[-1:]), pad_to - a.shape[0], 0)]
            )
        return a

    return jax.tree_util.tree_map(take, x)


@dataclass(frozen=True)
class _Outputs:
    """The network's outputs ``[m, O]`` (float64) on ``m`` rows, ``chunk`` rows a call."""

    apply_fn: Any
    params: Any
    chunk: int
    kwargs: dict

    def __call__(self, x: Any, m: int) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(self.apply_fn(self.params, _rows(x, s, s + self.chunk), **self.kwargs))
                for s in range(0, m, self.chunk)
            ]
        ).astype(np.float64)


def _check_call(kernel, params, xs, y_labelled, candidate_labels, ridge, chunk_size, kwargs):
    """Every check of :func:`lookahead`'s arguments, before any output or kernel is
    computed (the number of outputs O from ``jax.eval_shape`` of one labelled row): returns
    ``(N, C, U, ridge, y_labelled as [N, O] targets)``."""
    apply_fn = getattr(kernel, "apply_fn", None)
    if not callable(kernel) or apply_fn is None:
        raise TypeError(
            f"kernel: expected a kernel function from ntk.kernel_fn(apply_fn, kind=...), got "
            f"{type(kernel).__name__} (precomputed kernels: ntk.lookahead_from_kernels)"
        )
    checks.check_optional_count("chunk_size", chunk_size)
    lam = _check_ridge(ridge)
    n, c, u = (
        _batch_len(k, x) for k, x in zip(("x_labelled", "x_candidates", "x_pool"), xs, strict=True)
    )
    shape = jax.eval_shape(lambda x: apply_fn(params, x, **kwargs), _rows(xs[0], 0, 1)).shape
    if len(shape) != 2:
        raise ValueError(f"kernel.apply_fn: expected [batch, O] outputs, got {shape} for 1 row")
    y_NO = _targets("y_labelled", y_labelled, n, shape[1])
    if candidate_labels is not None:
        _targets("candidate_labels", candidate_labels, c, shape[1])
    return n, c, u, lam, y_NO


def lookahead(
    kernel: Any,
    params: Any,
    x_labelled: Any,
    y_labelled: Any,
    x_candidates: Any,
    x_pool: Any,
    *,
    candidate_labels: Any = None,
    ridge: float = 0.0,
    chunk_size: int = 256,
    return_deltas: bool = False,
    **apply_kwargs: Any,
) -> LookAhead:
    """Look-ahead scores of every candidate for any model, through its kernel function.

    The network outputs come from ``kernel.apply_fn(params, x, **apply_kwargs)`` and the
    kernels from ``kernel`` (built by :func:`ntk.kernel_fn`: ``kind="pntk"`` for the N×N
    look-ahead, ``"entk"`` for the full NO×NO one; any N×N kind works as ``K ⊗ I_O``).
    K(L, L), K(L, C) and K(U, L) are computed once; K(U, C) and the candidates' diagonal
    chunk by chunk (``chunk_size`` candidates, the last chunk padded so all chunks share one
    compile). The kernels are in the model's dtype (float64 params and inputs under
    ``jax.enable_x64`` for float64 kernels); the solves are float64 either way.

    Args:
      kernel: a kernel function from :func:`ntk.kernel_fn`.
      params: the model's parameters (the linearisation point).
      x_labelled: ``[N, ...]`` labelled inputs (a pytree of arrays sharing the batch axis).
      y_labelled: ``[N]`` int labels or ``[N, O]`` targets.
      x_candidates: ``[C, ...]`` candidates to score.
      x_pool: ``[U, ...]`` the pool subset whose predicted classes are counted.
      candidate_labels, ridge, return_deltas: as in :func:`lookahead_from_kernels`.
      chunk_size: candidates per chunk.
      **apply_kwargs: model state for ``apply_fn`` (e.g. ``batch_stats``).

    Returns:
      A :class:`LookAhead` (shapes in its docstring).

    Example:
      >>> import jax, jax.numpy as jnp, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> p = {"w1": jax.random.normal(k1, (4, 32)), "w2": jax.random.normal(k2, (32, 3))}
      >>> x = jax.random.normal(k3, (30, 4))
      >>> la = ntk.lookahead(ntk.kernel_fn(f, kind="pntk"), p, x[:5], [0, 1, 2, 0, 1],
      ...                    x[5:15], x[15:], ridge=1e-6)
      >>> la.changes.shape, la.predictions.shape
      ((10,), (15, 3))
    """
    n, c, u, lam, y_NO = _check_call(
        kernel, params, (x_labelled, x_candidates, x_pool), y_labelled, candidate_labels,
        ridge, chunk_size, apply_kwargs,
    )  # fmt: skip
    outputs = _Outputs(kernel.apply_fn, params, chunk_size, apply_kwargs)
    f0_l, f0_u, f0_c = outputs(x_labelled, n), outputs(x_pool, u), outputs(x_candidates, c)
    yhat_CO = _candidate_targets(candidate_labels, f0_c)
    k_ll = np.asarray(kernel(params, x_labelled, **apply_kwargs))
    if k_ll.ndim not in (2, 4):
        raise ValueError(
            f"kernel: kind {getattr(kernel, 'kind', '?')!r} gives {k_ll.shape}; the look-ahead "
            "needs an [N, N] kind (pntk, trace, ...) or the [N, N, O, O] eNTK"
        )
    k_ul = np.asarray(kernel(params, x_pool, x_labelled, **apply_kwargs))
    lab, base_UO = _labelled(k_ll, k_ul, y_NO, f0_l, f0_u, lam)
    parts = []
    for s in range(0, c, chunk_size):
        m = min(chunk_size, c - s)
        xc = _rows(x_candidates, s, s + chunk_size, pad_to=min(chunk_size, c))
        k_lc = np.asarray(kernel(params, x_labelled, xc, **apply_kwargs))[:, :m]
        k_uc = np.asarray(kernel(params, x_pool, xc, **apply_kwargs))[:, :m]
        k_cc = np.asarray(kernel(params, xc, **apply_kwargs))[np.arange(m), np.arange(m)]
        parts.append(
            _chunk(
                lab,
                _as_blocks("k_lc", k_lc, n, m, lab.q).reshape(n * lab.q, m, lab.q),
                _candidate_diagonal(k_cc, m, lab.q),
                _as_blocks("k_uc", k_uc, u, m, lab.q),
                f0_c[s : s + m],
                yhat_CO[s : s + m],
                base_UO,
                s,
                return_deltas,
            )
        )
    return _gather(parts, base_UO, yhat_CO, lab.ridge, return_deltas)
