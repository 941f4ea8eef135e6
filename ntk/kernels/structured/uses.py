"""Structured derivatives: the records of the jaxpr analysis
(:mod:`ntk.kernels.structured.analysis`).

A :class:`Tag` marks a variable that is a scaled view of a parameter leaf; a :class:`Use`
is one structured use of such a view (``dot``, ``conv`` or ``gather``), a :class:`BiasUse`
a leaf added after a one-leaf site; a :class:`LeafRule` groups a leaf's uses into classes
of compatible coordinates, and a :class:`Plan` holds the rules of every leaf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

from ntk.kernels.implementations import CALL_PRIMITIVES

CALLS = CALL_PRIMITIVES


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
            idx = idx.transpose([*stack, *(ns + d for d in (o, *sp, i))])  # as in patches
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
