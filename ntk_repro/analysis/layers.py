"""Which layers carry the eNTK: each parameter leaf's share of its trace."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

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
    jac = jax.jit(jax.jacrev(lambda p: apply_fn(p, x, **cast_tree(kw, "float32"))))(p32)
    n, o = out_shape
    groups = {}
    for name, sub in jac.items() if isinstance(jac, Mapping) else [("all", jac)]:
        j_MP = np.concatenate(
            [np.asarray(a).reshape(n * o, -1) for a in jax.tree_util.tree_leaves(sub)], axis=1
        )  # rows (example, output); float32: casting J up costs more than its GEMM
        theta = (j_MP @ j_MP.T).astype(np.float64).reshape(n, o, n, o).transpose(0, 2, 1, 3)
        pntk = theta.sum(axis=(2, 3)) / o
        groups[str(name)] = (theta, theta - pntk[:, :, None, None] * np.eye(o))
    theta_all = sum(t for t, _ in groups.values())
    d_all = sum(d for _, d in groups.values())
    s = {}
    for name, (t, d) in groups.items():
        s[f"kernel_share_{name}"] = float(np.sum(t * theta_all) / np.sum(theta_all**2))
        s[f"error_share_{name}"] = float(np.sum(d * d_all) / np.sum(d_all**2))
    return s
