"""Implicit kernel operators: eNTK/pNTK-vector products that never build the kernel matrix.

With ``J = ∂f(X)/∂θ: [N·O, P]`` the eNTK as a matrix is ``Θ = J Jᵀ``, so

    Θ(X, X) v = J (Jᵀ v)

is one vjp of the batched model (cotangent ``v: [N, O]``, giving a params-shaped ``Jᵀv``)
and one jvp (tangent ``Jᵀv``): about three forward passes over X, with memory of one batched
forward/backward pass and no ``NO × NO`` matrix. The cross product ``Θ(X*, X) v`` takes the
vjp on X and the jvp on X*. The pNTK is the same with the model ``g = (1/√O) Σ_o f_o``.

On top of these: extreme eigenvalues by Lanczos (:func:`extreme_eigenvalues`) and kernel
regression by conjugate gradients (:func:`cg_kernel_regression`), both without the matrix.
Each costs a number of matvecs that grows with the condition number, so they win when the
kernel matrix would not fit in memory (the full eNTK of 50,000 examples with O=10 is 1.8 TiB
in float64) or when only a few eigenvalues are needed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk import checks
from ntk.adapters import ApplyFn
from ntk.checks import check_choice
from ntk.kernels.estimates import forward_mode_error
from ntk.kernels.implementations import per_example_jacobian
from ntk.kernels.kinds import KINDS
from ntk.kernels.model import pad_rows
from ntk.kernels.preparation import prepare
from ntk.regression import (
    check_cg_limits,
    check_converged,
    check_ridge,
    is_stored,
    stored_square_shape,
)

_KINDS = ("entk", "pntk")


def _summed(apply_fn):
    """``g(params, x) = (1/√O) Σ_o f_o(params, x)`` as a ``[batch, 1]`` model: the outputs
    through the pNTK kind's own projection (its scaling is defined there only)."""

    def g(params, x):
        out_NO = apply_fn(params, x)
        return out_NO @ KINDS["pntk"].projection(out_NO.shape[1], out_NO.dtype).T

    return g


def _model(apply_fn, kind):
    return apply_fn if kind == "entk" else _summed(apply_fn)


def _chunks(x, b, pad_zeros=False):
    """``[N, ...] -> [C, b, ...]`` with ``C = ceil(N / b)``; padding repeats the last row
    (inputs) or is zero (cotangents, so padded rows contribute nothing)."""
    n = x.shape[0]
    c = -(-n // b)
    if pad_zeros:
        x = jnp.concatenate([x, jnp.zeros((c * b - n, *x.shape[1:]), x.dtype)], axis=0)
    else:
        x = pad_rows(x, c * b)
    return x.reshape(c, b, *x.shape[1:])


@functools.partial(jax.jit, static_argnames=("apply_fn", "kind", "batch_size"))
def _jjt(apply_fn, kind, batch_size, params, x_out, x_in, v_NK):
    """``J(x_out) J(x_in)ᵀ v``: ``[N_in, K] -> [N_out, K]`` (K = O, or 1 for the pNTK)."""
    fn = _model(apply_fn, kind)
    if batch_size is None:
        _, vjp = jax.vjp(lambda p: fn(p, x_in), params)
        (u,) = vjp(v_NK)
        return jax.jvp(lambda p: fn(p, x_out), (params,), (u,))[1]

    def vjp_chunk(acc, xv):
        x_c, v_c = xv
        _, vjp = jax.vjp(lambda p: fn(p, x_c), params)
        (g,) = vjp(v_c)
        return jax.tree_util.tree_map(jnp.add, acc, g), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    xs = (_chunks(x_in, batch_size), _chunks(v_NK, batch_size, pad_zeros=True))
    u, _ = jax.lax.scan(vjp_chunk, zeros, xs)

    def jvp_chunk(x_c):
        return jax.jvp(lambda p: fn(p, x_c), (params,), (u,))[1]

    out_CBK = jax.lax.map(jvp_chunk, _chunks(x_out, batch_size))
    return out_CBK.reshape(-1, out_CBK.shape[-1])[: x_out.shape[0]]


def _check_common(apply_fn, params, x, batch_size, kind="entk"):
    check_choice("kind", kind, _KINDS)
    checks.check_batch_size(batch_size)
    prep = prepare(apply_fn, params, x, None, kind=kind, implementation="jacobian", kind_options={})
    if (why := forward_mode_error(apply_fn, params, x)) is not None:
        raise TypeError(
            f"apply_fn: kernel-vector products use forward-mode autodiff (jax.jvp), which "
            f"fails: {why}. Compute the kernel with ntk.kernel(..., implementation="
            "'jacobian' or 'structured') instead."
        )
    return prep.o, prep.dtype


def _operator(apply_fn, params, x_out, x_in, kind, batch_size, o, dtype):
    n = int(x_in.shape[0])

    def matvec(v):
        v = jnp.asarray(v)
        if kind == "entk":
            if v.shape != (n, o):
                raise ValueError(f"v: expected shape [N, O] = {(n, o)}, got {tuple(v.shape)}")
            return _jjt(apply_fn, kind, batch_size, params, x_out, x_in, v.astype(dtype))
        if v.ndim not in (1, 2) or v.shape[0] != n:
            raise ValueError(f"v: expected shape [N] = ({n},) or [N, C], got {tuple(v.shape)}")
        v_NC = v.astype(dtype).reshape(n, -1)

        def one(v_N):
            return _jjt(apply_fn, kind, batch_size, params, x_out, x_in, v_N[:, None])[:, 0]

        out = jax.vmap(one, in_axes=1, out_axes=1)(v_NC)
        return out[:, 0] if v.ndim == 1 else out

    return matvec


def _checked_operator(apply_fn, params, x_out, x_in, kind, batch_size):
    """The checked ``v -> K(x_out, x_in) v`` (the vjp on ``x_in``, the jvp on ``x_out``)."""
    o, dtype = _check_common(apply_fn, params, x_in, batch_size, kind)
    if x_out is not x_in:
        checks.check_inputs(x_out, x_in)
    return _operator(apply_fn, params, x_out, x_in, kind, batch_size, o, dtype)


def entk_matvec(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    *,
    batch_size: int | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """The eNTK as an operator: ``v [N, O] -> Θ(X, X) v [N, O]`` (sample-major, as
    :func:`ntk.as_matrix`), via ``J (Jᵀ v)``; the ``NO × NO`` matrix is never built.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on ``x[n]`` only.
      params: pytree of floating arrays.
      x: ``[N, ...]`` inputs.
      batch_size: if set, the vjp and jvp run over chunks of this many examples (the vjps
        summed), so memory is that of one chunk's forward/backward pass.

    Returns:
      ``matvec(v)``: ``[N, O] -> [N, O]``; each call runs one compiled computation (compiled
      once per shape) and works under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp, ntk.implicit as imp
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)) / 2, "w2": jnp.ones((4, 2))}
      >>> mv = imp.entk_matvec(f, p, jnp.ones((5, 3)))
      >>> mv(jnp.ones((5, 2))).shape
      (5, 2)
    """
    return _checked_operator(apply_fn, params, x, x, "entk", batch_size)


def pntk_matvec(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    *,
    batch_size: int | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """The pNTK as an operator: ``v [N] -> pNTK(X, X) v [N]`` (or ``[N, C] -> [N, C]``,
    column by column), the eNTK-vector product of ``g = (1/√O) Σ_o f_o``.

    Arguments as for :func:`entk_matvec`.
    """
    return _checked_operator(apply_fn, params, x, x, "pntk", batch_size)


def cross_matvec(
    apply_fn: ApplyFn,
    params: Any,
    x_test: jax.Array,
    x_train: jax.Array,
    *,
    kind: str = "entk",
    batch_size: int | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """``v -> K(X*, X) v`` for predictions: eNTK ``[N, O] -> [M, O]``, pNTK ``[N] -> [M]``
    (or ``[N, C] -> [M, C]``). The vjp runs on ``x_train [N, ...]``, the jvp on
    ``x_test [M, ...]``. Other arguments as for :func:`entk_matvec`.
    """
    return _checked_operator(apply_fn, params, x_test, x_train, kind, batch_size)


@functools.partial(jax.jit, static_argnames=("apply_fn", "kind", "chunk"))
def _diagonal(apply_fn, kind, chunk, params, x, proj_KO):
    def sq_norms(x_single):
        jac = per_example_jacobian(apply_fn, params, x_single[None], proj_KO)
        leaves = jax.tree_util.tree_leaves(jac)
        return sum(jnp.sum(leaf[0].reshape(leaf.shape[1], -1) ** 2, axis=1) for leaf in leaves)

    return jax.lax.map(sq_norms, x, batch_size=chunk)  # [N, K]


def kernel_diagonal(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    *,
    kind: str = "entk",
    batch_size: int | None = None,
) -> jax.Array:
    """Exact diagonal of the kernel matrix, from per-example Jacobians (``batch_size``
    examples at a time, default 16): eNTK ``Θ[n, n, o, o] = ‖J_o(x_n)‖²`` as ``[N, O]``,
    pNTK ``‖∇θ g(x_n)‖²`` as ``[N]``. Costs about ``N·O`` backward passes (N for the pNTK).
    """
    o, dtype = _check_common(apply_fn, params, x, batch_size, kind)
    proj_KO = KINDS[kind].projection(o, dtype)
    chunk = min(int(x.shape[0]), batch_size or 16)
    d_NK = _diagonal(apply_fn, kind, chunk, params, x, proj_KO)
    return d_NK if kind == "entk" else d_NK[:, 0]


def extreme_eigenvalues(
    apply_fn: ApplyFn | Any,
    params: Any = None,
    x: jax.Array | None = None,
    *,
    kind: str = "entk",
    k: int = 1,
    tol: float = 1e-8,
    maxiter: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    preconditioner: Callable[[np.ndarray], np.ndarray] | None = None,
    n_vectors: int = 32,
    ends: str = "both",
) -> dict[str, Any]:
    """Largest and smallest eigenvalues of ``Θ(X, X)`` (``NO × NO``) or the pNTK (``N × N``)
    by Lanczos (ARPACK ``eigsh``, ``which="LA"`` and ``"SA"``) on the implicit operator.

    The Lanczos vectors live on the host in float64; each matvec runs in the model's dtype.
    λ_max converges in a few tens of matvecs; λ_min needs more when the smallest eigenvalues
    are clustered (ill-conditioned kernels), and ARPACK raises if it runs out of iterations.

    ``apply_fn`` may instead be a stored kernel (:func:`ntk.open_kernel`), with ``params``
    and ``x`` left out: a square ``[N, N]`` kernel is the ``N × N`` operator, an
    ``[N, N, O, O]`` eNTK the ``NO × NO`` one; each matvec streams the store once, one block
    in memory (the upper triangle only, for a symmetric store), so kernels larger than
    memory work. ``kind`` and ``batch_size`` are then unused. For the smallest eigenvalues
    of an ill-conditioned stored kernel, :mod:`ntk.scale.cholesky` (Lanczos on the inverse,
    by an out-of-core factor) needs far fewer passes.

    Args:
      apply_fn, params, x, batch_size: as for :func:`entk_matvec`.
      kind: ``"entk"`` or ``"pntk"``.
      k: how many eigenvalues at each end (``k < N·O``, resp. ``k < N``).
      tol: ARPACK's relative accuracy.
      maxiter: ARPACK's iteration limit (default ``10 × dimension``).
      seed: seed of the starting vector (the result is deterministic).
      preconditioner: an approximation of the operator's inverse, ``[D, C] -> [D, C]``
        float64 on the flattened (sample-major) vectors, ``D`` the dimension. Given, the
        smallest end comes from LOBPCG (:func:`scipy.sparse.linalg.lobpcg`) with
        ``n_vectors`` vectors per operator pass instead of ARPACK: for ill-conditioned
        kernels, whose smallest eigenvalues are clustered, it needs far fewer passes when
        the preconditioner is close to the inverse at the bottom of the spectrum. For the
        eNTK, ``(pNTK + δI)⁻¹ ⊗ I`` is the natural one (only as good as the pNTK is there).
        LOBPCG stops when
        every residual ``‖Θv − λv‖ ≤ tol·λ`` (so ``|λ − λ_true| ≤ tol·λ``), or at the
        round-off floor ``D·ε·λ_max``; ``maxiter`` (default 1,000) bounds its iterations.
      n_vectors: LOBPCG's block size (with a preconditioner only).
      ends: ``"both"``, ``"largest"`` or ``"smallest"``: the ends computed; an end left out
        is NaN in ``lambda_max``/``lambda_min`` and absent from ``largest``/``smallest``
        (with a preconditioner the largest end is computed anyway: LOBPCG's floor needs it).

    Returns:
      ``dict(lambda_max=float, lambda_min=float, largest=[k] descending, smallest=[k]
      ascending, n_matvecs=int)``: matvecs count operator passes (one pass applies the
      operator to a block of vectors). With a preconditioner also ``residuals`` ([k], of
      the smallest) and ``converged`` (bool); an unconverged LOBPCG returns its best
      estimate rather than raising.
    """
    if preconditioner is not None and not callable(preconditioner):
        raise TypeError(f"preconditioner: expected a callable or None, got {preconditioner!r}")
    _check_positive("n_vectors", n_vectors)
    check_choice("ends", ends, ("both", "largest", "smallest"))
    opts = dict(k=k, tol=tol, maxiter=maxiter, seed=seed, ends=ends)
    opts.update(preconditioner=preconditioner, n_vectors=n_vectors)
    if is_stored(apply_fn):
        return _stored_eigenvalues(apply_fn, params, x, **opts)
    if params is None or x is None:
        raise TypeError("params, x: required with an apply_fn (omit them only for a stored kernel)")
    o, dtype = _check_common(apply_fn, params, x, batch_size, kind)
    n = int(x.shape[0])
    shape_v = (n, o) if kind == "entk" else (n,)
    dim = math.prod(shape_v)
    _check_k(k, dim)
    mv = _operator(apply_fn, params, x, x, kind, batch_size, o, dtype)

    def host_mv(v):  # [D] or [D, C]: the columns one at a time (the operator takes [N(, O)])
        cols = np.reshape(v, (dim, -1)).T
        out = [np.asarray(mv(jnp.asarray(c.reshape(shape_v), dtype)), np.float64) for c in cols]
        return np.stack([o.reshape(dim) for o in out], axis=1).reshape(np.shape(v))

    return _lanczos(host_mv, dim, **opts)


def _check_k(k: Any, dim: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 < k < dim:
        raise ValueError(f"k: must be an int in [1, {dim}) for a {dim}×{dim} operator, got {k!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")


def _stored_eigenvalues(kernel, params, x, **opts) -> dict[str, Any]:
    if params is not None or x is not None:
        raise TypeError("params, x: leave them out when the kernel is a stored kernel")
    n, o = stored_square_shape("apply_fn", kernel)
    shape_v = (n,) if o is None else (n, o)
    dim = math.prod(shape_v)
    _check_k(opts["k"], dim)

    def host_mv(v):  # one pass over the store for all columns of a [D, C] block
        return kernel.matvec(np.reshape(v, (*shape_v, -1))).reshape(np.shape(v))

    return _lanczos(host_mv, dim, **opts)


def _lanczos(
    host_mv, dim: int, *, k, tol, maxiter, seed, preconditioner=None, n_vectors=32, ends="both"
) -> dict[str, Any]:
    """The ``ends`` of the spectrum of a symmetric float64 host operator: ARPACK, or ARPACK
    for the largest and preconditioned LOBPCG for the smallest (``host_mv`` takes ``[D]`` or
    ``[D, C]``)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    calls = [0]

    def counted(v):
        calls[0] += 1
        return host_mv(v)

    op = LinearOperator((dim, dim), matvec=counted, matmat=counted, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    result = {}
    small = ends != "largest"
    arpack = [("LA", "largest")] if ends != "smallest" or (preconditioner and small) else []
    arpack += [("SA", "smallest")] if small and not preconditioner else []
    for which, name in arpack:
        try:
            vals = eigsh(
                op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False
            )
        except ArpackNoConvergence as e:
            raise RuntimeError(
                f"extreme_eigenvalues: Lanczos ({which}) did not converge after {calls[0]} "
                f"matvecs; converged so far: {e.eigenvalues}. Raise maxiter or tol."
            ) from e
        result[name] = np.sort(vals)[::-1] if which == "LA" else np.sort(vals)
    if preconditioner and small:
        floor = dim * np.finfo(np.float64).eps * float(result["largest"][0])
        m = max(n_vectors, k)
        smallest = _lobpcg_smallest(
            op, dim, k, m, preconditioner, tol, floor, maxiter or 1000, seed
        )
        result.update(smallest)
    return {
        "lambda_max": float(result["largest"][0]) if "largest" in result else math.nan,
        "lambda_min": float(result["smallest"][0]) if "smallest" in result else math.nan,
        **result,
        "n_matvecs": calls[0],
    }


def _lobpcg_smallest(op, dim, k, m, preconditioner, tol, floor, maxiter, seed, chunk=50):
    """The ``k`` smallest eigenvalues by LOBPCG with ``m`` vectors, run in chunks of ``chunk``
    iterations; after each, one more pass gives the true residuals of the ``k`` smallest
    Ritz pairs, and it stops once each is at most ``max(tol·λ, floor)``."""
    import warnings

    from scipy.sparse.linalg import LinearOperator, lobpcg

    def prec(v):
        return np.asarray(preconditioner(np.reshape(v, (dim, -1))), np.float64).reshape(v.shape)

    t_op = LinearOperator((dim, dim), matvec=prec, matmat=prec, dtype=np.float64)
    x = np.random.default_rng(seed + 1).standard_normal((dim, min(m, dim)))
    done, lam, res = 0, None, None
    while done < maxiter:
        steps = min(chunk, maxiter - done)
        with warnings.catch_warnings():  # "not reaching the requested tolerance": ours below
            warnings.simplefilter("ignore", UserWarning)
            lam, x = lobpcg(op, x, M=t_op, largest=False, tol=floor, maxiter=steps)
        done += steps
        order = np.argsort(lam)
        lam, x = lam[order], x[:, order]
        ax = op.matmat(x[:, :k])
        res = np.linalg.norm(ax - x[:, :k] * lam[:k], axis=0)
        if np.all(res <= np.maximum(tol * np.abs(lam[:k]), floor)):
            return {"smallest": lam[:k], "residuals": res, "converged": True}
    return {"smallest": lam[:k], "residuals": res, "converged": False}


def cg_kernel_regression(
    apply_fn: ApplyFn,
    params: Any,
    x_train: jax.Array,
    y_train: Any,
    x_test: jax.Array,
    *,
    kind: str = "entk",
    ridge: float = 0.0,
    tol: float = 1e-6,
    maxiter: int = 1000,
    batch_size: int | None = None,
    precondition: bool = True,
) -> np.ndarray:
    """Kernel-regression predictions ``K(X*, X)(K + ridge·mean(diag K)·I)⁻¹ Y`` by conjugate
    gradients on the implicit kernel (same definition as :func:`ntk.kernel_regression`).

    The eNTK solves one ``NO × NO`` system on ``[N, O]``; the pNTK solves the ``N × N``
    system for all O columns at once. ``mean(diag K)`` is exact, from :func:`kernel_diagonal`
    (per-example Jacobian norms), which also gives the Jacobi preconditioner. CG runs in the
    model's dtype (``jax.scipy.sparse.linalg.cg``); afterwards the true residual
    ``‖Y − Aα‖_F / ‖Y‖_F`` is computed and a ``RuntimeError`` reporting it is raised if it is
    not finite or exceeds ``10·tol``, so an unconverged solve never returns silently. CG is
    reliable with ``ridge > 0``; without it, expect many iterations on ill-conditioned
    kernels.

    Args:
      apply_fn, params, batch_size: as for :func:`entk_matvec`.
      x_train: ``[N, ...]``; y_train: ``[N, O]`` targets; x_test: ``[M, ...]``.
      kind: ``"entk"`` or ``"pntk"``.
      ridge: relative ridge ≥ 0.
      tol: relative residual tolerance of CG; maxiter: its iteration limit.
      precondition: use the Jacobi (diagonal) preconditioner.

    Returns:
      ``[M, O]`` predictions, float64 numpy.
    """
    o, dtype = _check_common(apply_fn, params, x_train, batch_size, kind)
    checks.check_inputs(x_test, x_train)
    check_ridge(ridge)
    check_cg_limits(tol, maxiter)
    n = int(x_train.shape[0])
    y_NO = jnp.asarray(_cg_targets(y_train, n, o), dtype)
    diag = kernel_diagonal(apply_fn, params, x_train, kind=kind, batch_size=batch_size)
    lam = ridge * jnp.mean(diag)
    diag_NO = diag if kind == "entk" else jnp.broadcast_to(diag[:, None], (n, o))
    mv = _operator(apply_fn, params, x_train, x_train, kind, batch_size, o, dtype)

    def a_op(v_NO):
        return mv(v_NO) + lam * v_NO

    inv_d = _jacobi(diag_NO + lam) if precondition else None
    alpha_NO = _cg_solve(a_op, y_NO, inv_d, tol, int(maxiter))
    what = f"cg_kernel_regression: conjugate gradients ({kind}, N={n}, maxiter={maxiter})"
    hint = "Add a ridge, raise maxiter or tol, or compute in float64."
    check_converged(_relative_residual(a_op, alpha_NO, y_NO), tol, what, hint)
    pred = _operator(apply_fn, params, x_test, x_train, kind, batch_size, o, dtype)(alpha_NO)
    return np.asarray(pred, np.float64)


def _cg_targets(y_train: Any, n: int, o: int) -> np.ndarray:
    y = np.asarray(y_train)
    if y.shape != (n, o):
        raise ValueError(f"y_train: expected [N, O] = {(n, o)} targets, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"y_train: contains NaN or Inf (shape {y.shape})")
    return y


def _jacobi(d: jax.Array) -> jax.Array:
    """``1/d`` where ``d > 0``, else 1: the Jacobi preconditioner's diagonal."""
    return jnp.where(d > 0, 1.0 / jnp.where(d > 0, d, 1.0), 1.0)


def _cg_solve(a_op, y_NO, inv_d, tol: float, maxiter: int) -> jax.Array:
    """``A⁻¹ y`` by (optionally Jacobi-preconditioned) CG in the model's dtype."""
    from jax.scipy.sparse.linalg import cg

    precond = None if inv_d is None else (lambda v: inv_d * v)
    alpha_NO, _ = cg(a_op, y_NO, tol=tol, atol=0.0, maxiter=maxiter, M=precond)
    return alpha_NO


def _relative_residual(a_op, alpha_NO, y_NO) -> float:
    """``‖Y − Aα‖_F / ‖Y‖_F`` (``‖Y − Aα‖_F`` when ``Y = 0``)."""
    y_norm = float(jnp.linalg.norm(y_NO))
    return float(jnp.linalg.norm(y_NO - a_op(alpha_NO))) / (y_norm if y_norm > 0 else 1.0)
