"""The entry point, :func:`approximation_report`: its arguments checked, then one mode (in
memory or stored) and the assembly of the report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk import checks
from ntk.approximation.assemble import assemble
from ntk.approximation.cost import kernel_fn
from ntk.approximation.in_memory import in_memory
from ntk.approximation.inputs import (
    DEFAULT_KINDS,
    Context,
    check_kinds,
    check_positive_int,
    check_test_inputs,
    memory_need,
    targets,
)
from ntk.approximation.result import ApproximationReport, fmt_bytes
from ntk.approximation.stored import stored
from ntk.kernels.estimates import default_memory_budget
from ntk.kernels.model import Model
from ntk.regression import check_ridge


def approximation_report(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    x: Any,
    y: Any = None,
    *,
    x_test: Any = None,
    y_test: Any = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    kind_options: dict[str, dict] | None = None,
    ridge: float = 1e-2,
    path: str | os.PathLike | None = None,
    block_size: int = 256,
    memory_budget: float | None = None,
    timing_repeats: int = 3,
    lanczos_tol: float = 1e-8,
    cg_tol: float = 1e-8,
    cg_maxiter: int = 1000,
    progress: bool = True,
    callback: Callable[[str, int], None] | None = None,
    **apply_kwargs: Any,
) -> ApproximationReport:
    """How well each cheap kernel approximates the eNTK of ``apply_fn`` on these points.

    Definitions are in the module docstring (:mod:`ntk.approximation`); every number is
    computed in float64 on the host from kernels in the model's dtype.

    Args:
      apply_fn: ``apply_fn(params, x, **apply_kwargs) -> [batch, O]`` (plain JAX, or from
        :func:`ntk.from_linen`, :func:`ntk.from_nnx`, :func:`ntk.from_equinox`, Haiku's
        ``apply``); row n depends on example n only.
      params: pytree of floating arrays; the kernels are taken with respect to them.
      x: ``[N, ...]`` points (an array or a pytree of arrays sharing the batch axis).
      y: ``[N]`` int labels in ``[0, O)`` (one-hot targets) or ``[N, O]`` targets; with
        ``x_test``, kernel regression is compared.
      x_test: ``[M, ...]`` test points, per-example shapes and dtypes as ``x``.
      y_test: ``[M]`` int labels or ``[M, O]`` targets, for test accuracy.
      kinds: approximation kinds from :data:`ntk.KINDS` (all but ``entk``).
      kind_options: per kind, its options, e.g. ``{"single_logit": {"logit": 3},
        "random_projection": {"key": key, "n_projections": 4}}``; ``random_projection``'s
        key defaults to ``jax.random.key(0)``.
      ridge: the relative ridge (≥ 0) compared besides ridgeless regression.
      path: a directory: compute block by block into chunked stores there (resumable; see
        the module docstring). None: in memory, if it fits ``memory_budget``.
      block_size: rows (and columns) per block when stored; the timed calls are one block.
      memory_budget: bytes for ``auto``'s choice, for the in-memory check and, stored, for
        what is read whole (``N × N`` kinds within a quarter of it; the Cholesky panels are
        kept in memory for the solves within an eighth) (default
        :func:`ntk.kernels.api.default_memory_budget`).
      timing_repeats: warm calls timed per kernel (their median is reported).
      lanczos_tol: relative accuracy of the eigenvalues (stored only; ARPACK's ``tol``): of
        λ_max by Lanczos on the kernel, of λ_min by Lanczos on its inverse (the eNTK and
        ``N × N`` kinds too large to read whole). ``N × N`` kinds that fit ``memory_budget``
        four times over are decomposed exactly (LAPACK).
      cg_tol, cg_maxiter: conjugate gradients' relative residual and iteration limit
        (stored ``N × N`` kinds too large to read whole; the eNTK is solved by its factor);
        an unconverged solve is reported as NaN with a note.
      progress: tqdm bars over the long phases (stored only).
      callback: ``callback(phase, step)`` after each unit of stored work (a block, a
        matvec); an exception raised there stops the call, and a repeat resumes.
      **apply_kwargs: model state (BatchNorm statistics, an NNX ``state``), as for a
        :func:`ntk.kernel_fn` call; never differentiated.

    Returns:
      An :class:`ApproximationReport`.

    Example:
      >>> import jax, jax.numpy as jnp, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"] / 4.0
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> p = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> r = ntk.approximation_report(f, p, jax.random.normal(k3, (8, 3)), kinds=["pntk"])
      >>> r.readout_width, r.o, round(r.kinds["pntk"].relative_frobenius_error, 2) < 1
      (16, 2, True)
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    kinds, options = check_kinds(kinds, kind_options)
    check_ridge(ridge)
    check_positive_int("block_size", block_size)
    check_positive_int("timing_repeats", timing_repeats)
    n, m = _check_points(x, y, x_test, y_test)
    ctx, y_te = _context(
        apply_fn, params, x, y, x_test, y_test, n, m, kinds, options, ridge, memory_budget,
        int(timing_repeats), apply_kwargs, in_memory=path is None,
    )  # fmt: skip
    if path is None:
        raw = in_memory(ctx)
    else:
        path = Path(path)
        settings = dict(
            block_size=int(block_size),
            lanczos_tol=float(lanczos_tol),
            cg_tol=float(cg_tol),
            cg_maxiter=int(cg_maxiter),
        )
        raw = stored(ctx, path, settings, y_te, progress, callback)
    report = assemble(ctx, raw, y_te)
    if path is not None:
        report.to_json(path / "report.json")
    return report


def _check_points(x: Any, y: Any, x_test: Any, y_test: Any) -> tuple[int, int]:
    """``(N, M)``: the points, and which of labels and test points come together."""
    n = checks._check_one_input("x", x)
    m = 0 if x_test is None else check_test_inputs(x, x_test)
    if x_test is not None and y is None:
        raise ValueError("x_test: test points are used for kernel regression only; pass y too")
    if y_test is not None and x_test is None:
        raise ValueError("y_test: given without x_test")
    if y is not None and x_test is None:
        raise ValueError(
            f"y: kernel regression needs test points; pass x_test [M, ...] with the {n} labels"
        )
    return n, m


def _context(
    apply_fn,
    params,
    x,
    y,
    x_test,
    y_test,
    n: int,
    m: int,
    kinds: tuple[str, ...],
    options: dict,
    ridge: float,
    memory_budget,
    repeats: int,
    apply_kwargs: dict,
    in_memory: bool,
) -> tuple[Context, np.ndarray | None]:
    """``(Context, test targets or None)``: the model's O and dtype from the eNTK's
    preparation, the labels as targets and, in memory, the memory need within budget."""
    fn_e = kernel_fn(apply_fn, "entk", {}, memory_budget)
    prep, dynamic, static = fn_e.prepared(params, x, None, apply_kwargs)
    o = prep.o
    y_tr = None if y is None else targets("y", y, n, o)
    y_te = None if y_test is None else targets("y_test", y_test, m, o)
    if in_memory:
        need = memory_need(n, m, o, np.dtype(prep.dtype).itemsize)
        budget = default_memory_budget() if memory_budget is None else memory_budget
        if need > budget:
            raise ValueError(
                f"path: the in-memory report of N={n} points ({m} test) with O={o} needs about "
                f"{fmt_bytes(need)} (the eNTK [{n + m}, {n + m}, {o}, {o}] and its {n * o}×"
                f"{n * o} float64 eigen-decomposition), over the memory budget of "
                f"{fmt_bytes(budget)}; pass path=DIR to compute it block by block on disk (or "
                "raise memory_budget)"
            )
    model = Model(apply_fn, static, tuple(dynamic))
    ridges = (0.0,) if ridge == 0 else (0.0, float(ridge))
    n_params = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params))
    ctx = Context(apply_fn, model, params, x, x_test, n, m, o, kinds, options, ridges, y_tr,
                  n_params, memory_budget, repeats, apply_kwargs)  # fmt: skip
    return ctx, y_te
