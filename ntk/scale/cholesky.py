"""Out-of-core Cholesky factor of a stored symmetric kernel, and what it gives: the smallest
eigenvalues (Lanczos on ``K⁻¹``) and exact solves with ``K``.

``K`` is a symmetric stored kernel (:func:`ntk.open_kernel` of a store computed with
``x2=None``): ``[N, N]``, or ``[N, N, O, O]`` read as the ``NO × NO`` matrix (sample-major, as
:func:`ntk.as_matrix`). ``K = L Lᵀ`` is computed left-looking, one column panel at a time: panel
``j`` holds the columns of the store's sample block ``j`` and the rows from its diagonal down,
``[D − c_j, w_j]`` float64 (``c_j`` its first column, ``w_j = B·O`` its width). Making panel ``j``
reads the store's blocks of its column once and every earlier panel once, so memory holds two
panels (``≤ 2·D·B·O·8`` bytes) whatever ``N``; the work is ``D³/3`` FLOPs (plus terms in
``D²·w``), nearly all in matrix products. Each finished panel is written atomically to
``path/panel_J.npy``: a run that is stopped resumes from the first missing panel.

A pivot that is not positive (``K`` is not positive definite in float64) raises
:class:`NotPositiveDefinite`; the panels written so far stay on disk and are valid.

Example:
  >>> import tempfile, jax, numpy as np, ntk
  >>> from ntk.scale.cholesky import factor, smallest_eigenvalues
  >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  >>> p = {"w": jax.random.normal(k1, (3, 40)), "v": jax.random.normal(k2, (40, 2)) / 40}
  >>> f = lambda p, x: jax.numpy.tanh(x @ p["w"]) @ p["v"]
  >>> x = jax.random.normal(k3, (6, 3))
  >>> d = tempfile.mkdtemp()
  >>> k = ntk.open_kernel(ntk.store_kernel(f, p, x, path=d + "/k", kind="entk", block_size=4,
  ...                                      progress=False))
  >>> lam = smallest_eigenvalues(factor(k, d + "/L", progress=False), k=1)["smallest"][0]
  >>> exact = np.linalg.eigvalsh(ntk.as_matrix(np.asarray(k, np.float64)))[0]
  >>> bool(np.isclose(lam, exact, rtol=1e-8))
  True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ntk import atomic
from ntk.scale.blocks import progress_bar

__all__ = ["NotPositiveDefinite", "StoredCholesky", "factor", "smallest_eigenvalues"]

_META = "cholesky_meta.json"
_ROWS = 4096  # rows per matrix product while updating a panel: bounds the temporaries


class NotPositiveDefinite(np.linalg.LinAlgError):
    """A pivot of the factor was not positive: ``K`` is singular (or indefinite) to float64
    working precision. ``column`` is the first column (of ``D``) that failed."""

    def __init__(self, message: str, column: int):
        super().__init__(message)
        self.column = column


def _layout(kernel) -> tuple[int, int, list[int]]:
    """``(D, O, panel starts + [D])`` of a square symmetric stored kernel."""
    shape = tuple(kernel.shape)
    if len(shape) == 2 and shape[0] == shape[1]:
        o = 1
    elif len(shape) == 4 and shape[0] == shape[1] and shape[2] == shape[3]:
        o = shape[2]
    else:
        raise ValueError(f"kernel: expected a square [N, N] or [N, N, O, O] store, got {shape}")
    if not kernel.symmetric:
        raise ValueError("kernel: the factor needs a symmetric store (computed with x2=None)")
    n, b = shape[0], kernel.block_size
    starts = [s * o for s in range(0, n, b)] + [n * o]
    return n * o, o, starts


def _matrix_block(kernel, o: int, i: int, j: int) -> np.ndarray:
    """Block ``(i, j)`` of the ``D × D`` matrix in float64, from the upper-triangle store."""
    blk = kernel.block(min(i, j), max(i, j)).astype(np.float64)
    if o > 1:
        r, c = blk.shape[:2]
        blk = blk.transpose(0, 2, 1, 3).reshape(r * o, c * o)
    return blk.T if i > j else blk


class StoredCholesky:
    """``K = L Lᵀ`` as panels on disk (see the module docstring). ``solve(v)`` applies
    ``K⁻¹`` to ``[D]`` or ``[D, C]``, reading each panel twice; with ``cache=True`` the panels
    are kept in memory after the first read (``nbytes`` of them)."""

    def __init__(self, path: Path, starts: list[int], cache: bool):
        self.path = path
        self.starts = starts
        self.dim = starts[-1]
        self.shape = (self.dim, self.dim)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    @property
    def nbytes(self) -> int:
        return sum(
            (self.dim - c) * (e - c) * 8 for c, e in zip(self.starts, self.starts[1:], strict=False)
        )

    def panel(self, j: int) -> np.ndarray:
        """Panel ``j``: rows ``c_j:D`` of columns ``c_j:c_{j+1}`` of ``L``, ``[D − c_j, w_j]``."""
        if self._cache is not None and j in self._cache:
            return self._cache[j]
        p = np.load(self.path / f"panel_{j}.npy")
        if self._cache is not None:
            self._cache[j] = p
        return p

    def solve(self, v: Any) -> np.ndarray:
        """``K⁻¹ v`` for ``v`` ``[D]`` or ``[D, C]`` (float64): ``L y = v``, then ``Lᵀ x = y``."""
        from scipy.linalg import solve_triangular

        v = np.asarray(v, np.float64)
        if v.shape[0] != self.dim or v.ndim not in (1, 2):
            raise ValueError(f"v: expected [D] or [D, C] with D = {self.dim}, got {v.shape}")
        y = v.reshape(self.dim, -1).copy()
        bounds = list(zip(self.starts, self.starts[1:], strict=False))
        for j, (c, e) in enumerate(bounds):  # forward: column panels in order
            p = self.panel(j)
            w = e - c
            y[c:e] = solve_triangular(p[:w], y[c:e], lower=True, check_finite=False)
            y[e:] -= p[w:] @ y[c:e]
        for j in reversed(range(len(bounds))):  # backward with Lᵀ: panels in reverse
            c, e = bounds[j]
            p = self.panel(j)
            w = e - c
            rhs = y[c:e] - p[w:].T @ y[e:]
            y[c:e] = solve_triangular(p[:w], rhs, lower=True, trans="T", check_finite=False)
        return y.reshape(v.shape)


def _claim(path: Path, kernel, starts: list[int], shift: float) -> None:
    """``path/_META`` written if new; a factor of another kernel or layout there is refused."""
    path.mkdir(parents=True, exist_ok=True)
    ident = ("kind", "shape", "dtype", "params_sha256", "x1_sha256", "kind_options")
    meta = {"format": "ntk.cholesky/1", "kernel": {k: kernel.meta.get(k) for k in ident},
            "starts": starts, "shift": float(shift)}  # fmt: skip
    meta_file = path / _META
    if meta_file.exists():
        if json.loads(meta_file.read_text()) != meta:
            raise ValueError(f"path: {str(path)!r} holds the factor of another kernel or layout")
    else:
        atomic.write_json(meta_file, meta, sort_keys=True)


def factor(
    kernel,
    path: str | os.PathLike,
    *,
    shift: float = 0.0,
    cache: bool = False,
    progress: bool = True,
    callback: Callable[[str, int], None] | None = None,
    desc: str = "cholesky",
) -> StoredCholesky:
    """The Cholesky factor of ``K + shift·I`` for a stored symmetric kernel ``K``, panel by
    panel under ``path`` (resumes from the panels already there; see the module docstring).

    Args:
      kernel: a symmetric stored ``[N, N]`` or ``[N, N, O, O]`` kernel.
      path: a directory for the panels (about ``4·D²`` bytes in all).
      shift: added to the diagonal (a ridge), ``≥ 0``.
      cache: keep the panels in memory for later solves (``nbytes`` bytes).
      progress: a tqdm bar over the panels.
      callback: ``callback(desc, j)`` after panel ``j`` is written.

    Raises:
      NotPositiveDefinite: a pivot was not positive.
    """
    from scipy.linalg import cholesky, solve_triangular

    dim, o, starts = _layout(kernel)
    if not (np.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift: must be a finite number >= 0, got {shift!r}")
    path = Path(path)
    _claim(path, kernel, starts, shift)
    out = StoredCholesky(path, starts, cache)
    n_panels = len(starts) - 1
    done = [(path / f"panel_{j}.npy").exists() for j in range(n_panels)]
    first = done.index(False) if False in done else n_panels
    bar = progress_bar(n_panels, first, progress, desc)
    bar.unit = "panel"
    with bar:
        for j in range(first, n_panels):
            c, e = starts[j], starts[j + 1]
            w = e - c
            a = np.concatenate([_matrix_block(kernel, o, i, j) for i in range(j, n_panels)])
            a[np.arange(w), np.arange(w)] += shift
            for k in range(j):  # left-looking: subtract L[c:, k-panel] L[c:e, k-panel]ᵀ
                lk = out.panel(k)
                off = c - starts[k]
                top = lk[off : off + w]
                for r in range(0, dim - c, _ROWS):
                    a[r : r + _ROWS] -= lk[off + r : off + r + _ROWS] @ top.T
            try:
                ljj = cholesky(a[:w], lower=True, check_finite=False)
            except np.linalg.LinAlgError as err:
                raise NotPositiveDefinite(
                    f"kernel: not positive definite in float64 (a pivot in columns {c}:{e} of "
                    f"{dim} is not positive): it is singular to working precision",
                    column=c,
                ) from err
            if not np.all(np.isfinite(ljj)):
                raise NotPositiveDefinite(f"kernel: non-finite factor in columns {c}:{e}", c)
            a[:w] = ljj
            if e < dim:
                a[w:] = solve_triangular(ljj, a[w:].T, lower=True, check_finite=False).T
            atomic.save_npy(path / f"panel_{j}.npy", a)
            if out._cache is not None:
                out._cache[j] = a
            bar.update(1)
            if callback is not None:
                callback(desc, j + 1)
    return out


def smallest_eigenvalues(
    chol: StoredCholesky,
    *,
    k: int = 1,
    tol: float = 1e-8,
    maxiter: int | None = None,
    seed: int = 0,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The ``k`` smallest eigenvalues of ``K`` as the reciprocals of the largest of ``K⁻¹``
    (ARPACK ``eigsh``, ``which="LA"``, on ``chol.solve``): relative accuracy ``tol``.

    Returns:
      ``dict(smallest=[k] ascending, n_solves=int)``; ``tick()`` runs before each solve.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 < k < chol.dim:
        raise ValueError(f"k: must be an int in [1, {chol.dim}), got {k!r}")
    calls = [0]

    def inv(v):
        calls[0] += 1
        if tick is not None:
            tick()
        return chol.solve(v)

    op = LinearOperator(chol.shape, matvec=inv, matmat=inv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(chol.dim)
    try:
        mu = eigsh(op, k=k, which="LA", tol=tol, maxiter=maxiter, v0=v0,
                   return_eigenvectors=False)  # fmt: skip
    except ArpackNoConvergence as err:
        raise RuntimeError(
            f"smallest_eigenvalues: Lanczos on K⁻¹ did not converge after {calls[0]} solves"
        ) from err
    return {"smallest": np.sort(1.0 / mu), "n_solves": calls[0]}
