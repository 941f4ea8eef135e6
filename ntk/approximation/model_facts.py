"""Facts about the model behind the report: the readout layer (its width and parameter
leaves, found on the jaxpr) and the readout's share of ``tr Θ``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var

from ntk.approximation.cost import CACHE
from ntk.kernels.implementations import sub_jaxprs
from ntk.kernels.model import (
    LIFETIMES,
    Model,
    add_batch_axis,
    batch_len,
    pad_rows,
    take,
    weak_callable,
)

# one data operand passes through these unchanged in kind (a bias add, a scaling, a reshape)
_PASS = {
    "add",
    "add_any",
    "sub",
    "mul",
    "div",
    "neg",
    "reshape",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "convert_element_type",
    "copy",
    "copy_p",
    "transpose",
    "slice",
    "reduce_precision",
}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "remat", "checkpoint"}


def _forward_deps(jaxpr, in_deps: list) -> dict:
    """Var -> frozenset of what it depends on: parameter leaf indices and ``"x"``."""
    env = {v: d for v, d in zip(jaxpr.invars, in_deps, strict=True)}
    for eqn in jaxpr.eqns:
        d = frozenset().union(*(env.get(v, frozenset()) for v in eqn.invars if isinstance(v, Var)))
        for out in eqn.outvars:
            env[out] = d
    return env


def _walk_back(jaxpr, var, in_deps: list) -> tuple[int, frozenset] | None:
    """From output ``var`` back to the readout ``dot_general``: ``(width, its parameter
    leaves and those of bias-like terms on the way)``, or None."""
    env = _forward_deps(jaxpr, in_deps)
    producer = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    extra: frozenset = frozenset()
    while True:
        eqn = producer.get(var)
        if eqn is None:
            return None
        name = eqn.primitive.name
        deps = [env.get(v, frozenset()) if isinstance(v, Var) else frozenset() for v in eqn.invars]
        if name == "dot_general":
            contract, _ = eqn.params["dimension_numbers"]  # ((lhs, rhs) contracting, batch)
            for w, h in ((1, 0), (0, 1)):
                if deps[w] and "x" not in deps[w] and "x" in deps[h]:
                    shape = eqn.invars[w].aval.shape
                    return math.prod(shape[d] for d in contract[w]), deps[w] | extra
            return None
        if name in _CALLS:
            sub = list(sub_jaxprs(eqn))
            if len(sub) != 1 or len(sub[0].invars) != len(eqn.invars):
                return None
            inner = _walk_back(sub[0], sub[0].outvars[eqn.outvars.index(var)], deps)
            return None if inner is None else (inner[0], inner[1] | extra)
        if name not in _PASS:
            return None
        data = [k for k, d in enumerate(deps) if "x" in d]
        if len(data) != 1:
            return None
        if name in ("mul", "div") and any(deps[k] for k in range(len(deps)) if k != data[0]):
            return None  # a learned scale is not a bias
        extra = extra.union(*(d for k, d in enumerate(deps) if k != data[0]))
        var = eqn.invars[data[0]]


def _readout(model: Model, params, x) -> tuple[int | None, tuple[int, ...]]:
    """``(width, parameter leaf indices)`` of the readout layer, or ``(None, ())``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    x1 = take(x, 0, 1)
    dyn = list(model.dynamic)

    def f(ls, a, d):
        return model.with_dynamic(d)(jax.tree_util.tree_unflatten(treedef, ls), a)

    try:
        closed = jax.make_jaxpr(f)(leaves, x1, dyn)
    except Exception:  # noqa: BLE001 - a model we cannot trace abstractly has no known readout
        return None, ()
    n_x = len(jax.tree_util.tree_leaves(x1))
    n_d = len(closed.jaxpr.invars) - len(leaves) - n_x
    in_deps = (
        [frozenset([k]) for k in range(len(leaves))]
        + [frozenset(["x"])] * n_x
        + [frozenset()] * n_d
    )
    found = _walk_back(closed.jaxpr, closed.jaxpr.outvars[0], in_deps)
    if found is None:
        return None, ()
    return int(found[0]), tuple(sorted(k for k in found[1] if k != "x"))


def _readout_trace(model: Model, params, x, idx: tuple[int, ...], chunk: int = 32) -> float:
    """``Σ_n Σ_o ‖∂f_o(x_n)/∂θ_R‖²`` over the readout leaves ``idx``: ``tr Θ_readout``
    (``chunk`` examples at a time, the last chunk padded: one compile)."""
    store = LIFETIMES.of(model.apply_fn).setdefault(CACHE, {})
    key = ("readout", model.static, idx)
    if key not in store:
        get, static = weak_callable(model.apply_fn), model.static

        def sq_norms_C(params, x_C, dynamic):
            m = Model(get(), static, tuple(dynamic))
            leaves, treedef = jax.tree_util.tree_flatten(params)

            def one(x_one):
                def g(r):
                    ls = list(leaves)
                    for k, leaf in zip(idx, r, strict=True):
                        ls[k] = leaf
                    return m(jax.tree_util.tree_unflatten(treedef, ls), x_one)[0]

                jac = jax.jacrev(g)([leaves[k] for k in idx])
                return sum(jnp.sum(j * j) for j in jac)

            return jax.vmap(lambda a: one(add_batch_axis(a)))(x_C)

        store[key] = jax.jit(sq_norms_C)
    n = batch_len(x)
    c = min(chunk, n)
    total = 0.0
    for s in range(0, n, c):
        part = pad_rows(take(x, s, min(s + c, n)), c)
        sq_C = store[key](params, part, list(model.dynamic))
        total += float(np.sum(np.asarray(sq_C, np.float64)[: min(c, n - s)]))
    return total


def model_facts(
    model: Model, params, x, trace: float
) -> tuple[int | None, tuple[str, ...], float | None]:
    """``(readout width, readout leaves' names, readout share of tr Θ)`` on the points
    ``x``, ``trace`` being ``tr Θ`` over them; None where the readout is not found."""
    width, idx = _readout(model, params, x)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    share = None
    if idx and trace > 0:
        share = _readout_trace(model, params, x, idx) / trace
    return width, tuple(names[k] for k in idx), share
