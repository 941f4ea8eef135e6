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
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, DropVar, Literal

from ntk.kernels.structured.uses import (
    BiasUse,
    LeafRule,
    Plan,
    Tag,
    Use,
    bind,
    inner_jaxpr,
)

_RESHAPES = ("reshape", "squeeze", "expand_dims", "broadcast_in_dim")
_SAME = ("copy", "copy_p", "convert_element_type", "reduce_precision")
_GATHER_MODES = ("CLIP", "FILL_OR_DROP", "PROMISE_IN_BOUNDS")


def const_scalar(v, known: dict) -> float | None:
    """The value of ``v`` when it is a known scalar (a literal or a folded constant)."""
    if isinstance(v, Literal):
        val = np.asarray(v.val)
    elif v in known:
        val = np.asarray(known[v])
    else:
        return None
    return float(val) if val.size == 1 else None


def _tag_of(tags: dict, v) -> Tag | None:
    """The tag of variable ``v`` (None for a literal or an untagged variable)."""
    return None if isinstance(v, Literal) else tags.get(v)


def _scope(jaxpr, consts, in_tags, in_known) -> tuple[dict, dict]:
    """``(tags, known)`` at the start of ``jaxpr``: tagged inputs and known scalar values."""
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
    return tags, known


def _consumers(jaxpr) -> dict:
    """How many times each variable is read (by equations and as an output of ``jaxpr``)."""
    consumers: dict = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal):
                consumers[v] = consumers.get(v, 0) + 1
    for v in jaxpr.outvars:
        if not isinstance(v, Literal):
            consumers[v] = consumers.get(v, 0) + 1
    return consumers


class _Analysis:
    """One pass over a jaxpr: the uses of each leaf, and why a leaf is opaque."""

    def __init__(self, n_leaves: int):
        self.uses: dict[int, list] = {i: [] for i in range(n_leaves)}
        self.opaque: dict[int, list[str]] = {i: [] for i in range(n_leaves)}
        self.scan_paths: set = set()

    def mark(self, tag: Tag, why: str):
        self.opaque[tag.leaf].append(why)

    def run(self, jaxpr, consts, in_tags, path, in_known=(), lengths=()):
        """Tags of ``jaxpr``'s outputs; records the uses of its tagged inputs on the way."""
        tags, known = _scope(jaxpr, consts, in_tags, in_known)
        consumers = _consumers(jaxpr)
        site_out: dict = {}  # output var of a one-leaf site consumed once -> (use, scale)
        for i, eqn in enumerate(jaxpr.eqns):
            self._equation(eqn, path + (i,), tags, known, consumers, site_out, lengths)
        return [_tag_of(tags, v) for v in jaxpr.outvars]

    def _equation(self, eqn, p, tags, known, consumers, site_out, lengths):
        """Follows tags through one equation (at path ``p``) and records its uses."""
        ins = [_tag_of(tags, v) for v in eqn.invars]
        tagged = [j for j, t in enumerate(ins) if t is not None]
        name = eqn.primitive.name
        inner = inner_jaxpr(eqn)
        if inner is not None:
            self._call(eqn, inner, ins, p, tags, known, lengths)
            return
        if not tagged:
            _fold_constant(eqn, known)
            _scale_site_output(eqn, known, consumers, site_out)
            return
        if name == "scan":
            self._scan(eqn, ins, p, known, lengths)
            return
        if name == "split" and tagged == [0]:
            self._split(eqn, ins[0], tags)
            return
        out = _propagate(eqn, ins, tagged, known)
        if out is not None:
            tags[eqn.outvars[0]] = out
            return
        bias = _bias_use(eqn, p, ins, tagged, site_out)
        if bias is not None:
            self.uses[bias.leaf].append(bias)
            return
        self._sites(eqn, p, ins, tagged, consumers, site_out, lengths)

    def _call(self, eqn, inner, ins, p, tags, known, lengths):
        """Inlines a call: analyses the callee and tags the call's outputs."""
        kn = [None if isinstance(v, Literal) else known.get(v) for v in eqn.invars]
        out_tags = self.run(inner[0], inner[1], ins, p, kn, lengths)
        for v, t in zip(eqn.outvars, out_tags, strict=True):
            if t is not None and not isinstance(v, DropVar):
                tags[v] = t

    def _sites(self, eqn, p, ins, tagged, consumers, site_out, lengths):
        """Records the structured use of each tagged input, or why its leaf is opaque."""
        for j in tagged:
            use, why = _site(eqn, p, j, ins[j], lengths)
            if use is None:
                self.mark(ins[j], why)
                continue
            self.uses[use.leaf].append(use)
            one = len(tagged) == 1 and use.kind != "gather"
            if one and consumers.get(eqn.outvars[0]) == 1:
                site_out[eqn.outvars[0]] = (use, 1.0)

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
