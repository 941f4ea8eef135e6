"""Structured derivatives, step 3: each structured leaf's kernel from its factors, and costs.

A leaf's uses are grouped (see :class:`~ntk.kernels.structured.uses.LeafRule`) into classes on
disjoint parts of the leaf; inside a class, uses of the same orientation and activation kind
are concatenated along positions. With ``P``/``Q`` the two coordinate factors of a group in
the class's reference orientation (activation and cotangent, swapped for a transposed use),

    Θ_class[n1, n2, k1, k2] = Σ_{u, v} Σ_g Σ_{s ∈ u, t ∈ v} <P_u[s], P_v[t]> <Q_u[s], Q_v[t]>

where the cotangent factor of each side carries its output index. A gather's activation is
a one-hot row, so ``<onehot(i), onehot(j)> = [i = j]`` and ``<onehot(i), y> = y[i]``: the cost
never depends on the number of rows V. The alternative, chosen when cheaper (the min(Y, P)
choice), materialises ``J[n, k] = Σ_s P[s] ⊗ Q[s]`` (a segment sum for a gather) and contracts
it with one GEMM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import opt_einsum

from ntk.kernels.implementations import gram
from ntk.kernels.structured.factors import Factor
from ntk.kernels.structured.uses import LeafRule

# A structured sum whose einsum would hold more elements than this materialises J instead.
MAX_INTERMEDIATE = 2**27
# The sums over position pairs run at a lower FLOP rate than the GEMMs of the materialised
# path (measured ~2x on CPU); their FLOP estimate is weighted by this factor.
SUM_PENALTY = 2.0


def einsum_cost(subscripts, *shapes) -> tuple[float, float]:
    _, info = opt_einsum.contract_path(subscripts, *shapes, shapes=True, optimize="optimal")
    return float(info.opt_cost), float(info.largest_intermediate)


@dataclass(frozen=True)
class Group:
    """Uses of one class with the same orientation and activation kind (static)."""

    orient: int  # 1: the use sees the class's reference transposed
    onehot: bool  # activations are one-hot rows (a gather)
    members: tuple[int, ...]  # use indices
    g: int
    s: int  # positions, all members together
    c: int  # activation width (rows of a gather)
    f: int  # cotangent width

    def factor_specs(self):
        """``(P, Q)``: each ``(kind, carries_k, width)``."""
        act = ("onehot" if self.onehot else "dense", False, self.c)
        cot = ("dense", True, self.f)
        return (act, cot) if self.orient == 0 else (cot, act)


def groups(rule: LeafRule) -> list[list[Group]]:
    """Per class, its groups."""
    out = []
    for cls in rule.classes:
        by_key: dict = {}
        for i, orient in cls:
            use = rule.uses[i]
            by_key.setdefault((orient, use.kind == "gather"), []).append(i)
        gs = []
        for (orient, onehot), members in by_key.items():
            dims = [rule.uses[i].dims() for i in members]
            g, _, c, f = dims[0]
            gs.append(Group(orient, onehot, tuple(members), g, sum(d[1] for d in dims), c, f))
        out.append(gs)
    return out


def is_simple(gs: list[Group]) -> bool:
    return len(gs) == 1 and gs[0].orient == 0 and not gs[0].onehot


# --- costs ----------------------------------------------------------------------------------


def site_costs(n1, n2, k, g, s, c, f, diag) -> tuple[float, float, float]:
    """FLOPs of the structured sum and of materialising J for one dense group, and the
    sum's largest temporary."""
    kk = k if diag else k * k
    mat = 2.0 * (n1 + n2) * k * g * s * c * f + 2.0 * n1 * n2 * kk * g * c * f
    if s == 1 and g == 1:
        return 2.0 * n1 * n2 * c + 2.0 * n1 * n2 * kk * (f + 1), mat, float(n1 * n2 * kk)
    out = "abk" if diag else "abkl"
    d2 = "bkgtf" if diag else "blgtf"
    struct, largest = einsum_cost(
        f"agsc,bgtc,akgsf,{d2}->{out}",
        (n1, g, s, c),
        (n2, g, s, c),
        (n1, k, g, s, f),
        (n2, k, g, s, f),
    )
    return SUM_PENALTY * struct, mat, largest


def _ip_layout(x, y, letter, diag, n1, n2, k, g, s, t):
    """Einsum operands ``[(subscripts, shape, how)]`` of ``<X[s], Y[t]>`` and their build
    FLOPs; ``how`` says how :func:`_ip_build` makes each operand."""
    ll = "k" if diag else "l"
    (xk, xhk, xd), (yk, yhk, yd) = x, y
    kx, ky = ("k" if xhk else ""), (ll if yhk else "")
    shx, shy = ((k,) if xhk else ()), ((k,) if yhk else ())
    if xk == "dense" and yk == "dense":
        return [
            ("a" + kx + "gs" + letter, (n1, *shx, g, s, xd), "x"),
            ("b" + ky + "gt" + letter, (n2, *shy, g, t, yd), "y"),
        ], 0.0
    if xk == "onehot" and yk == "onehot":
        return [("abgst", (n1, n2, g, s, t), "match")], float(n1 * n2 * g * s * t)
    if xk == "onehot":  # y[b, l, g, t, ids_x[a, g, s]]
        shape = (n1, n2, *shy, g, s, t)
        return [("ab" + ky + "gst", shape, "take_y")], float(math.prod(shape))
    shape = (n2, n1, *shx, g, t, s)  # x[a, k, g, s, ids_y[b, g, t]]
    return [("ba" + kx + "gts", shape, "take_x")], float(math.prod(shape))


def _pair_layout(g1: Group, g2: Group, diag, n1, n2, k):
    (p1, q1), (p2, q2) = g1.factor_specs(), g2.factor_specs()
    lp, cp = _ip_layout(p1, p2, "p", diag, n1, n2, k, g1.g, g1.s, g2.s)
    lq, cq = _ip_layout(q1, q2, "q", diag, n1, n2, k, g1.g, g1.s, g2.s)
    return lp, lq, cp + cq


def class_costs(gs: list[Group], n1, n2, k, diag) -> tuple[float, float, float, float]:
    """``(sum FLOPs, sum largest temporary, materialise FLOPs, materialise elements)``."""
    g0 = gs[0]
    p, q = (g0.c, g0.f) if g0.orient == 0 else (g0.f, g0.c)
    kk = k if diag else k * k
    mat = 2.0 * n1 * n2 * kk * g0.g * p * q
    for grp in gs:
        per = 2.0 * k * grp.g * grp.s * (1 if grp.onehot else grp.c) * grp.f
        mat += (n1 + n2) * per
    mat_mem = float((n1 + n2) * k * g0.g * p * q)
    if is_simple(gs):
        struct, _, largest = site_costs(n1, n2, k, g0.g, g0.s, g0.c, g0.f, diag)
        return struct, largest, mat, mat_mem
    out = "abk" if diag else "abkl"
    struct, largest = 0.0, 0.0
    for a in gs:
        for b in gs:
            lp, lq, build = _pair_layout(a, b, diag, n1, n2, k)
            ops = lp + lq
            flops, big = einsum_cost(",".join(o[0] for o in ops) + "->" + out, *(o[1] for o in ops))
            struct += SUM_PENALTY * flops + build
            largest = max(largest, big, *(math.prod(o[1]) for o in ops if o[2] != "x"))
    return struct, largest, mat, mat_mem


@dataclass(frozen=True)
class Choice:
    """How a structured leaf is contracted, with its estimated FLOPs and peak elements."""

    method: str  # "sum" | "materialise"
    flops: float
    elements: float
    sum_flops: float
    sum_elements: float
    mat_flops: float
    mat_elements: float


def choose(rule: LeafRule, n1, n2, k, diag) -> Choice:
    """The min(Y, P) choice for one leaf: sum over position pairs or materialise ``J``."""
    sf = se = mf = me = 0.0
    gss = groups(rule)
    for gs in gss:
        a, b, c, d = class_costs(gs, n1, n2, k, diag)
        sf, se, mf, me = sf + a, max(se, b), mf + c, me + d
    dense = all(is_simple(gs) and gs[0].g == gs[0].s == 1 for gs in gss)  # (a·a')(δ·δ')
    if dense or (sf <= mf and se <= MAX_INTERMEDIATE):
        return Choice("sum", sf, se, sf, se, mf, me)
    return Choice("materialise", mf, me, sf, se, mf, me)


# --- kernels --------------------------------------------------------------------------------


def _concat(rule: LeafRule, grp: Group, facs: list[Factor]) -> Factor:
    parts = [facs[i] for i in grp.members]
    if len(parts) == 1:
        return parts[0]
    act = jnp.concatenate([f.act for f in parts], axis=2)
    cot = jnp.concatenate([f.cot for f in parts], axis=3)
    valid = None
    if grp.onehot:
        valid = jnp.concatenate([f.valid for f in parts], axis=2)
    return Factor(act, cot, parts[0].onehot, valid)


def leaf_kernel(rule: LeafRule, facs1, facs2, diag, method):
    """The leaf's ``[N1, N2, K, K]`` (or ``[N1, N2, K]``) from its uses' factors."""
    total = None
    for gs in groups(rule):
        f1 = [_concat(rule, grp, facs1) for grp in gs]
        f2 = f1 if facs2 is facs1 else [_concat(rule, grp, facs2) for grp in gs]
        if method == "materialise":
            j1 = _materialise(gs, f1)
            j2 = j1 if f2 is f1 else _materialise(gs, f2)
            term = gram(j1, j2, diag)
        elif is_simple(gs):
            term = _dense_sum(f1[0], f2[0], diag)
        else:
            term = None
            for ga, fa in zip(gs, f1, strict=True):
                for gb, fb in zip(gs, f2, strict=True):
                    t = _pair_sum(ga, fa, gb, fb, diag)
                    term = t if term is None else term + t
        total = term if total is None else total + term
    return total


def _dense_sum(f1: Factor, f2: Factor, diag):
    a1, d1, a2, d2 = f1.act, f1.cot, f2.act, f2.cot
    _, _, g, s, _ = d1.shape
    if g == 1 and s == 1:
        g_ab = a1[:, 0, 0] @ a2[:, 0, 0].T
        if diag:
            return g_ab[:, :, None] * jnp.einsum("akf,bkf->abk", d1[:, :, 0, 0], d2[:, :, 0, 0])
        dd = jnp.einsum("akf,blf->abkl", d1[:, :, 0, 0], d2[:, :, 0, 0])
        return g_ab[:, :, None, None] * dd
    spec = "agsc,bgtc,akgsf,bkgtf->abk" if diag else "agsc,bgtc,akgsf,blgtf->abkl"
    return jnp.einsum(spec, a1, a2, d1, d2, optimize="optimal")


def _sides(grp: Group, fac: Factor):
    """``(P, Q)`` arrays of a group: dense arrays, or ``(ids, valid)`` for one-hot rows."""
    act = (fac.act, fac.valid) if grp.onehot else fac.act
    return (act, fac.cot) if grp.orient == 0 else (fac.cot, act)


def _pair_sum(ga: Group, fa: Factor, gb: Group, fb: Factor, diag):
    n1, n2, k = fa.cot.shape[0], fb.cot.shape[0], fa.cot.shape[1]
    lp, lq, _ = _pair_layout(ga, gb, diag, n1, n2, k)
    (pa, qa), (pb, qb) = _sides(ga, fa), _sides(gb, fb)
    operands, subs = [], []
    for layout, x, y in ((lp, pa, pb), (lq, qa, qb)):
        for sub, _, how in layout:
            subs.append(sub)
            operands.append(_ip_build(how, x, y, fa.cot.dtype))
    out = "abk" if diag else "abkl"
    return jnp.einsum(",".join(subs) + "->" + out, *operands, optimize="optimal")


def _ip_build(how, x, y, dtype):
    if how == "x":
        return x
    if how == "y":
        return y
    if how == "match":
        (i1, v1), (i2, v2) = x, y
        eq = i1[:, None, :, :, None] == i2[None, :, :, None, :]
        ok = v1[:, None, :, :, None] & v2[None, :, :, None, :]
        return (eq & ok).astype(dtype)
    if how == "take_y":  # [a, b, (l), g, s, t]
        return _take(y, x)
    return _take(x, y)  # take_x: [b, a, (k), g, t, s]


def _take(dense, onehot):
    """``dense[m, (k), g, t, ids[a, g, s]]`` -> ``[a, m, (k), g, s, t]`` (zero where invalid)."""
    ids, valid = onehot
    has_k = dense.ndim == 5
    g_axis = 2 if has_k else 1

    def one(y_g, ids_g, valid_g):  # y_g [m, (k), t, V]; ids_g [a, s]
        r = jnp.take(y_g, ids_g, axis=-1, mode="clip")  # [m, (k), t, a, s]
        r = jnp.where(valid_g, r, 0)
        r = jnp.moveaxis(r, -2, 0)  # [a, m, (k), t, s]
        return jnp.swapaxes(r, -1, -2)  # [a, m, (k), s, t]

    return jax.vmap(one, in_axes=(g_axis, 1, 1), out_axes=g_axis + 1)(dense, ids, valid)


def _materialise(gs: list[Group], facs: list[Factor]):
    """``J[n, k] = Σ_groups Σ_s P[s] ⊗ Q[s]`` flattened to ``[N, K, G·P·Q]``."""
    total = None
    for grp, fac in zip(gs, facs, strict=True):
        if not grp.onehot:
            spec = "ngsp,nkgsq->nkgpq" if grp.orient == 0 else "nkgsp,ngsq->nkgpq"
            args = (fac.act, fac.cot) if grp.orient == 0 else (fac.cot, fac.act)
            j = jnp.einsum(spec, *args)
        else:
            j = _scatter_rows(fac, grp.c)  # [N, K, G, V, F]
            if grp.orient == 1:
                j = jnp.swapaxes(j, -1, -2)
        total = j if total is None else total + j
    n, k = total.shape[:2]
    return total.reshape(n, k, -1)


def _scatter_rows(fac: Factor, v):
    """``J[n, k, g, r] = Σ_{s: ids = r} D[n, k, g, s]``: ``[N, K, G, V, F]``."""
    seg = jnp.where(fac.valid, fac.act, v)  # invalid rows are dropped

    def one(d_ksf, ids_s):
        rows = jax.ops.segment_sum(jnp.swapaxes(d_ksf, 0, 1), ids_s, num_segments=v)
        return jnp.swapaxes(rows, 0, 1)  # [K, V, F]

    per_g = jax.vmap(one, in_axes=(1, 0), out_axes=1)  # over g
    return jax.vmap(per_g)(fac.cot, seg)
