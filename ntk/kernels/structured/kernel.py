"""Structured derivatives: each weight's eNTK from activations × cotangents.

Design (see ``docs/structured.md``): trace the per-example projected model to a jaxpr once
and find, for every parameter leaf, its uses (:mod:`ntk.kernels.structured.analysis`): dense and
convolution weights (grouped convolutions and batch dimensions give independent groups),
embedding tables (gathers), views of them (reshape, transpose, scaling, slices), several uses
of one leaf (shared and tied weights), and uses inside ``scan`` bodies (stacked layers).
Re-evaluate the jaxpr with hooks (:mod:`ntk.kernels.structured.factors`) to get every use's
activations ``a`` and output cotangents ``δ`` from one vjp per output; then, per leaf,

    Θ_W[n1, n2, k1, k2] = Σ_{uses u, v} Σ_{s ∈ u, t ∈ v} <a1[s], a2[t]> <δ1[k1, s], δ2[k2, t]>

or the materialised ``J_W`` contracted by one GEMM, whichever is cheaper (the min(Y, P)
choice, :mod:`ntk.kernels.structured.contract`). Leaves without a rule ("fallback") are contracted
from their Jacobians as in Jacobian contraction; the eNTK is a sum over parameters, so the
two groups add with no cross terms. :func:`diagnose` says which leaf takes which path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from ntk.kernels.convolution import slice_patches
from ntk.kernels.implementations import (
    IMPLEMENTATIONS,
    Implementation,
    contract_jacobians,
    project,
)
from ntk.kernels.model import Signature, as_model, batch_len, cached_per_callable
from ntk.kernels.structured import contract
from ntk.kernels.structured.analysis import analyse
from ntk.kernels.structured.factors import canonical, factors
from ntk.kernels.structured.uses import Plan


@cached_per_callable
def _plan_cached(sig: Signature, k: int) -> Plan:
    params, x_1, dynamic = sig.abstract_args()
    leaves, treedef = jax.tree_util.tree_flatten(params)
    o = jax.eval_shape(lambda p, a, d: sig.model(d)(p, a), params, x_1, dynamic)

    def fn(leaves, x, dynamic, proj_KO):
        p = jax.tree_util.tree_unflatten(treedef, leaves)
        return project(sig.model(dynamic), proj_KO)(p, x)

    x = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), x_1)
    proj = jax.ShapeDtypeStruct((k, o.shape[1]), o.dtype)
    closed = jax.make_jaxpr(fn)(leaves, x, dynamic, proj)
    return analyse(closed, [tuple(leaf.shape) for leaf in leaves])


def clear_plans() -> None:
    _plan_cached.cache_clear()


def plan_for(apply_fn, params, x, k: int) -> Plan:
    """The (cached) structured plan for ``apply_fn`` (or a Model) at these shapes and K."""
    return _plan_cached(Signature.of(as_model(apply_fn), params, x).per_example(), k)


def choices(plan: Plan, n1, n2, k, diag) -> dict[int, contract.Choice]:
    """The min(Y, P) choice of every structured leaf."""
    return {leaf: contract.choose(rule, n1, n2, k, diag) for leaf, rule in plan.rules.items()}


def effective_plan(plan: Plan, n1, n2, k, diag) -> tuple[Plan, dict]:
    """Off the CPU, with one cotangent (K = 1: pNTK, single logit), a leaf that would
    materialise ``J_W`` becomes a fallback leaf: the vjp forms ``J_W`` itself (for a conv,
    the filter gradient) and no patches are built. On the CPU patches are slices
    (:func:`ntk.kernels.convolution.slice_patches`) and a vmapped filter gradient is a
    grouped convolution with a group per example, so ``J_W`` is patches x cotangents there;
    with K > 1 one GEMM over patches shared by the K cotangents is faster everywhere."""
    chosen = choices(plan, n1, n2, k, diag)
    if k > 1 or slice_patches():
        return plan, chosen
    mat = [leaf for leaf, c in chosen.items() if c.method == "materialise"]
    return plan.without(mat), {leaf: c for leaf, c in chosen.items() if leaf not in mat}


def structured_derivatives(apply_fn, params, x1, x2, proj_KO, diag):
    """Exact projected eNTK with structured rules where they apply (see module doc)."""
    model = as_model(apply_fn)
    leaves = jax.tree_util.tree_leaves(params)
    k = proj_KO.shape[0]
    n1 = batch_len(x1)
    n2 = n1 if x2 is None else batch_len(x2)
    plan, chosen = effective_plan(plan_for(model, params, x1, k), n1, n2, k, diag)
    f1 = factors(plan, model, leaves, x1, proj_KO)
    f2 = f1 if x2 is None else factors(plan, model, leaves, x2, proj_KO)
    (acts1, deltas1, jfb1), (acts2, deltas2, jfb2) = f1, f2
    total = contract_jacobians(jfb1, jfb2, diag) if jfb1 else None
    for leaf, rule in plan.rules.items():
        fac1 = [canonical(u, acts1[u.path, u.record], deltas1[u.perturb_at]) for u in rule.uses]
        fac2 = fac1
        if x2 is not None:
            fac2 = [canonical(u, acts2[u.path, u.record], deltas2[u.perturb_at]) for u in rule.uses]
        term = contract.leaf_kernel(rule, fac1, fac2, diag, chosen[leaf].method)
        total = term if total is None else total + term
    return total


# --- cost model and diagnosis ---------------------------------------------------------------


@dataclass(frozen=True)
class LeafReport:
    """How one parameter leaf is handled by ``implementation="structured"``."""

    name: str  # the leaf's path in params
    shape: tuple[int, ...]
    path: str  # "structured" | "folded bias" | "fallback"
    rule: str  # the rule, or why the leaf falls back
    method: str  # "sum" | "materialise" | "materialise (vjp)" | "jacobian"
    flops: float  # estimated FLOPs of the chosen method (contraction only)
    memory_bytes: float  # estimated peak bytes of its intermediates
    fallback_flops: float  # the same for Jacobian contraction of this leaf
    fallback_memory_bytes: float


def _fallback_cost(size, n1, n2, k, diag, itemsize):
    kk = k if diag else k * k
    return 2.0 * n1 * n2 * kk * size, float((n1 + n2) * k * size * itemsize)


def _leaf_route(i, plan, base, chosen, folded, leaves_p, itemsize, fallback, sizes) -> tuple:
    """``(path, rule, method, FLOPs, bytes)`` of leaf ``i`` under the effective ``plan``
    (``base`` before the K = 1 choice); ``fallback`` is its Jacobian ``(FLOPs, bytes)``,
    ``sizes`` is ``(n1, n2, k, diag)``."""
    n1, n2, k, diag = sizes
    if i in plan.rules:
        c = chosen[i]
        return "structured", plan.rules[i].describe(), c.method, c.flops, c.elements * itemsize
    if i in folded:
        w = jax.tree_util.keystr(leaves_p[folded[i]][0])
        return "folded bias", f"bias of {w}", "sum", 0.0, 0.0
    if i in base.rules:  # K = 1 and materialising: the vjp forms J_W (patches x cotangents)
        flops = contract.choose(base.rules[i], n1, n2, k, diag).mat_flops
        return "structured", base.rules[i].describe(), "materialise (vjp)", flops, fallback[1]
    why = base.reasons.get(i, "bias of a leaf that materialises by vjp (K = 1)")
    return "fallback", why, "jacobian", *fallback


def leaf_reports(apply_fn, params, x1, n2, k, diag) -> list[LeafReport]:
    """One :class:`LeafReport` per parameter leaf (in ``tree_leaves`` order)."""
    leaves_p, _ = jax.tree_util.tree_flatten_with_path(params)
    n1 = batch_len(x1)
    base = plan_for(apply_fn, params, x1, k)
    plan, chosen = effective_plan(base, n1, n2, k, diag)
    folded = plan.folded_biases
    out = []
    for i, (kp, leaf) in enumerate(leaves_p):
        itemsize = np.dtype(leaf.dtype).itemsize
        fb = _fallback_cost(int(np.size(leaf)), n1, n2, k, diag, itemsize)
        sizes = (n1, n2, k, diag)
        route = _leaf_route(i, plan, base, chosen, folded, leaves_p, itemsize, fb, sizes)
        path, rule, method, flops, memory_bytes = route
        out.append(
            LeafReport(
                name=jax.tree_util.keystr(kp) or "<root>",
                shape=tuple(np.shape(leaf)),
                path=path,
                rule=rule,
                method=method,
                flops=flops,
                memory_bytes=memory_bytes,
                fallback_flops=fb[0],
                fallback_memory_bytes=fb[1],
            )
        )
    return out


def structured_cost(n1, n2, k, p, fp, diag, *, apply_fn, params, x1, **_):
    """Estimated FLOPs: a forward pass and K input-cotangent backward passes per example, the
    site sums, the weight Jacobians of leaves that materialise (by the vjp when K = 1) and
    the fallback contractions."""
    reports = _reports_or_none(apply_fn, params, x1, n2, k, diag)
    if reports is None:
        return math.inf
    return (n1 + n2) * (1 + k) * fp + sum(r.flops for r in reports)


def structured_memory(n1, n2, k, p, y, diag, itemsize, *, apply_fn, params, x1, **_):
    """Estimated peak bytes: per-example residuals and cotangents of the forward pass, every
    use's factors, the largest per-leaf temporary and the fallback Jacobians."""
    reports = _reports_or_none(apply_fn, params, x1, n2, k, diag)
    if reports is None:
        return math.inf
    plan, _ = effective_plan(plan_for(apply_fn, params, x1, k), batch_len(x1), n2, k, diag)
    factor_elems = 0.0
    for rule in plan.rules.values():
        for u in rule.uses:
            g, s, c, f = u.dims()
            factor_elems += g * s * (k * f + (1 if u.kind == "gather" else c))
    kk = k if diag else k * k
    fb = sum(r.memory_bytes for r in reports if r.path == "fallback" or "vjp" in r.method)
    big = max([r.memory_bytes for r in reports if r.path == "structured"] or [0.0])
    elems = (n1 + n2) * ((1 + k) * y + factor_elems) + n1 * n2 * kk
    return elems * itemsize + fb + big


def _reports_or_none(apply_fn, params, x1, n2, k, diag):
    try:
        return leaf_reports(apply_fn, params, x1, n2, k, diag)
    except Exception as e:  # a model the analysis cannot handle: never choose structured
        from ntk.kernels.estimates import warn_once
        from ntk.kernels.model import fn_key

        warn_once(
            ("structured", fn_key(as_model(apply_fn).apply_fn), type(e).__name__),
            "implementation='auto': the structured-derivatives analysis failed on this model "
            f"({type(e).__name__}: {e}); choosing among the other implementations. "
            "Please report this with the model.",
        )
        return None


IMPLEMENTATIONS["structured"] = Implementation(
    structured_derivatives,
    structured_cost,
    "Structured derivatives: dense/conv/embedding weights (shared, tied, scan-stacked, "
    "per-head, grouped) from activations x cotangents, other leaves by Jacobian "
    "contraction. Usually fastest when O < width.",
    memory=structured_memory,
)
