"""Structured derivatives: the eNTK of dense and conv weights from activations × cotangents.

Design (see ``docs/structured.md``): trace the per-example projected model to a jaxpr once,
find every parameter leaf whose *only* use is as an operand of one ``dot_general`` or one
``conv_general_dilated`` (possibly through reshape / transpose / unit broadcasts / dtype casts /
constant scalar scaling), and re-evaluate the jaxpr with two hooks at those sites: record the
other operand ``a`` (the activation) and add a zero perturbation ``ε`` to the output. Then one
vjp per output gives ``δ = ∂f_k/∂ε`` for every such site and the full Jacobian of every other
("fallback") leaf. For a site ``y = a · V`` with ``V = c·T(W)`` (T a permutation/reshape)

    Θ_W[n1, n2, k1, k2] = c² Σ_{s,t} (a1[s] · a2[t]) (δ1[k1, s] · δ2[k2, t])

where s, t index the positions sharing the weight (1 for dense layers, output pixels for
convolutions, whose ``a`` are image patches). Per site we either evaluate this sum or
materialise ``J_V[k] = Σ_s a[s] ⊗ δ[k, s]`` and contract it, whichever costs fewer FLOPs (the
min(Y, P) choice). Fallback leaves (biases, norm scales, embeddings, weights used twice,
anything else) are contracted from their Jacobians exactly as in Jacobian contraction; the
eNTK is a sum over parameters, so the two groups add with no cross terms.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, Literal

from ntk.kernels.implementations import (
    IMPLEMENTATIONS,
    Implementation,
    contract_jacobians,
    gram,
    project,
)
from ntk.kernels.model import Model, Signature, as_model, batch_len

_CALLS = ("jit", "pjit", "closed_call", "core_call", "checkpoint", "remat")
_SHAPE_OPS = ("reshape", "transpose", "squeeze", "expand_dims", "copy", "copy_p")
# A structured site whose einsum would hold more elements than this materialises J instead.
_MAX_INTERMEDIATE = 2**27
# The structured sum over position pairs runs at a lower FLOP rate than the GEMMs of the
# materialised path (measured ~2x on CPU); its FLOP estimate is weighted by this factor.
_SUM_PENALTY = 2.0


def _inner_jaxpr(eqn) -> tuple[Jaxpr, list] | None:
    """The callee of a call-like equation (inlined by both passes), else None."""
    if eqn.primitive.name not in _CALLS:
        return None
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(sub, ClosedJaxpr):
        return sub.jaxpr, list(sub.consts)
    if isinstance(sub, Jaxpr):
        return sub, []
    return None


@dataclass(frozen=True)
class Site:
    """One structured use of a leaf: ``y = dot_general(a, V)`` or ``conv(a, V)``."""

    leaf: int
    path: tuple[int, ...]
    kind: str  # "dot" | "conv"
    operand: int  # which operand of the equation is the weight (0 or 1)
    scale: float  # V = scale · T(W)
    params: Any  # the equation's params
    other_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: Any
    bias_leaf: int | None = None  # a bias added right after the site, folded in as a 1-feature
    bias_scale: float = 0.0
    eps_path: tuple[int, ...] | None = None  # where the output perturbation goes (the add)

    @property
    def perturb_at(self) -> tuple[int, ...]:
        return self.path if self.eps_path is None else self.eps_path

    def feature_dims(self) -> list[int]:
        """Dims of the site output that index the weight's output features."""
        if self.kind == "conv":
            return [self.params["dimension_numbers"][2][1]]
        (lc, rc), _ = self.params["dimension_numbers"]
        c_w = lc if self.operand == 0 else rc
        n_free_w = len(self.weight_shape) - len(c_w)
        nd = len(self.out_shape)
        return list(range(nd - n_free_w, nd)) if self.operand == 1 else list(range(n_free_w))


@dataclass(frozen=True)
class BiasUse:
    """A leaf added (after a scaled permutation) to the output of a structured site."""

    leaf: int
    scale: float
    site_path: tuple[int, ...]
    add_path: tuple[int, ...]
    post_scale: float  # the site output was multiplied by this constant before the add


@dataclass
class Plan:
    """Result of the analysis: which leaves are structured and where their sites are."""

    closed: ClosedJaxpr
    n_leaves: int
    sites: dict[int, Site] = field(default_factory=dict)  # weight leaf -> site

    @property
    def fallback(self) -> list[int]:
        done = set(self.sites) | {s.bias_leaf for s in self.sites.values()}
        return [i for i in range(self.n_leaves) if i not in done]


def _const_scalar(v, consts: dict) -> float | None:
    if isinstance(v, Literal):
        val = np.asarray(v.val)
    elif v in consts:
        val = np.asarray(consts[v])
    else:
        return None
    return float(val) if val.size == 1 else None


class _Analysis:
    """One pass over the (inlined) jaxpr: tags param images and records their uses."""

    def __init__(self, n_leaves: int):
        self.uses: dict[int, list] = {i: [] for i in range(n_leaves)}

    def run(self, jaxpr: Jaxpr, consts: list, in_tags: list, path: tuple[int, ...]):
        tags: dict = {}  # var -> (leaf, scale)
        known: dict = {}  # var -> concrete small constant
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            if np.size(c) == 1:
                known[v] = c
        for v, t in zip(jaxpr.invars, in_tags, strict=True):
            if t is not None:
                tags[v] = t

        def tag_of(v):
            return None if isinstance(v, Literal) else tags.get(v)

        consumers: dict = {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    consumers[v] = consumers.get(v, 0) + 1
        for v in jaxpr.outvars:
            if not isinstance(v, Literal):
                consumers[v] = consumers.get(v, 0) + 1
        site_out: dict = {}  # output var of a one-weight site consumed once -> that site

        for i, eqn in enumerate(jaxpr.eqns):
            p = path + (i,)
            ins = [tag_of(v) for v in eqn.invars]
            tagged = [j for j, t in enumerate(ins) if t is not None]
            inner = _inner_jaxpr(eqn)
            if inner is not None:
                out_tags = self.run(inner[0], inner[1], ins, p)
                for v, t in zip(eqn.outvars, out_tags, strict=True):
                    if t is not None and not isinstance(v, DropVar):
                        tags[v] = t
                continue
            if not tagged:
                self._fold_constant(eqn, known)
                self._scale_site_output(eqn, known, consumers, site_out)
                continue
            out = self._propagate(eqn, ins, tagged, known)
            if out is not None:
                tags[eqn.outvars[0]] = out
                continue
            bias = self._bias_use(eqn, p, ins, tagged, site_out)
            if bias is not None:
                self.uses[bias.leaf].append(bias)
                continue
            site_kind = self._site_kind(eqn, tagged)
            for j in tagged:
                leaf, scale = ins[j]
                ok = site_kind is not None and self._other_untagged_by(ins, j)
                site = self._site(eqn, p, site_kind, j, leaf, scale) if ok else None
                self.uses[leaf].append(site)
                if site is not None and len(tagged) == 1 and consumers.get(eqn.outvars[0]) == 1:
                    site_out[eqn.outvars[0]] = (site, 1.0)
        return [tag_of(v) for v in jaxpr.outvars]

    @staticmethod
    def _bias_use(eqn, path, ins, tagged, site_out):
        """``y = site_output + B(b)`` with b broadcast over the site's positions only."""
        if eqn.primitive.name not in ("add", "add_any") or len(tagged) != 1:
            return None
        j = tagged[0]
        other = eqn.invars[1 - j]
        site, post = (None, 1.0) if isinstance(other, Literal) else site_out.get(other, (None, 1.0))
        if site is None or tuple(eqn.outvars[0].aval.shape) != site.out_shape:
            return None
        b_shape = tuple(eqn.invars[j].aval.shape)
        if len(b_shape) != len(site.out_shape):
            return None
        feat = site.feature_dims()
        for d, (nb, ny) in enumerate(zip(b_shape, site.out_shape, strict=True)):
            if nb != (ny if d in feat else 1):
                return None
        leaf, scale = ins[j]
        return BiasUse(leaf, scale, site.path, path, post)

    @staticmethod
    def _scale_site_output(eqn, known, consumers, site_out):
        """Follows ``c · site_output`` (constant scalar c) so that a bias after it still folds."""
        name = eqn.primitive.name
        if name not in ("mul", "div") or len(eqn.invars) != 2:
            return
        for j in (0, 1):
            v = eqn.invars[j]
            if isinstance(v, Literal) or v not in site_out or (name == "div" and j != 0):
                continue
            c = _const_scalar(eqn.invars[1 - j], known)
            out = eqn.outvars[0]
            if c is None or c == 0.0 or consumers.get(out) != 1:
                return
            if tuple(out.aval.shape) != tuple(v.aval.shape):
                return
            site, post = site_out[v]
            site_out[out] = (site, post * c if name == "mul" else post / c)
            return

    @staticmethod
    def _other_untagged_by(ins, j):
        other = ins[1 - j]
        return other is None or other[0] != ins[j][0]

    @staticmethod
    def _fold_constant(eqn, known):
        """Evaluates scalar equations on constants so that scalings like 1/√n are known."""
        if eqn.primitive.multiple_results or _inner_jaxpr(eqn) is not None:
            return
        if len(eqn.outvars) != 1 or math.prod(eqn.outvars[0].aval.shape) != 1:
            return
        vals = []
        for v in eqn.invars:
            if isinstance(v, Literal):
                vals.append(v.val)
            elif v in known:
                vals.append(known[v])
            else:
                return
        try:
            with jax.ensure_compile_time_eval():
                known[eqn.outvars[0]] = np.asarray(_bind(eqn, vals))
        except Exception:  # not foldable: the scaling stays unknown and the leaf falls back
            return

    @staticmethod
    def _propagate(eqn, ins, tagged, known):
        """Tag of the output when it is a scaled permutation of one tagged input, else None."""
        name = eqn.primitive.name
        if len(tagged) != 1 or len(eqn.outvars) != 1:
            return None
        j = tagged[0]
        leaf, scale = ins[j]
        src, dst = eqn.invars[j].aval, eqn.outvars[0].aval
        if not jnp.issubdtype(dst.dtype, jnp.floating):
            return None
        if name in _SHAPE_OPS or name == "convert_element_type":
            return (leaf, scale) if math.prod(src.shape) == math.prod(dst.shape) else None
        if name == "broadcast_in_dim":  # unit dims only
            return (leaf, scale) if math.prod(src.shape) == math.prod(dst.shape) else None
        if name == "neg":
            return (leaf, -scale)
        if name in ("mul", "div") and len(eqn.invars) == 2:
            if src.shape != dst.shape:
                return None
            c = _const_scalar(eqn.invars[1 - j], known)
            if c is None or (name == "div" and (j != 0 or c == 0.0)):
                return None
            return (leaf, scale * c if name == "mul" else scale / c)
        return None

    @staticmethod
    def _site_kind(eqn, tagged):
        name = eqn.primitive.name
        if name == "dot_general":
            (_, _), (lb, rb) = eqn.params["dimension_numbers"]
            if any((lb, rb)[j] for j in tagged):
                return None
            return "dot"
        if name == "conv_general_dilated":
            if tagged != [1] or eqn.params["feature_group_count"] != 1:
                return None
            if eqn.params["batch_group_count"] != 1:
                return None
            return "conv"
        return None

    @staticmethod
    def _site(eqn, path, kind, j, leaf, scale):
        return Site(
            leaf=leaf,
            path=path,
            kind=kind,
            operand=j,
            scale=scale,
            params=dict(eqn.params),
            other_shape=tuple(eqn.invars[1 - j].aval.shape),
            weight_shape=tuple(eqn.invars[j].aval.shape),
            out_shape=tuple(eqn.outvars[0].aval.shape),
            dtype=eqn.outvars[0].aval.dtype,
        )


def _analyse(closed: ClosedJaxpr, n_leaves: int) -> Plan:
    analysis = _Analysis(n_leaves)
    in_tags = [(i, 1.0) for i in range(n_leaves)] + [None] * (len(closed.jaxpr.invars) - n_leaves)
    out_tags = analysis.run(closed.jaxpr, list(closed.consts), in_tags, ())
    for t in out_tags:  # a parameter returned as an output: not structured
        if t is not None:
            analysis.uses[t[0]].append(None)
    plan = Plan(closed, n_leaves)
    for leaf, uses in analysis.uses.items():
        if len(uses) == 1 and isinstance(uses[0], Site):
            plan.sites[leaf] = uses[0]
    by_path = {s.path: s for s in plan.sites.values()}
    for leaf, uses in analysis.uses.items():
        if len(uses) == 1 and isinstance(uses[0], BiasUse):
            site = by_path.get(uses[0].site_path)
            if site is not None and site.bias_leaf is None:
                site = replace(
                    site,
                    scale=site.scale * uses[0].post_scale,
                    bias_leaf=leaf,
                    bias_scale=uses[0].scale,
                    eps_path=uses[0].add_path,
                )
                plan.sites[site.leaf] = by_path[site.path] = site
    return plan


@functools.lru_cache(maxsize=128)
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
    return _analyse(closed, len(leaves))


def plan_for(apply_fn, params, x, k: int) -> Plan:
    """The (cached) structured plan for ``apply_fn`` (or a Model) at these shapes and K."""
    return _plan_cached(Signature.of(as_model(apply_fn), params, x).per_example(), k)


def _bind(eqn, invals):
    """``eqn.primitive.bind`` on new inputs (older JAX returns subfuns with the params)."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(bind_params, tuple):
        subfuns, bind_params = bind_params
    return eqn.primitive.bind(*subfuns, *invals, **bind_params)


def _eval(jaxpr: Jaxpr, consts, args, path, hook):
    """Evaluates a jaxpr with call-like equations inlined and ``hook`` on every equation."""
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
        inner = _inner_jaxpr(eqn)
        if inner is not None:
            outvals = _eval(inner[0], inner[1], invals, p, hook)
        else:
            ans = _bind(eqn, invals)
            outvals = list(ans) if eqn.primitive.multiple_results else [ans]
        outvals = hook(p, invals, outvals)
        for v, val in zip(eqn.outvars, outvals, strict=True):
            if not isinstance(v, DropVar):
                env[v] = val
    return [read(v) for v in jaxpr.outvars]


def _factors(plan: Plan, model: Model, leaves: list, x_N, proj_KO):
    """Per-example activations, output cotangents and fallback Jacobians.

    Returns ``(acts, deltas, jac_fb)``: ``acts[leaf]`` is ``[N, *other_shape]``,
    ``deltas[site.perturb_at]`` is ``[N, K, *out_shape]``; ``jac_fb`` is a list of
    ``[N, K, *leaf.shape]``.
    """
    # Two leaves can meet in one equation (``U @ V``): record per site, not per equation.
    acts_at: dict = {}
    for s in plan.sites.values():
        acts_at.setdefault(s.path, []).append(s)
    eps_at = {s.perturb_at: s for s in plan.sites.values()}
    fb = plan.fallback
    k = proj_KO.shape[0]
    eps0 = {p: jnp.zeros(s.out_shape, s.dtype) for p, s in eps_at.items()}

    def forward(fb_leaves, eps, x):
        full = list(leaves)
        for i, val in zip(fb, fb_leaves, strict=True):
            full[i] = val
        acts = {}

        def hook(p, invals, outvals):
            for s in acts_at.get(p, ()):
                acts[s.leaf] = invals[1 - s.operand]
            if p in eps_at:
                return [outvals[0] + eps[p]]
            return outvals

        args = [*full, *jax.tree_util.tree_leaves(x), *model.dynamic, proj_KO]
        (out,) = _eval(plan.closed.jaxpr, plan.closed.consts, args, (), hook)
        return out, acts

    def per_example(x):
        out, vjp_fn, acts = jax.vjp(
            lambda f, e: forward(f, e, x), [leaves[i] for i in fb], eps0, has_aux=True
        )
        jac_fb, deltas = jax.vmap(vjp_fn)(jnp.eye(k, dtype=out.dtype))
        return acts, deltas, jac_fb

    return jax.vmap(per_example)(x_N)


def _dot_sc(site: Site, a_N, d_NK):
    """Activations ``[N, S, C]`` and cotangents ``[N, K, S, F]`` of a dot_general site."""
    (lc, rc), _ = site.params["dimension_numbers"]
    c_other = rc if site.operand == 0 else lc
    nd_a = len(site.other_shape)
    free_a = [d for d in range(nd_a) if d not in c_other]
    n, k = d_NK.shape[:2]
    s = math.prod(site.other_shape[d] for d in free_a)
    a_NSC = jnp.transpose(a_N, [0, *[1 + d for d in free_a], *[1 + d for d in c_other]])
    a_NSC = a_NSC.reshape(n, s, -1)
    n_free_a = len(free_a)
    nd_y = len(site.out_shape)
    if site.operand == 1:  # y = [free_a..., free_v...]
        order = list(range(nd_y))
    else:  # y = [free_v..., free_a...]
        n_free_v = nd_y - n_free_a
        order = [*range(n_free_v, nd_y), *range(n_free_v)]
    d_NKSF = jnp.transpose(d_NK, [0, 1, *[2 + d for d in order]]).reshape(n, k, s, -1)
    return a_NSC, d_NKSF


def _conv_sc(site: Site, a_N, d_NK):
    """Image patches ``[N, S, C·kh·kw]`` and cotangents ``[N, K, S, F]`` of a conv site."""
    prm = site.params
    lhs_spec, rhs_spec, out_spec = prm["dimension_numbers"]
    n, k = d_NK.shape[:2]
    a_t = jnp.transpose(a_N, [0, *[1 + d for d in lhs_spec]])  # [N, b, C, sp...]
    b = a_t.shape[1]
    a_t = a_t.reshape(n * b, *a_t.shape[2:])
    patches = jax.lax.conv_general_dilated_patches(
        a_t,
        [site.weight_shape[d] for d in rhs_spec[2:]],
        prm["window_strides"],
        prm["padding"],
        lhs_dilation=prm["lhs_dilation"],
        rhs_dilation=prm["rhs_dilation"],
        precision=prm["precision"],
    )  # [N·b, C', out_sp...]
    c = patches.shape[1]
    patches = patches.reshape(n, b, c, -1)
    a_NSC = jnp.swapaxes(patches, 2, 3).reshape(n, -1, c)
    d_t = jnp.transpose(d_NK, [0, 1, *[2 + d for d in out_spec]])  # [N, K, b, F, sp...]
    f = d_t.shape[3]
    d_t = d_t.reshape(n, k, b, f, -1)
    d_NKSF = jnp.swapaxes(d_t, 3, 4).reshape(n, k, -1, f)
    return a_NSC, d_NKSF


_SC = {"dot": _dot_sc, "conv": _conv_sc}


def _einsum_cost(subscripts, *shapes):
    _, info = opt_einsum.contract_path(subscripts, *shapes, shapes=True, optimize="optimal")
    return float(info.opt_cost), float(info.largest_intermediate)


def site_costs(n1, n2, k, s, c, f, diag) -> tuple[float, float, float]:
    """FLOPs of the structured sum and of materialising J, and the sum's largest temporary."""
    if s == 1:
        struct = 2.0 * n1 * n2 * c + 2.0 * n1 * n2 * (k if diag else k * k) * (f + 1)
        return struct, math.inf, float(n1 * n2 * k * k)
    out = "abk" if diag else "abkl"
    d2 = "bktf" if diag else "bltf"
    struct, largest = _einsum_cost(
        f"asc,btc,aksf,{d2}->{out}", (n1, s, c), (n2, s, c), (n1, k, s, f), (n2, k, s, f)
    )
    mat = 2.0 * (n1 + n2) * k * s * c * f + 2.0 * n1 * n2 * (k if diag else k * k) * c * f
    return _SUM_PENALTY * struct, mat, largest


def sums_site(n1, n2, k, s, c, f, diag) -> bool:
    """Whether a site takes the structured sum (else its ``J_W`` is materialised)."""
    if s == 1:
        return True
    struct, mat, largest = site_costs(n1, n2, k, s, c, f, diag)
    return struct <= mat and largest <= _MAX_INTERMEDIATE


def _site_kernel(a1, d1, a2, d2, diag):
    n1, k, s, f = d1.shape
    n2, c = d2.shape[0], a1.shape[-1]
    if s == 1:
        g_ab = a1[:, 0] @ a2[:, 0].T
        if diag:
            return g_ab[:, :, None] * jnp.einsum("akf,bkf->abk", d1[:, :, 0], d2[:, :, 0])
        return g_ab[:, :, None, None] * jnp.einsum("akf,blf->abkl", d1[:, :, 0], d2[:, :, 0])
    if sums_site(n1, n2, k, s, c, f, diag):
        spec = "asc,btc,aksf,bktf->abk" if diag else "asc,btc,aksf,bltf->abkl"
        return jnp.einsum(spec, a1, a2, d1, d2, optimize="optimal")
    j1 = _weight_jacobian(a1, d1)
    j2 = j1 if a2 is a1 and d2 is d1 else _weight_jacobian(a2, d2)
    return gram(j1, j2, diag)


def _weight_jacobian(a_NSC, d_NKSF):
    """``J[n, k] = Σ_s δ[n, k, s] ⊗ a[n, s]`` as one batched GEMM: ``[N, K, F·C]``."""
    n, k, s, f = d_NKSF.shape
    j = jnp.matmul(jnp.swapaxes(d_NKSF, 2, 3).reshape(n, k * f, s), a_NSC)  # [N, K·F, C]
    return j.reshape(n, k, -1)


def structured_derivatives(apply_fn, params, x1, x2, proj_KO, diag):
    """Exact projected eNTK with the structured rule for dense/conv weights (see module doc)."""
    model = as_model(apply_fn)
    leaves = jax.tree_util.tree_leaves(params)
    k = proj_KO.shape[0]
    n1 = batch_len(x1)
    n2 = n1 if x2 is None else batch_len(x2)
    plan = _single_cotangent_by_vjp(plan_for(model, params, x1, k), n1, n2, k, diag)
    f1 = _factors(plan, model, leaves, x1, proj_KO)
    f2 = f1 if x2 is None else _factors(plan, model, leaves, x2, proj_KO)
    (acts1, deltas1, jfb1), (acts2, deltas2, jfb2) = f1, f2
    total = contract_jacobians(jfb1, jfb2, diag) if jfb1 else None
    for leaf, site in plan.sites.items():
        a1, d1 = _site_factors(site, acts1[leaf], deltas1[site.perturb_at])
        if x2 is None:
            a2, d2 = a1, d1
        else:
            a2, d2 = _site_factors(site, acts2[leaf], deltas2[site.perturb_at])
        term = _site_kernel(a1, d1, a2, d2, diag)
        total = term if total is None else total + term
    return total


def _single_cotangent_by_vjp(plan: Plan, n1, n2, k, diag) -> Plan:
    """With one cotangent (K = 1: pNTK, single logit), a site that would materialise ``J_W``
    becomes a fallback leaf: the vjp forms ``J_W`` itself (for a conv, XLA's filter gradient)
    and no patches tensor is built. With K > 1 one GEMM over patches shared by the K
    cotangents is faster (measured on CPU: CNN pNTK 28 -> 15-21 ms, eNTK 2x slower by vjp)."""
    if k > 1:
        return plan
    keep = {
        leaf: site
        for leaf, site in plan.sites.items()
        if sums_site(n1, n2, k, *site_dims(site, with_bias=True), diag)
    }
    return plan if len(keep) == len(plan.sites) else replace(plan, sites=keep)


def _site_factors(site: Site, a_N, d_NK):
    """Scaled activations ``[N, S, C(+1)]`` (bias as a constant feature) and ``[N, K, S, F]``."""
    a_NSC, d_NKSF = _SC[site.kind](site, a_N, d_NK)
    a_NSC = site.scale * a_NSC
    if site.bias_leaf is not None:
        ones = jnp.full((*a_NSC.shape[:2], 1), site.bias_scale, a_NSC.dtype)
        a_NSC = jnp.concatenate([a_NSC, ones], axis=-1)
    return a_NSC, d_NKSF


def structured_cost(n1, n2, k, p, fp, diag, *, apply_fn, params, x1, **_):
    """Estimated FLOPs: a forward pass and K input-cotangent backward passes per example
    (weight cotangents are never formed), the site sums and the fallback contractions."""
    try:
        plan = plan_for(apply_fn, params, x1, k)
    except Exception as e:  # a model the analysis cannot handle: never choose structured
        from ntk.kernels.api import warn_once
        from ntk.kernels.model import fn_key

        warn_once(
            ("structured", fn_key(as_model(apply_fn).apply_fn), type(e).__name__),
            "implementation='auto': the structured-derivatives analysis failed on this model "
            f"({type(e).__name__}: {e}); choosing among the other implementations. "
            "Please report this with the model.",
        )
        return math.inf
    leaves = jax.tree_util.tree_leaves(params)
    p_fb = sum(int(np.size(leaves[i])) for i in plan.fallback)
    cost = (n1 + n2) * (1 + k) * fp + 2.0 * n1 * n2 * (k if diag else k * k) * p_fb
    for site in plan.sites.values():
        s, c, f = site_dims(site, with_bias=True)
        struct, mat, largest = site_costs(n1, n2, k, s, c, f, diag)
        cost += min(struct if largest <= _MAX_INTERMEDIATE else math.inf, mat)
    return cost


def site_dims(site: Site, with_bias: bool = False) -> tuple[int, int, int]:
    """``(S, C, F)``: weight-sharing positions, input and output width of a site; with
    ``with_bias`` a folded bias counts as one more input feature."""
    size_w = math.prod(site.weight_shape)
    if site.kind == "conv":
        lhs_spec, rhs_spec, out_spec = site.params["dimension_numbers"]
        f = site.out_shape[out_spec[1]]
        s = math.prod(site.out_shape) // f
        c = size_w // f
    else:
        (lc, rc), _ = site.params["dimension_numbers"]
        c_other = rc if site.operand == 0 else lc
        c = math.prod(site.other_shape[d] for d in c_other)
        s = math.prod(site.other_shape) // c
        f = size_w // c
    return s, c + (with_bias and site.bias_leaf is not None), f


IMPLEMENTATIONS["structured"] = Implementation(
    structured_derivatives,
    structured_cost,
    "Structured derivatives: dense/conv weights from activations x cotangents, other leaves "
    "by Jacobian contraction. Usually fastest when O < width.",
)
