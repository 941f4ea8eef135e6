"""Public kernel functions: the eNTK, the pNTK and the other approximations.

Each kernel is the eNTK of a linear map ``M: [K, O]`` of the logits (see
:mod:`ntk.kernels.implementations`), full or diagonal, followed by a reduction:

=====================  ================================  ======  ====================
kind                   M                                 part    result
=====================  ================================  ======  ====================
``entk``               I_O                               full    [N1, N2, O, O]
``pntk``               1ᵀ/√O  (sum of logits)            —       [N1, N2]
``trace``              I_O                               diag    mean over o: [N1, N2]
``diagonal``           I_O                               diag    [N1, N2, O]
``single_logit``       e_logitᵀ                          —       [N1, N2]
``random_projection``  R: [k, O], R_ij ~ N(0, 1/O)       diag    mean over k: [N1, N2]
=====================  ================================  ======  ====================

Relations (Θ = eNTK block for one pair of inputs, O×O):

* ``pntk = (1/O) Σ_{o,o'} Θ[o, o']``: the NTK of ``g = (1/√O) Σ_o f_o``. With this 1/√O
  scaling the pNTK is O times the plain mean of the O² block entries, so that
  ``Θ ≈ pntk ⊗ I_O`` (at infinite width Θ = θ·I_O and pntk = θ).
* ``trace = mean(diag Θ)``. This is what neural-tangents' default ``trace_axes=(-1,)``
  returns; it is **not** the pNTK, and it costs O times more to compute.
* ``diagonal[..., o] = Θ[o, o]``; ``trace = mean(diagonal, -1)``.
* ``random_projection`` averages ``rᵀΘr`` over k random ``r`` with ``E[r rᵀ] = I/O``: an
  unbiased estimate of ``trace`` whose variance falls like 1/k. The pNTK is the same
  quadratic form at the fixed ``r = 1/√O``, so it also sees the off-diagonal entries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

from ntk.kernels import _checks
from ntk.kernels.implementations import IMPLEMENTATIONS, jaxpr_flops


@dataclass(frozen=True)
class Kind:
    """A kernel kind: the output projection, full or diagonal, and the final reduction."""

    projection: Callable[..., jax.Array]  # (o, dtype, **opts) -> [K, O]
    diag: bool
    reduce: Callable[[jax.Array], jax.Array]
    doc: str


def _identity_proj(o, dtype, **_):
    return jnp.eye(o, dtype=dtype)


def _sum_proj(o, dtype, **_):
    return jnp.full((1, o), 1.0 / math.sqrt(o), dtype=dtype)


def _logit_proj(o, dtype, *, logit=0, **_):
    if isinstance(logit, bool) or not isinstance(logit, int | np.integer) or not 0 <= logit < o:
        raise ValueError(f"logit: must be an int in [0, {o}), got {logit!r}")
    return jax.nn.one_hot(jnp.array([logit]), o, dtype=dtype)


def _random_proj(o, dtype, *, key=None, n_projections=1, **_):
    if key is None:
        raise ValueError("key: the random_projection kernel needs a PRNG key (jax.random.key)")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int | np.integer):
        raise TypeError(f"n_projections: expected a positive int, got {n_projections!r}")
    if n_projections <= 0:
        raise ValueError(f"n_projections: must be positive, got {n_projections}")
    return jax.random.normal(key, (int(n_projections), o), dtype) / math.sqrt(o)


def _squeeze_last(k):
    return k[..., 0]


def _mean_last(k):
    return jnp.mean(k, axis=-1)


def _keep(k):
    return k


KINDS: dict[str, Kind] = {
    "entk": Kind(_identity_proj, False, _keep, "full eNTK [N1, N2, O, O]"),
    "pntk": Kind(_sum_proj, True, _squeeze_last, "sum-of-logits pNTK, (1/O)·block sum [N1, N2]"),
    "trace": Kind(_identity_proj, True, _mean_last, "mean of the block diagonal [N1, N2]"),
    "diagonal": Kind(_identity_proj, True, _keep, "diagonal of each block [N1, N2, O]"),
    "single_logit": Kind(_logit_proj, True, _squeeze_last, "NTK of one logit [N1, N2]"),
    "random_projection": Kind(
        _random_proj, True, _mean_last, "mean NTK of k random logit combinations [N1, N2]"
    ),
}


def _resolve(name):
    if name == "auto":
        return None
    _checks.check_choice("implementation", name, {**IMPLEMENTATIONS, "auto": None})
    return IMPLEMENTATIONS[name]


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _custom_vjp_in(jaxpr) -> bool:
    """Whether a ``custom_vjp`` call (no forward-mode rule) is reachable without passing
    through a ``custom_jvp`` call (whose own rule replaces its body under jvp)."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name.startswith("custom_vjp"):
            return True
        if not name.startswith("custom_jvp") and any(map(_custom_vjp_in, _sub_jaxprs(eqn))):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _forward_facts_cached(apply_fn, params_spec, x_spec) -> tuple[float, bool]:
    """(FLOPs of one per-example forward pass, whether it calls a custom_vjp function)."""
    treedef, leaves = params_spec
    params = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    x = jax.ShapeDtypeStruct((1, *x_spec[0][1:]), x_spec[1])
    jaxpr = jax.make_jaxpr(apply_fn)(params, x).jaxpr
    p = sum(math.prod(s) for s, _ in leaves)
    return max(jaxpr_flops(jaxpr), 2.0 * p), _custom_vjp_in(jaxpr)


def _forward_facts(apply_fn, params, x) -> tuple[float, bool]:
    args = (apply_fn, _checks._spec(params), (tuple(x.shape), str(x.dtype)))
    try:
        return _forward_facts_cached(*args)
    except TypeError:  # unhashable apply_fn
        return _forward_facts_cached.__wrapped__(*args)


def forward_flops(apply_fn, params, x) -> float:
    """Estimated FLOPs of one per-example forward pass (counted on its jaxpr, at least 2P)."""
    return _forward_facts(apply_fn, params, x)[0]


def forward_mode_error(apply_fn, params, x) -> str | None:
    """Why ``jax.jvp`` cannot go through ``apply_fn``, or None if it can."""
    if _forward_facts(apply_fn, params, x)[1]:
        return "apply_fn calls a jax.custom_vjp function, which has no jvp rule"
    return None


def choose_implementation(apply_fn, params, x1, x2, k: int, diag: bool) -> str:
    """Name of the registered implementation with the lowest estimated FLOP count.

    Forward-mode implementations are skipped when ``jax.jvp`` cannot trace ``apply_fn``.
    """
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    p = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))
    fp = forward_flops(apply_fn, params, x1)
    ctx = dict(apply_fn=apply_fn, params=params, x1=x1, x2=x2)
    costs = {
        name: impl.cost(n1=n1, n2=n2, k=k, p=p, fp=fp, diag=diag, **ctx)
        for name, impl in IMPLEMENTATIONS.items()
    }
    for name in sorted(costs, key=costs.get):
        if not IMPLEMENTATIONS[name].forward_mode:
            return name
        if forward_mode_error(apply_fn, params, x1) is None:
            return name
    raise AssertionError("unreachable: 'jacobian' needs reverse mode only")


@functools.partial(jax.jit, static_argnames=("apply_fn", "impl_name", "diag"))
def _block(apply_fn, impl_name, diag, params, x1, x2, proj_KO):
    """One kernel block; ``x2=None`` is the symmetric case, made exactly symmetric."""
    k = IMPLEMENTATIONS[impl_name].fn(apply_fn, params, x1, x2, proj_KO, diag)
    if x2 is None:
        k = 0.5 * (k + (jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))))
    return k


def _pad_rows(x, size):
    """Pads ``x`` to ``size`` rows by repeating its last row (rows are independent)."""
    if x.shape[0] == size:
        return x
    pad = jnp.repeat(x[-1:], size - x.shape[0], axis=0)
    return jnp.concatenate([x, pad], axis=0)


def _blocked(compute, x1, x2, batch_size, diag):
    """Assembles the kernel from ``batch_size``-row blocks; same shapes compile once."""
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    starts1 = list(range(0, x1.shape[0], batch_size))
    starts2 = list(range(0, xb.shape[0], batch_size))

    def rows(x, s):
        return _pad_rows(x[s : s + batch_size], batch_size)

    def transpose(k):
        return jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))

    blocks = {}
    for i, s1 in enumerate(starts1):
        for j, s2 in enumerate(starts2):
            if symmetric and j < i:
                blocks[i, j] = transpose(blocks[j, i])
            elif symmetric and i == j:
                blocks[i, j] = compute(rows(x1, s1), None)
            else:
                blocks[i, j] = compute(rows(x1, s1), rows(xb, s2))
    out = jnp.concatenate(
        [
            jnp.concatenate([blocks[i, j] for j in range(len(starts2))], 1)
            for i in range(len(starts1))
        ],
        0,
    )
    return out[: x1.shape[0], : xb.shape[0]]


def kernel(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    kind: str = "entk",
    implementation: str = "auto",
    batch_size: int | None = None,
    **kind_options: Any,
) -> jax.Array:
    """Any registered kernel kind (see :data:`KINDS`) with any implementation.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on ``x[n]`` only.
      params: pytree of floating arrays; the kernel is taken with respect to all of them.
      x1: ``[N1, ...]`` inputs.
      x2: ``[N2, ...]`` inputs, or ``None`` for ``x2 = x1`` (work is shared and the result is
        exactly symmetric).
      kind: one of :data:`KINDS`.
      implementation: one of :data:`IMPLEMENTATIONS` or ``"auto"`` (lowest estimated cost).
      batch_size: if set, compute in blocks of this many rows of x1 and x2; peak memory is
        that of one block pair. Values equal the unblocked call up to float round-off.
      **kind_options: ``logit`` for ``single_logit``; ``key`` and ``n_projections`` for
        ``random_projection``.

    Returns:
      The kernel; its shape is given in :data:`KINDS`.
    """
    _checks.check_choice("kind", kind, KINDS)
    impl = _resolve(implementation)
    _checks.check_batch_size(batch_size)
    _checks.check_params(params)
    _checks.check_inputs(x1, x2)
    o, dtype = _checks.output_spec(apply_fn, params, x1)
    spec = KINDS[kind]
    proj_KO = spec.projection(o, dtype, **kind_options)
    if impl is None:
        name = choose_implementation(apply_fn, params, x1, x2, proj_KO.shape[0], spec.diag)
    else:
        name = implementation
        if impl.forward_mode and (why := forward_mode_error(apply_fn, params, x1)) is not None:
            raise TypeError(
                f"implementation={implementation!r} needs forward-mode autodiff (jax.jvp) through "
                f"apply_fn, which fails: {why}. Use implementation='jacobian' or 'structured'."
            )

    def compute(a, b):
        return _block(apply_fn, name, spec.diag, params, a, b, proj_KO)

    if batch_size is None:
        k = compute(x1, x2)
    else:
        k = _blocked(compute, x1, x2, batch_size, spec.diag)
    return spec.reduce(k)


def entk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None) -> jax.Array:
    """Empirical NTK ``Θ[n1, n2, o1, o2] = J(x1[n1])[o1] · J(x2[n2])[o2]``: ``[N1, N2, O, O]``.

    Example:
      >>> import jax, jax.numpy as jnp, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> ntk.entk(f, p, jnp.ones((5, 3))).shape
      (5, 5, 2, 2)

    See :func:`kernel` for the arguments.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="entk", implementation=implementation, batch_size=batch_size
    )


def pntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None) -> jax.Array:
    """Sum-of-logits pseudo-NTK (Mohamadi et al., 2023): ``[N1, N2]``.

    The NTK of ``g = (1/√O) Σ_o f_o``, computed from the summed output (never from the full
    eNTK). It equals ``(1/O) Σ_{o,o'} Θ[n1, n2, o, o']`` for the eNTK Θ of :func:`entk`, i.e.
    O times the plain mean of each O×O block, which is the scale at which ``Θ ≈ pntk ⊗ I_O``.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="pntk", implementation=implementation, batch_size=batch_size
    )


def trace_ntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None):
    """Mean of each block's diagonal, ``(1/O) Σ_o Θ[o, o]``: ``[N1, N2]``.

    neural-tangents' default ``trace_axes=(-1,)`` gives this kernel, not the pNTK.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="trace", implementation=implementation, batch_size=batch_size
    )


def diagonal_ntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None):
    """Diagonal of each block, ``Θ[n1, n2, o, o]``: ``[N1, N2, O]``."""
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="diagonal",
        implementation=implementation,
        batch_size=batch_size,
    )


def single_logit_ntk(
    apply_fn, params, x1, x2=None, *, logit=0, implementation="auto", batch_size=None
):
    """NTK of logit ``logit`` alone, ``Θ[n1, n2, logit, logit]``: ``[N1, N2]``."""
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="single_logit",
        implementation=implementation,
        batch_size=batch_size,
        logit=logit,
    )


def random_projection_ntk(
    apply_fn,
    params,
    x1,
    x2=None,
    *,
    key,
    n_projections=1,
    implementation="auto",
    batch_size=None,
):
    """Mean NTK of ``n_projections`` random logit combinations ``r·f``, ``r ~ N(0, I/O)``.

    An unbiased estimate of :func:`trace_ntk`: ``[N1, N2]``.
    """
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="random_projection",
        implementation=implementation,
        batch_size=batch_size,
        key=key,
        n_projections=n_projections,
    )
