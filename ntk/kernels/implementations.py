"""Implementations of the projected eNTK, picked by name from :data:`IMPLEMENTATIONS`.

Every kernel in :mod:`ntk` is the eNTK of a linear map of the outputs, ``f_M = M f`` with
``M: [K, O]``, either in full or on its diagonal:

    full:  Θ_M[n1, n2, k1, k2] = J_M(x1[n1])[k1] · J_M(x2[n2])[k2]       -> [N1, N2, K, K]
    diag:  Θ_M[n1, n2, k]      = J_M(x1[n1])[k]  · J_M(x2[n2])[k]        -> [N1, N2, K]

where ``J_M(x) = ∂(M f(θ, x))/∂θ: [K, P]``. An implementation is a pure function

    impl(apply_fn, params, x1_N, x2_N | None, proj_KO, diag) -> kernel

with ``x2=None`` meaning ``x2 = x1`` (the work is shared). Implementations treat
``apply_fn`` as per-example: row n of the output depends on row n of the input only.

Registry entries carry a cost model used by ``implementation="auto"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Var

from ntk.kernels.model import add_batch_axis


def project(apply_fn, proj_KO):
    """Per-example projected model ``f_M(params, x_single) -> [K]`` (``x_single``: one
    example, any pytree, without its batch axis)."""

    def f_single(params, x):
        out_1O = apply_fn(params, add_batch_axis(x))
        return jnp.einsum("ko,o->k", proj_KO.astype(out_1O.dtype), out_1O[0])

    return f_single


def per_example_jacobian(apply_fn, params, x_N, proj_KO):
    """Jacobian of the projected model, one row per example.

    Returns a pytree like ``params`` whose leaves are ``[N, K, *leaf.shape]``.
    """
    return jax.vmap(jax.jacrev(project(apply_fn, proj_KO)), in_axes=(None, 0))(params, x_N)


def gram(j1_NKP, j2_NKP, diag: bool):
    """``J1 J2ᵀ`` over P as one GEMM: ``[N1, N2, K, K]`` (or ``[N1, N2, K]`` if diag)."""
    n1, k, p = j1_NKP.shape
    n2 = j2_NKP.shape[0]
    if diag:  # batched over K on J's own layout: no transposed copies of J
        g_KNN = jax.lax.dot_general(j1_NKP, j2_NKP, (((2,), (2,)), ((1,), (1,))))
        return jnp.transpose(g_KNN, (1, 2, 0))
    g = j1_NKP.reshape(n1 * k, p) @ j2_NKP.reshape(n2 * k, p).T
    return jnp.transpose(g.reshape(n1, k, n2, k), (0, 2, 1, 3))


def contract_jacobians(j1, j2, diag: bool):
    """Sum over parameter leaves of ``J1 J2ᵀ``: ``[N1,N2,K,K]`` (or ``[N1,N2,K]`` if diag)."""
    leaves1 = jax.tree_util.tree_leaves(j1)
    leaves2 = jax.tree_util.tree_leaves(j2)
    total = None
    for l1, l2 in zip(leaves1, leaves2, strict=True):
        j1_NKP = l1.reshape(l1.shape[0], l1.shape[1], -1)
        j2_NKP = l2.reshape(l2.shape[0], l2.shape[1], -1)
        term = gram(j1_NKP, j2_NKP, diag)
        total = term if total is None else total + term
    return total


def jacobian_contraction(apply_fn, params, x1, x2, proj_KO, diag):
    """Materialises per-example Jacobians ``[N, K, P]`` and contracts them over P."""
    j1 = per_example_jacobian(apply_fn, params, x1, proj_KO)
    j2 = j1 if x2 is None else per_example_jacobian(apply_fn, params, x2, proj_KO)
    return contract_jacobians(j1, j2, diag)


def ntk_vector_products(apply_fn, params, x1, x2, proj_KO, diag):
    """Columns of the kernel as ``jvp(f(x1), vjp(f(x2[n]), e_k))``; J is never stored.

    Loops (``lax.map``) over the N2 examples of x2; each step holds one example's K
    parameter-space cotangents (``K x P``) and runs K Jacobian-vector products on x1.
    """
    x2 = x1 if x2 is None else x2
    f_single = project(apply_fn, proj_KO)
    k = proj_KO.shape[0]

    def f1(p):
        return jax.vmap(f_single, in_axes=(None, 0))(p, x1)  # [N1, K]

    def columns(x2_single):
        _, vjp = jax.vjp(lambda p: f_single(p, x2_single), params)
        basis_KK = jnp.eye(k, dtype=jax.eval_shape(f_single, params, x2_single).dtype)

        def one(e_K):
            (tangent,) = vjp(e_K)  # J2[n2, k2]: a params-shaped tangent
            return jax.jvp(f1, (params,), (tangent,))[1]  # [N1, K1]

        return jax.vmap(one)(basis_KK)  # [K2, N1, K1]

    cols_N2KNK = jax.lax.map(columns, x2)
    if diag:
        return jnp.einsum("bkak->abk", cols_N2KNK)
    return jnp.transpose(cols_N2KNK, (2, 0, 3, 1))  # [N1, N2, K1, K2]


def sub_jaxprs(eqn):
    """The jaxprs an equation calls (call, scan, cond branches, while cond/body, custom rules)."""
    for v in eqn.params.values():
        for item in v if isinstance(v, list | tuple) else (v,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _eqn_flops(eqn) -> float:
    out = sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * math.prod(lhs[d] for d in lc)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * out * math.prod(rhs) / out_feat
    return float(out)


def jaxpr_cost(jaxpr) -> tuple[float, bool]:
    """``(FLOPs, exact)`` of a jaxpr, platform-independent.

    2·MACs for ``dot_general`` and convolutions, one per output element for anything else.
    Control flow: a ``scan`` body counts ``length`` times (``fori_loop`` with static bounds
    is a scan), a ``cond`` its most expensive branch, other calls their callee once. A
    ``while`` loop's trip count is unknown: its body and condition count once and ``exact``
    is False, which tells ``auto`` not to trust FLOP ratios that multiply the forward pass
    by N1·N2 (see :func:`ntk.kernels.estimates.choose_implementation`).
    """
    total, exact = 0.0, True
    for eqn in jaxpr.eqns:
        subs = list(sub_jaxprs(eqn))
        if not subs:
            total += _eqn_flops(eqn)
            continue
        costs = [jaxpr_cost(j) for j in subs]
        exact = exact and all(e for _, e in costs)
        name = eqn.primitive.name
        if name == "scan":
            total += eqn.params["length"] * sum(c for c, _ in costs)
        elif name == "cond":
            total += max(c for c, _ in costs)
        elif name == "while":
            total += sum(c for c, _ in costs)
            exact = False
        else:  # call-like: pjit, closed_call, remat, custom_jvp/vjp (the primal body)
            total += costs[0][0]
    return total, exact


def jaxpr_activations(jaxpr, dependent=None) -> float:
    """Elements of the intermediates of a jaxpr that depend on the inputs flagged in
    ``dependent`` (one bool per invar; default all): an upper bound on what a vjp keeps per
    example. Values computed from parameters alone (an NTK-parameterised layer's scaled
    weight ``c·W``) are shared by the whole batch and not counted. ``scan`` bodies count
    ``length`` times; inside control flow every input of a dependent call counts as
    dependent (carries may become so)."""
    flags = [True] * len(jaxpr.invars) if dependent is None else list(dependent)
    live = {v for v, f in zip(jaxpr.invars, flags, strict=True) if f}
    total = 0.0
    for eqn in jaxpr.eqns:
        if not any(isinstance(v, Var) and v in live for v in eqn.invars):
            continue
        name = eqn.primitive.name
        subs = []
        for sub in sub_jaxprs(eqn):
            if name in _POSITIONAL_CALLS and len(sub.invars) == len(eqn.invars):
                inner = [isinstance(v, Var) and v in live for v in eqn.invars]
            else:
                inner = [True] * len(sub.invars)
            subs.append(jaxpr_activations(sub, inner))
        if subs:  # a call's outputs are its callee's intermediates
            total += (eqn.params["length"] if name == "scan" else 1) * max(subs)
        else:
            total += sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
        live.update(eqn.outvars)
    return total


# Call-like primitives whose callee's invars are the equation's invars, one for one (the
# structured analysis inlines these); the custom-derivative calls are positional too.
CALL_PRIMITIVES = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "checkpoint", "remat", "remat2"}
)
_POSITIONAL_CALLS = CALL_PRIMITIVES | {
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of a jaxpr (see :func:`jaxpr_cost`)."""
    return jaxpr_cost(jaxpr)[0]


@dataclass(frozen=True)
class Implementation:
    """A registered implementation and its cost model (FLOPs, used by ``auto``)."""

    fn: Callable[..., Any]
    cost: Callable[..., float]
    doc: str
    forward_mode: bool = False  # needs jax.jvp through apply_fn (fails on custom_vjp)
    # Cost grows like N1·N2 forward passes: not chosen by ``auto`` when the forward pass's
    # FLOP count is a lower bound only (a while loop in the model).
    quadratic_in_forward: bool = False
    # Estimated peak bytes (used by ``auto`` against a memory budget); None: not estimated.
    memory: Callable[..., float] | None = None


# FLOP models, with [FP] = fp the per-example forward pass: a vjp is one forward plus ~2[FP]
# per cotangent (input and weight cotangents), a jvp ~3[FP] per tangent.
def _cost_jacobian(n1, n2, k, p, fp, diag, **_):
    return (n1 + n2) * (1 + 2 * k) * fp + 2.0 * n1 * n2 * (k if diag else k * k) * p


def _cost_ntk_vp(n1, n2, k, p, fp, diag, **_):
    return n2 * k * (3.0 + 3.0 * n1) * fp


# Memory models (bytes), with y the elements of one example's forward intermediates: a vjp
# keeps the forward residuals and carries one cotangent per output through them.
def _memory_jacobian(n1, n2, k, p, y, diag, itemsize, **_):
    kk = k if diag else k * k
    return itemsize * ((n1 + n2) * (k * p + (1 + k) * y) + n1 * n2 * kk)


def _memory_ntk_vp(n1, n2, k, p, y, diag, itemsize, **_):
    kk = k if diag else k * k
    return itemsize * (k * p + (1 + k) * y + 2 * k * n1 * y + n1 * n2 * kk)


IMPLEMENTATIONS: dict[str, Implementation] = {
    "jacobian": Implementation(
        jacobian_contraction,
        _cost_jacobian,
        "Jacobian contraction: exact oracle; memory N·K·P. Wins only for exotic layers.",
        memory=_memory_jacobian,
    ),
    "ntk_vp": Implementation(
        ntk_vector_products,
        _cost_ntk_vp,
        "NTK-vector products: never stores J; cost N1·N2·K forward passes. Wins for a "
        "cheap forward pass with small N.",
        forward_mode=True,
        quadratic_in_forward=True,
        memory=_memory_ntk_vp,
    ),
}
