"""Which layers carry the eNTK: each parameter leaf's share of its trace."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

import ntk
from ntk_repro.analysis.calls import cast_tree


def layer_shares(apply_fn, params, x, apply_kwargs=None, *, max_bytes: float = 3e9) -> dict:
    """Which parameter groups (the top-level entries of ``params``: stem, blocks, readout)
    make the eNTK and its departure from pNTK⊗I, at these points (float32, a diagnosis).

    With ``Θ = Σ_g Θ_g`` (the eNTK of each group alone) and ``D = Θ − pNTK⊗I = Σ_g D_g``,
    returns per group ``kernel_share_<g> = ⟨Θ_g, Θ⟩/‖Θ‖²`` and ``error_share_<g> =
    ⟨D_g, D⟩/‖D‖²`` (each set sums to 1). Empty when the Jacobian (N·O·P floats) would exceed
    ``max_bytes``.
    """
    kw = dict(apply_kwargs or {})
    x = np.asarray(x, np.float32)
    p32 = cast_tree(params, "float32")
    out_shape = jax.eval_shape(lambda p: apply_fn(p, x, **kw), p32).shape
    n_params = sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(p32))
    if 4.0 * out_shape[0] * out_shape[1] * n_params > max_bytes:
        return {}
    kw32 = cast_tree(kw, "float32")
    n, o = out_shape
    names = list(p32) if isinstance(p32, Mapping) else [None]
    groups = {}
    for name in names:  # the eNTK of one group's parameters, the others held fixed
        if name is None:
            f, p_g = (lambda p, a: apply_fn(p, a, **kw32)), p32
        else:
            f, p_g = (lambda q, a, g=name: apply_fn({**p32, g: q}, a, **kw32)), p32[name]
        theta = np.asarray(ntk.entk(f, p_g, x, implementation="jacobian"), np.float64)
        pntk = theta.sum(axis=(2, 3)) / o
        groups["all" if name is None else str(name)] = (
            theta,
            theta - pntk[:, :, None, None] * np.eye(o),
        )
    theta_all = sum(t for t, _ in groups.values())
    d_all = sum(d for _, d in groups.values())
    s = {}
    for name, (t, d) in groups.items():
        s[f"kernel_share_{name}"] = float(np.sum(t * theta_all) / np.sum(theta_all**2))
        s[f"error_share_{name}"] = float(np.sum(d * d_all) / np.sum(d_all**2))
    return s
