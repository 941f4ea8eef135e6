"""Structured derivatives, step 1: where is each parameter leaf used? (jaxpr analysis)

One pass over the per-example jaxpr tags every variable that is a *view* of a parameter leaf
(a scaled permutation, reshape or static slice of it) and records each *use* of a view:

* ``dot``: an operand of a ``dot_general`` (batch dimensions on the weight are groups);
* ``conv``: the kernel of a ``conv_general_dilated`` (feature groups are groups);
* ``gather``: whole rows gathered from it (an embedding lookup);
* a ``bias``: added, broadcast over positions only, to the output of a one-leaf site;
* anything else is *opaque*, and the leaf falls back to Jacobian contraction.

Calls (``jit``, ``checkpoint``...) are inlined. A ``scan`` body is analysed too: a leaf
sliced by the scan (``xs``, as ``nn.scan`` stacks layers) gets one stack axis, a group of
independent sites, and a leaf closed over by it (``consts``) is used at every iteration,
i.e. its positions are multiplied by the scan length. Leaves in a carry, or in ``while`` /
``cond`` bodies, are opaque.

A leaf used several times is structured when the uses see it in compatible coordinates:
the same (groups, inputs, outputs) layout, its transpose (a tied output projection
``h @ E.T`` next to the lookup ``E[ids]``), or disjoint parts of it (slices of a fused
weight). The coordinates are compared exactly, as integer index maps of the leaf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, Literal

CALLS = ("jit", "pjit", "closed_call", "core_call", "checkpoint", "remat", "remat2")
_RESHAPES = ("reshape", "squeeze", "expand_dims", "broadcast_in_dim")
_SAME = ("copy", "copy_p", "convert_element_type", "reduce_precision")
_GATHER_MODES = ("CLIP", "FILL_OR_DROP", "PROMISE_IN_BOUNDS")


def inner_jaxpr(eqn) -> tuple[Jaxpr, list] | None:
    """The callee of a call-like equation (inlined by both passes), else None."""
    if eqn.primitive.name not in CALLS:
        return None
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(sub, ClosedJaxpr):
        return sub.jaxpr, list(sub.consts)
    if isinstance(sub, Jaxpr):
        return sub, []
    return None


def bind(eqn, invals):
    """``eqn.primitive.bind`` on new inputs (older JAX returns subfuns with the params)."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(bind_params, tuple):
        subfuns, bind_params = bind_params
    return eqn.primitive.bind(*subfuns, *invals, **bind_params)


@dataclass(frozen=True)
class Tag:
    """A variable that is ``scale ·`` a view of leaf ``leaf``.

    ``ops`` rebuild the view from the leaf (see :func:`view_index`); ``levels`` has one
    entry per enclosing scan, True where the scan slices the leaf (a stack axis)."""

    leaf: int
    scale: float
    ops: tuple = ()
    levels: tuple = ()


def view_index(leaf_shape, ops) -> np.ndarray:
    """Flat leaf indices of a view: ``[*stack, *view_shape]`` (stack axes from scans)."""
    arr = np.arange(math.prod(leaf_shape), dtype=np.int64).reshape(leaf_shape)
    ns = 0
    for op in ops:
        if op[0] == "stack":
            ns += 1
        elif op[0] == "reshape":
            arr = arr.reshape(arr.shape[:ns] + tuple(op[1]))
        elif op[0] == "transpose":
            arr = arr.transpose((*range(ns), *(ns + d for d in op[1])))
        elif op[0] == "slice":
            cut = tuple(slice(a, b, c) for a, b, c in zip(op[1], op[2], op[3], strict=True))
            arr = arr[(slice(None),) * ns + cut]
    return arr


@dataclass(frozen=True)
class Use:
    """One structured use of a leaf (one equation; inside scans, one per iteration)."""

    leaf: int
    kind: str  # "dot" | "conv" | "gather"
    path: tuple[int, ...]
    operand: int  # which input of the equation is the weight view
    tag: Tag
    lengths: tuple[int, ...]  # enclosing scan lengths, outermost first
    params: Any
    other_shape: tuple[int, ...]  # activation (dot/conv) or indices (gather), one iteration
    weight_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: Any
    scale: float = 1.0
    bias_leaf: int | None = None  # a bias folded in as a constant input feature
    bias_scale: float = 0.0
    eps_path: tuple[int, ...] | None = None  # where the output perturbation goes

    @property
    def record(self) -> int:
        """Input of the equation recorded at evaluation: the activation or the indices."""
        return 1 if self.kind == "gather" else 1 - self.operand

    @property
    def perturb_at(self) -> tuple[int, ...]:
        return self.path if self.eps_path is None else self.eps_path

    @property
    def stacked(self) -> tuple[bool, ...]:
        return self.tag.levels

    def group_dims(self) -> tuple[int, int, int, int]:
        """``(G, S, C, F)`` of one iteration: groups, positions, inputs, outputs (a gather's
        inputs are its one-hot rows: C is the number of rows)."""
        size_w = math.prod(self.weight_shape)
        if self.kind == "conv":
            out_spec = self.params["dimension_numbers"][2]
            feats = self.out_shape[out_spec[1]]
            g = self.params["feature_group_count"]
            return g, math.prod(self.out_shape) // feats, size_w // feats, feats // g
        if self.kind == "gather":
            a = self.params["dimension_numbers"].start_index_map[0]
            v = self.weight_shape[a]
            return 1, math.prod(self.other_shape[:-1]), v, size_w // v
        (lc, rc), (lb, rb) = self.params["dimension_numbers"]
        oc, ob = (rc, rb) if self.operand == 0 else (lc, lb)
        g = math.prod(self.other_shape[d] for d in ob)
        c = math.prod(self.other_shape[d] for d in oc)
        return g, math.prod(self.other_shape) // (g * c), c, size_w // (g * c)

    def dims(self, with_bias: bool = True) -> tuple[int, int, int, int]:
        """``(G, S, C, F)`` over all iterations: sliced scans add groups, others positions."""
        g, s, c, f = self.group_dims()
        for n, sliced in zip(self.lengths, self.stacked, strict=True):
            g, s = (g * n, s) if sliced else (g, s * n)
        return g, s, c + (with_bias and self.bias_leaf is not None), f

    def canonical_index(self, leaf_shape) -> np.ndarray:
        """Flat leaf indices in this use's coordinates ``[G, C, F]``."""
        idx = view_index(leaf_shape, self.tag.ops)
        ns = sum(self.stacked)
        stack = list(range(ns))
        g, _, c, f = self.dims(with_bias=False)
        if self.kind == "conv":
            o, i, *sp = self.params["dimension_numbers"][1]
            fg = self.params["feature_group_count"]
            idx = idx.transpose([*stack, *(ns + d for d in (o, i, *sp))])
            idx = idx.reshape(g // fg, fg, f, c).transpose(0, 1, 3, 2)
            return idx.reshape(g, c, f)
        if self.kind == "gather":
            a = self.params["dimension_numbers"].start_index_map[0]
            rest = [d for d in range(len(self.weight_shape)) if d != a]
            return idx.transpose([*stack, ns + a, *(ns + d for d in rest)]).reshape(g, c, f)
        (lc, rc), (lb, rb) = self.params["dimension_numbers"]
        wc, wb = (lc, lb) if self.operand == 0 else (rc, rb)
        wf = [d for d in range(len(self.weight_shape)) if d not in wc and d not in wb]
        order = [*stack, *(ns + d for d in (*wb, *wc, *wf))]
        return idx.transpose(order).reshape(g, c, f)

    def describe(self) -> str:
        if self.kind == "conv":
            fg = self.params["feature_group_count"]
            text = "conv" if fg == 1 else f"grouped conv ({fg} groups)"
        elif self.kind == "gather":
            text = "gather (embedding rows)"
        else:
            (_, _), (lb, rb) = self.params["dimension_numbers"]
            text = "dense" if not lb else "dense with batch dims (per-head)"
        if any(self.stacked):
            text += ", stacked in scan"
        if self.lengths and not all(self.stacked):
            text += ", reused across scan iterations"
        return text


@dataclass(frozen=True)
class BiasUse:
    """A leaf added (after a scaled view) to the output of a one-leaf site."""

    leaf: int
    tag: Tag
    site_path: tuple[int, ...]
    add_path: tuple[int, ...]
    post_scale: float  # the site output was multiplied by this constant before the add


@dataclass(frozen=True)
class LeafRule:
    """A structured leaf: its uses, grouped into classes of compatible coordinates.

    ``classes[c]`` lists ``(use index, orientation)``; orientation 1 means the use sees
    the leaf transposed relative to the class's first use. Different classes cover
    disjoint parts of the leaf, so they have no cross terms."""

    leaf: int
    uses: tuple[Use, ...]
    classes: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def bias_leaf(self) -> int | None:
        return self.uses[0].bias_leaf if len(self.uses) == 1 else None

    def describe(self) -> str:
        kinds = sorted({u.describe() for u in self.uses})
        text = "; ".join(kinds)
        if len(self.uses) > 1:
            text = f"{len(self.uses)} uses: {text}"
            if any(o for cls in self.classes for _, o in cls):
                text += " (incl. a transposed use)"
            if len(self.classes) > 1:
                text += f" ({len(self.classes)} disjoint parts)"
        if self.bias_leaf is not None:
            text += " + folded bias"
        return text


@dataclass
class Plan:
    """Result of the analysis: which leaves are structured, and why the others are not."""

    closed: ClosedJaxpr
    leaf_shapes: tuple[tuple[int, ...], ...]
    rules: dict[int, LeafRule] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # fallback leaf -> why
    scans: frozenset = frozenset()  # paths of scans that hold sites

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_shapes)

    @property
    def sites(self) -> dict[int, LeafRule]:
        return self.rules

    @property
    def folded_biases(self) -> dict[int, int]:
        return {r.bias_leaf: leaf for leaf, r in self.rules.items() if r.bias_leaf is not None}

    @property
    def fallback(self) -> list[int]:
        done = set(self.rules) | set(self.folded_biases)
        return [i for i in range(self.n_leaves) if i not in done]

    def without(self, leaves) -> Plan:
        """The same plan with these leaves (and their folded biases) falling back."""
        drop = set(leaves)
        if not drop:
            return self
        rules = {i: r for i, r in self.rules.items() if i not in drop}
        return replace(self, rules=rules)


def const_scalar(v, known: dict) -> float | None:
    if isinstance(v, Literal):
        val = np.asarray(v.val)
    elif v in known:
        val = np.asarray(known[v])
    else:
        return None
    return float(val) if val.size == 1 else None


class _Analysis:
    def __init__(self, n_leaves: int):
        self.uses: dict[int, list] = {i: [] for i in range(n_leaves)}
        self.opaque: dict[int, list[str]] = {i: [] for i in range(n_leaves)}
        self.scan_paths: set = set()

    def mark(self, tag: Tag, why: str):
        self.opaque[tag.leaf].append(why)

    def run(self, jaxpr, consts, in_tags, path, in_known=(), lengths=()):
        tags: dict = {}
        known: dict = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            if np.size(c) == 1:
                known[v] = c
        for v, t in zip(jaxpr.invars, in_tags, strict=True):
            if t is not None:
                tags[v] = t
        for v, c in zip(jaxpr.invars, in_known or [None] * len(jaxpr.invars), strict=True):
            if c is not None:
                known[v] = c

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
        site_out: dict = {}  # output var of a one-leaf site consumed once -> (use, scale)

        for i, eqn in enumerate(jaxpr.eqns):
            p = path + (i,)
            ins = [tag_of(v) for v in eqn.invars]
            tagged = [j for j, t in enumerate(ins) if t is not None]
            name = eqn.primitive.name
            inner = inner_jaxpr(eqn)
            if inner is not None:
                kn = [None if isinstance(v, Literal) else known.get(v) for v in eqn.invars]
                out_tags = self.run(inner[0], inner[1], ins, p, kn, lengths)
                for v, t in zip(eqn.outvars, out_tags, strict=True):
                    if t is not None and not isinstance(v, DropVar):
                        tags[v] = t
                continue
            if not tagged:
                _fold_constant(eqn, known)
                _scale_site_output(eqn, known, consumers, site_out)
                continue
            if name == "scan":
                self._scan(eqn, ins, p, known, lengths)
                continue
            if name == "split" and tagged == [0]:
                self._split(eqn, ins[0], tags)
                continue
            out = _propagate(eqn, ins, tagged, known)
            if out is not None:
                tags[eqn.outvars[0]] = out
                continue
            bias = _bias_use(eqn, p, ins, tagged, site_out)
            if bias is not None:
                self.uses[bias.leaf].append(bias)
                continue
            for j in tagged:
                use, why = _site(eqn, p, j, ins[j], lengths)
                if use is None:
                    self.mark(ins[j], why)
                    continue
                self.uses[use.leaf].append(use)
                one = len(tagged) == 1 and use.kind != "gather"
                if one and consumers.get(eqn.outvars[0]) == 1:
                    site_out[eqn.outvars[0]] = (use, 1.0)
        outs = [tag_of(v) for v in jaxpr.outvars]
        return outs

    def _scan(self, eqn, ins, p, known, lengths):
        nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
        body_tags, body_known = [], []
        for j, (v, t) in enumerate(zip(eqn.invars, ins, strict=True)):
            body_known.append(None if j >= nc or isinstance(v, Literal) else known.get(v))
            if t is None:
                body_tags.append(None)
            elif j < nc:
                body_tags.append(replace(t, levels=(*t.levels, False)))
            elif j < nc + ncar:
                self.mark(t, "carried through a scan/fori_loop (not sliced or closed over)")
                body_tags.append(None)
            else:
                body_tags.append(replace(t, ops=(*t.ops, ("stack",)), levels=(*t.levels, True)))
        closed = eqn.params["jaxpr"]
        length = eqn.params["length"]
        self.scan_paths.add(p)
        outs = self.run(
            closed.jaxpr, list(closed.consts), body_tags, p, body_known, (*lengths, length)
        )
        for t in outs:
            if t is not None:
                self.mark(t, "returned from a scan body")

    @staticmethod
    def _split(eqn, tag, tags):
        axis = eqn.params["axis"]
        shape = eqn.invars[0].aval.shape
        start = 0
        for v, size in zip(eqn.outvars, eqn.params["sizes"], strict=True):
            starts = [0] * len(shape)
            limits = list(shape)
            starts[axis], limits[axis] = start, start + int(size)
            start += int(size)
            if not isinstance(v, DropVar):
                op = ("slice", tuple(starts), tuple(limits), (1,) * len(shape))
                tags[v] = replace(tag, ops=(*tag.ops, op))


def _fold_constant(eqn, known):
    """Evaluates scalar equations on constants so that scalings like 1/√n are known."""
    if eqn.primitive.multiple_results or inner_jaxpr(eqn) is not None:
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
            known[eqn.outvars[0]] = np.asarray(bind(eqn, vals))
    except Exception:  # not foldable: the scaling stays unknown and the leaf falls back
        return


def _scale_site_output(eqn, known, consumers, site_out):
    """Follows ``c · site_output`` (constant scalar c) so that a bias after it still folds."""
    name = eqn.primitive.name
    if name not in ("mul", "div") or len(eqn.invars) != 2:
        return
    for j in (0, 1):
        v = eqn.invars[j]
        if isinstance(v, Literal) or v not in site_out or (name == "div" and j != 0):
            continue
        c = const_scalar(eqn.invars[1 - j], known)
        out = eqn.outvars[0]
        if c is None or c == 0.0 or consumers.get(out) != 1:
            return
        if tuple(out.aval.shape) != tuple(v.aval.shape):
            return
        use, post = site_out[v]
        site_out[out] = (use, post * c if name == "mul" else post / c)
        return


def _propagate(eqn, ins, tagged, known) -> Tag | None:
    """Tag of the output when it is a scaled view of one tagged input, else None."""
    name = eqn.primitive.name
    if len(tagged) != 1 or len(eqn.outvars) != 1:
        return None
    j = tagged[0]
    t = ins[j]
    src, dst = eqn.invars[j].aval, eqn.outvars[0].aval
    if not jnp.issubdtype(dst.dtype, jnp.floating):
        return None
    same_size = math.prod(src.shape) == math.prod(dst.shape)
    if name in _SAME:
        return t if same_size else None
    if name in _RESHAPES:
        if not same_size:
            return None
        ops = t.ops
        if name == "reshape" and eqn.params.get("dimensions") is not None:
            ops = (*ops, ("transpose", tuple(eqn.params["dimensions"])))
        return replace(t, ops=(*ops, ("reshape", tuple(dst.shape))))
    if name == "transpose":
        return replace(t, ops=(*t.ops, ("transpose", tuple(eqn.params["permutation"]))))
    if name == "slice" and j == 0:
        strides = eqn.params["strides"] or (1,) * len(src.shape)
        op = ("slice", tuple(eqn.params["start_indices"]), tuple(eqn.params["limit_indices"]))
        return replace(t, ops=(*t.ops, (*op, tuple(strides))))
    if name == "neg":
        return replace(t, scale=-t.scale)
    if name in ("mul", "div") and len(eqn.invars) == 2:
        if src.shape != dst.shape:
            return None
        c = const_scalar(eqn.invars[1 - j], known)
        if c is None or (name == "div" and (j != 0 or c == 0.0)):
            return None
        return replace(t, scale=t.scale * c if name == "mul" else t.scale / c)
    return None


def _bias_use(eqn, path, ins, tagged, site_out) -> BiasUse | None:
    """``y = site_output + B(b)`` with b broadcast over the site's positions only."""
    if eqn.primitive.name not in ("add", "add_any") or len(tagged) != 1:
        return None
    j = tagged[0]
    other = eqn.invars[1 - j]
    use, post = (None, 1.0) if isinstance(other, Literal) else site_out.get(other, (None, 1.0))
    if use is None or tuple(eqn.outvars[0].aval.shape) != use.out_shape:
        return None
    if use.group_dims()[0] != 1 or ins[j].levels != use.tag.levels:
        return None
    b_shape = tuple(eqn.invars[j].aval.shape)
    if len(b_shape) != len(use.out_shape):
        return None
    feat = _feature_dims(use)
    for d, (nb, ny) in enumerate(zip(b_shape, use.out_shape, strict=True)):
        if nb != (ny if d in feat else 1):
            return None
    return BiasUse(ins[j].leaf, ins[j], use.path, path, post)


def _feature_dims(use: Use) -> list[int]:
    """Dims of a (group-free) site's output that index the weight's output features."""
    if use.kind == "conv":
        return [use.params["dimension_numbers"][2][1]]
    (lc, rc), _ = use.params["dimension_numbers"]
    c_w = lc if use.operand == 0 else rc
    n_free_w = len(use.weight_shape) - len(c_w)
    nd = len(use.out_shape)
    return list(range(nd - n_free_w, nd)) if use.operand == 1 else list(range(n_free_w))


def _site(eqn, path, j, tag, lengths) -> tuple[Use | None, str]:
    """The structured use of input ``j`` of ``eqn``, or ``(None, why not)``."""
    name = eqn.primitive.name
    kind = None
    if name == "dot_general":
        kind = "dot"
    elif name == "conv_general_dilated":
        if j != 1:
            return None, "the input (not the kernel) of a convolution"
        if eqn.params["batch_group_count"] != 1:
            return None, "a convolution with batch_group_count > 1"
        kind = "conv"
    elif name == "gather":
        why = _gather_unsupported(eqn, j)
        if why:
            return None, why
        kind = "gather"
    else:
        return None, f"used by `{name}` (no structured rule)"
    if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        return None, f"`{name}` with a non-floating output"
    other = 1 if kind == "gather" else 1 - j
    use = Use(
        leaf=tag.leaf,
        kind=kind,
        path=path,
        operand=j,
        tag=tag,
        lengths=tuple(lengths),
        params=dict(eqn.params),
        other_shape=tuple(eqn.invars[other].aval.shape),
        weight_shape=tuple(eqn.invars[j].aval.shape),
        out_shape=tuple(eqn.outvars[0].aval.shape),
        dtype=eqn.outvars[0].aval.dtype,
        scale=tag.scale,
    )
    return use, ""


def _gather_unsupported(eqn, j) -> str:
    if j != 0:
        return "gather indices"
    dn = eqn.params["dimension_numbers"]
    shape = eqn.invars[0].aval.shape
    if dn.operand_batching_dims or len(dn.start_index_map) != 1:
        return "a gather that is not a row lookup (batching dims or several index dims)"
    a = dn.start_index_map[0]
    if tuple(dn.collapsed_slice_dims) != (a,):
        return "a gather that keeps the indexed axis"
    sizes = eqn.params["slice_sizes"]
    if any(sizes[d] != (1 if d == a else shape[d]) for d in range(len(shape))):
        return "a gather of partial rows"
    if getattr(eqn.params["mode"], "name", str(eqn.params["mode"])) not in _GATHER_MODES:
        return f"a gather with mode {eqn.params['mode']}"
    if tuple(dn.offset_dims) != tuple(sorted(dn.offset_dims)):
        return "a gather with permuted offset dims"
    return ""


def analyse(closed: ClosedJaxpr, leaf_shapes) -> Plan:
    """The :class:`Plan` of a per-example jaxpr whose first inputs are the parameter leaves."""
    n = len(leaf_shapes)
    an = _Analysis(n)
    in_tags = [Tag(i, 1.0) for i in range(n)] + [None] * (len(closed.jaxpr.invars) - n)
    for t in an.run(closed.jaxpr, list(closed.consts), in_tags, ()):
        if t is not None:
            an.mark(t, "returned as an output")
    plan = Plan(closed, tuple(tuple(s) for s in leaf_shapes))
    bias_candidates = {}
    for leaf in range(n):
        uses = an.uses[leaf]
        if an.opaque[leaf]:
            plan.reasons[leaf] = an.opaque[leaf][0]
            continue
        if not uses:
            plan.reasons[leaf] = "not used by the output"
            continue
        biases = [u for u in uses if isinstance(u, BiasUse)]
        if biases:
            if len(uses) == 1:
                bias_candidates[leaf] = biases[0]
            else:
                plan.reasons[leaf] = "a bias used more than once, or also as a weight"
            continue
        classes = _classes(uses, leaf_shapes[leaf])
        if isinstance(classes, str):
            plan.reasons[leaf] = classes
            continue
        plan.rules[leaf] = LeafRule(leaf, tuple(uses), classes)
    by_path = {
        r.uses[0].path: r
        for r in plan.rules.values()
        if len(r.uses) == 1 and r.uses[0].kind != "gather"
    }
    for leaf, b in bias_candidates.items():
        rule = by_path.get(b.site_path)
        if rule is None or rule.bias_leaf is not None:
            plan.reasons[leaf] = "added after an equation that is not a one-leaf structured site"
            continue
        use = replace(
            rule.uses[0],
            scale=rule.uses[0].scale * b.post_scale,
            bias_leaf=leaf,
            bias_scale=b.tag.scale,
            eps_path=b.add_path,
        )
        plan.rules[rule.leaf] = by_path[b.site_path] = replace(rule, uses=(use,))
    paths = {u.path for r in plan.rules.values() for u in r.uses}
    paths |= {u.perturb_at for r in plan.rules.values() for u in r.uses}
    plan.scans = frozenset(s for s in an.scan_paths if any(q[: len(s)] == s for q in paths))
    return plan


def _classes(uses, leaf_shape):
    """Groups uses into classes of identical (or transposed) coordinates on disjoint parts
    of the leaf; a string says why that is impossible."""
    if len(uses) == 1:
        return (((0, 0),),)
    covered = np.zeros(math.prod(leaf_shape), bool)
    classes: list = []  # (reference index map, members)
    for i, use in enumerate(uses):
        idx = use.canonical_index(leaf_shape)
        for ref, members in classes:
            if idx.shape == ref.shape and np.array_equal(idx, ref):
                members.append((i, 0))
                break
            ref_t = ref.transpose(0, 2, 1)
            if idx.shape == ref_t.shape and np.array_equal(idx, ref_t):
                members.append((i, 1))
                break
        else:
            flat = idx.reshape(-1)
            if covered[flat].any():
                return "used more than once in incompatible layouts (overlapping views)"
            covered[flat] = True
            classes.append((idx, [(i, 0)]))
    return tuple(tuple(members) for _, members in classes)
