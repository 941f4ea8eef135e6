"""Structured derivatives, step 2: activations and cotangents of every use, by re-evaluation.

The jaxpr is evaluated equation by equation (``Primitive.bind``, so custom derivative rules
are kept) with two hooks: the *other* input of each use is recorded (the activation; the
indices for a gather), and a zero perturbation ``ε`` is added to its output. Scans that hold
uses are re-run as ``lax.scan`` over the hooked body, so activations come out stacked as
``ys`` and perturbations go in as ``xs``. One vjp per output with respect to
``(ε, fallback leaves)`` then gives every cotangent ``δ = ∂f_k/∂ε`` and the Jacobians of the
fallback leaves.

Each use is then put in canonical form, per example: activations ``A: [G, S, C]`` (for a
gather, row ids ``[G, S]``) and cotangents ``D: [K, G, S, F]``, with

    J_W[k, g] = Σ_s A[g, s] ⊗ D[k, g, s]     (in the use's coordinates of the leaf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.extend.core import DropVar, Literal

from ntk.kernels.convolution import conv_gemm_and_patches, lowering, patches, slice_patches
from ntk.kernels.model import Model
from ntk.kernels.structured.uses import Plan, Use, bind, inner_jaxpr


class _Ctx:
    def __init__(self, record: dict, eps: dict, scans):
        self.record, self.eps, self.scans = record, eps, scans
        self.acts: dict = {}


def _below(d, p):
    n = len(p)
    return {q: v for q, v in d.items() if len(q) > n and q[:n] == p}


def evaluate(jaxpr, consts, args, path, ctx: _Ctx):
    """Evaluates a jaxpr with calls inlined, recording and perturbing as ``ctx`` says."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts, strict=True):
        env[v] = val
    for v, val in zip(jaxpr.invars, args, strict=True):
        env[v] = val
    for i, eqn in enumerate(jaxpr.eqns):
        p = path + (i,)
        invals = [read(v) for v in eqn.invars]
        inner = inner_jaxpr(eqn)
        if inner is not None:
            outvals = evaluate(inner[0], inner[1], invals, p, ctx)
        elif p in ctx.scans:
            outvals = _scan(eqn, invals, p, ctx)
        elif eqn.primitive.name == "conv_general_dilated" and _gemm(eqn):
            y, cols = conv_gemm_and_patches(*invals, **eqn.params)
            outvals = [y]
            invals[0] = cols  # a kernel's use records these patches, not the image
        else:
            ans = bind(eqn, invals)
            outvals = list(ans) if eqn.primitive.multiple_results else [ans]
        for j in ctx.record.get(p, ()):
            ctx.acts[p, j] = invals[j]
        if p in ctx.eps:
            outvals = [outvals[0] + ctx.eps[p], *outvals[1:]]
        for v, val in zip(eqn.outvars, outvals, strict=True):
            if not isinstance(v, DropVar):
                env[v] = val
    return [read(v) for v in jaxpr.outvars]


def _gemm(eqn) -> bool:
    """Whether a convolution runs as :func:`conv_gemm` (its kernel's use then records the
    patches of the product, ``[nb, *out, G·k·Cg]``, instead of the input image)."""
    return eqn.params["batch_group_count"] == 1 and lowering(eqn.outvars[0].aval.dtype) == "gemm"


def _scan(eqn, invals, p, ctx: _Ctx):
    prm = eqn.params
    nc, ncar = prm["num_consts"], prm["num_carry"]
    closed = prm["jaxpr"]
    consts, carry, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
    eps = _below(ctx.eps, p)
    record = _below(ctx.record, p)
    scans = {q for q in ctx.scans if len(q) > len(p) and q[: len(p)] == p}

    def body(c, xe):
        x, e = xe
        sub = _Ctx(record, e, scans)
        out = evaluate(closed.jaxpr, closed.consts, [*consts, *c, *x], p, sub)
        return out[:ncar], (out[ncar:], sub.acts)

    c_out, (ys, acts) = jax.lax.scan(
        body,
        list(carry),
        (list(xs), eps),
        length=prm["length"],
        reverse=prm["reverse"],
        unroll=prm["unroll"],
    )
    ctx.acts.update(acts)
    return [*c_out, *ys]


def factors(plan: Plan, model: Model, leaves: list, x_N, proj_KO):
    """Per-example records and cotangents of every use, and the fallback Jacobians.

    Returns ``(acts, deltas, jac_fb)``: ``acts[(path, j)]`` is ``[N, *lengths, *shape]``,
    ``deltas[path]`` is ``[N, K, *lengths, *out_shape]`` and ``jac_fb`` is a list of
    ``[N, K, *leaf.shape]`` (in ``plan.fallback`` order).
    """
    record: dict = {}
    eps0: dict = {}
    for rule in plan.rules.values():
        for u in rule.uses:
            record.setdefault(u.path, set()).add(u.record)
            eps0[u.perturb_at] = jnp.zeros((*u.lengths, *u.out_shape), u.dtype)
    record = {p: sorted(js) for p, js in record.items()}
    fb = plan.fallback
    k = proj_KO.shape[0]

    def forward(fb_leaves, eps, x):
        full = list(leaves)
        for i, val in zip(fb, fb_leaves, strict=True):
            full[i] = val
        ctx = _Ctx(record, eps, plan.scans)
        args = [*full, *jax.tree_util.tree_leaves(x), *model.dynamic, proj_KO]
        (out,) = evaluate(plan.closed.jaxpr, plan.closed.consts, args, (), ctx)
        return out, ctx.acts

    def per_example(x):
        out, vjp_fn, acts = jax.vjp(
            lambda f, e: forward(f, e, x), [leaves[i] for i in fb], eps0, has_aux=True
        )
        jac_fb, deltas = jax.vmap(vjp_fn)(jnp.eye(k, dtype=out.dtype))
        return acts, deltas, jac_fb

    return jax.vmap(per_example)(x_N)


# --- canonical form -------------------------------------------------------------------------


@dataclass
class Factor:
    """One use in canonical form: ``act`` ``[N, G, S, C]`` (dense) or row ids ``[N, G, S]``
    with ``valid`` (a gather), and cotangents ``cot`` ``[N, K, G, S, F]``."""

    act: jax.Array
    cot: jax.Array
    onehot: int = 0  # the number of rows C of a gather's implicit one-hot activations
    valid: jax.Array | None = None


def canonical(use: Use, other, delta) -> Factor:
    """``other: [N, *lengths, *other_shape]``, ``delta: [N, K, *lengths, *out_shape]``."""
    n, k = delta.shape[:2]
    nl = len(use.lengths)
    b = n * math.prod(use.lengths)
    o_B = other.reshape(b, *other.shape[1 + nl :])
    d_BK = jnp.moveaxis(delta, 1, 1 + nl).reshape(b, k, *use.out_shape)
    if use.kind == "gather":
        a_B, valid_B, d_B = _gather(use, o_B, d_BK)
    elif use.kind == "conv":
        a_B, d_B = _conv(use, o_B, d_BK)
        valid_B = None
    else:
        a_B, d_B = _dot(use, o_B, d_BK)
        valid_B = None
    gw, s = d_B.shape[2], d_B.shape[3]
    sliced = [i for i, st in enumerate(use.stacked) if st]
    const = [i for i, st in enumerate(use.stacked) if not st]
    g = gw * math.prod(use.lengths[i] for i in sliced)
    s_all = s * math.prod(use.lengths[i] for i in const)
    # [lead, *L, Gw, S, ...] -> [lead, *L_sliced, Gw, *L_const, S, ...] -> [lead, G, S', ...]
    order = [0, *(1 + i for i in sliced), 1 + nl, *(1 + i for i in const), 2 + nl]

    def regroup(x, lead):
        x = jnp.transpose(x, [*order, *range(3 + nl, x.ndim)])
        return x.reshape(lead, g, s_all, *x.shape[3 + nl :])

    d = d_B.reshape(n, *use.lengths, k, gw, s, d_B.shape[-1])
    d = jnp.moveaxis(d, 1 + nl, 1).reshape(n * k, *use.lengths, gw, s, d_B.shape[-1])
    d = regroup(d, n * k).reshape(n, k, g, s_all, -1)
    if use.kind == "gather":
        ids = regroup(a_B.reshape(n, *use.lengths, gw, s), n)
        valid = regroup(valid_B.reshape(n, *use.lengths, gw, s), n)
        return Factor(ids, use.scale * d, onehot=use.group_dims()[2], valid=valid)
    a = use.scale * regroup(a_B.reshape(n, *use.lengths, gw, s, -1), n)
    if use.bias_leaf is not None:
        ones = jnp.full((*a.shape[:-1], 1), use.bias_scale, a.dtype)
        a = jnp.concatenate([a, ones], axis=-1)
    return Factor(a, d)


def _dot(use: Use, o_B, d_BK):
    """``[B, G, S, C]`` and ``[B, K, G, S, F]`` of a dot_general (batch dims are groups)."""
    (lc, rc), (lb, rb) = use.params["dimension_numbers"]
    oc, ob = (rc, rb) if use.operand == 0 else (lc, lb)
    nd_o = len(use.other_shape)
    of = [d for d in range(nd_o) if d not in oc and d not in ob]
    g, s, c, f = use.group_dims()
    b, k = d_BK.shape[:2]
    a = jnp.transpose(o_B, [0, *(1 + d for d in (*ob, *of, *oc))]).reshape(b, g, s, c)
    nb, nf = len(ob), len(of)
    nd_y = len(use.out_shape)
    if use.operand == 1:  # y = [batch, free_other, free_w]
        order = list(range(nd_y))
    else:  # y = [batch, free_w, free_other]
        nw = nd_y - nb - nf
        order = [*range(nb), *range(nb + nw, nd_y), *range(nb, nb + nw)]
    d = jnp.transpose(d_BK, [0, 1, *(2 + d for d in order)]).reshape(b, k, g, s, f)
    return a, d


def _conv(use: Use, o_B, d_BK):
    """Image patches ``[B, G, S, k·Cg]`` (features ordered (*window, channel), as
    :meth:`Use.canonical_index` orders the kernel) and cotangents ``[B, K, G, S, Fg]``."""
    prm = use.params
    lhs_spec, rhs_spec, out_spec = prm["dimension_numbers"]
    g, s, c, f = use.group_dims()
    b, k = d_BK.shape[:2]
    window = [use.weight_shape[d] for d in rhs_spec[2:]]
    args = (prm["window_strides"], prm["padding"], prm["lhs_dilation"], prm["rhs_dilation"])
    if lowering(use.dtype) == "gemm":  # o_B holds the forward's patches [B, nb, *out, G·k·Cg]
        nb = o_B.shape[1]
        a = o_B.reshape(b, nb, -1, g, c)
    elif slice_patches():  # slices, not a convolution with a one-hot filter
        x = jnp.transpose(o_B, [0, *(1 + d for d in (*lhs_spec[:1], *lhs_spec[2:], lhs_spec[1]))])
        nb = x.shape[1]  # [B, nb, *sp, C]
        col = patches(x.reshape(b * nb, *x.shape[2:]), window, *args, g)  # [B·nb, *out, G·k·Cg]
        a = col.reshape(b, nb, -1, g, c)
    else:
        x = jnp.transpose(o_B, [0, *(1 + d for d in lhs_spec)])  # [B, nb, C, sp...]
        nb = x.shape[1]
        col = jax.lax.conv_general_dilated_patches(
            x.reshape(b * nb, *x.shape[2:]), window, *args, precision=prm["precision"]
        )  # [B·nb, C·k, *out], features ordered (group, channel in group, *window)
        col = col.reshape(b, nb, g, -1, math.prod(window), s // nb)
        a = jnp.transpose(col, (0, 1, 5, 2, 4, 3)).reshape(b, nb, -1, g, c)
    a = jnp.swapaxes(a.reshape(b, s, g, c), 1, 2)
    d_t = jnp.transpose(d_BK, [0, 1, *(2 + d for d in out_spec)])  # [B, K, nb, F, sp...]
    d_t = d_t.reshape(b, k, nb, g * f, -1)
    d = jnp.swapaxes(d_t, 3, 4).reshape(b, k, s, g, f)
    return a, jnp.swapaxes(d, 2, 3)


def _gather(use: Use, o_B, d_BK):
    """Row ids and validity ``[B, 1, S]`` and cotangents ``[B, K, 1, S, F]`` of a lookup."""
    dn = use.params["dimension_numbers"]
    _, s, v, f = use.group_dims()
    b, k = d_BK.shape[:2]
    ids = o_B.reshape(b, 1, s).astype(jnp.int32)
    mode = getattr(use.params["mode"], "name", str(use.params["mode"]))
    if mode == "FILL_OR_DROP":  # out-of-range rows are filled: no dependence on the table
        valid = (ids >= 0) & (ids < v)
    else:  # clamped, as the gather itself does
        ids = jnp.clip(ids, 0, v - 1)
        valid = jnp.ones_like(ids, bool)
    nd_y = len(use.out_shape)
    batch = [d for d in range(nd_y) if d not in dn.offset_dims]
    order = [*batch, *dn.offset_dims]
    d = jnp.transpose(d_BK, [0, 1, *(2 + d for d in order)]).reshape(b, k, 1, s, f)
    return jnp.where(valid, ids, 0), valid, d
