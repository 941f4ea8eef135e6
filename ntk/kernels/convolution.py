"""Convolutions as data movement plus one matrix product (im2col), exact in any dtype.

XLA's CPU backend runs float32 convolutions through a tuned library but float64 ones as
naive loops (50x slower than its float64 matrix products on the study's CNN), and a
per-example weight gradient (a vmapped filter gradient) as a grouped convolution with one
group per example, slow in every dtype. :func:`patches` gathers every window of the input
with ``kh·kw`` strided slices (no arithmetic), and :func:`conv_gemm` computes
``conv_general_dilated`` as patches times the reshaped weight. Under autodiff the transposes
stay matrix products (weight and input cotangents) and pads (the slices' transposes).

Where the kernels use them (:mod:`ntk.kernels.structured`): :func:`lowering` says which
convolutions of the model are replaced (float64 on the CPU: in float32 XLA's own are as fast
and compile 3x faster), :func:`slice_patches` where a weight's patches are taken by slices
instead of a convolution with a one-hot filter (the CPU, every dtype).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Backends whose float64 convolutions are replaced and whose patches are taken by slices.
GEMM_BACKENDS = frozenset({"cpu"})


def lowering(dtype) -> str:
    """``"gemm"`` for a convolution in ``dtype`` that runs as patches x matrix (float64 on
    the CPU), else ``"xla"``."""
    slow = jax.default_backend() in GEMM_BACKENDS and np.dtype(dtype) == np.float64
    return "gemm" if slow else "xla"


def slice_patches() -> bool:
    """Whether a weight's patches are taken by :func:`patches` (slices) on this backend."""
    return jax.default_backend() in GEMM_BACKENDS


def _explicit_padding(padding, in_sp, window, strides, lhs_dilation, rhs_dilation):
    """``(low, high)`` pairs for a padding string (as XLA reads it) or explicit pairs."""
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    dilated_in = [(s - 1) * d + 1 for s, d in zip(in_sp, lhs_dilation, strict=True)]
    dilated_w = [(k - 1) * d + 1 for k, d in zip(window, rhs_dilation, strict=True)]
    return lax.padtype_to_pads(dilated_in, dilated_w, strides, padding)


def patches(
    x_BSC: jax.Array,
    window: Sequence[int],
    strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    groups: int = 1,
) -> jax.Array:
    """Every window of ``x_BSC: [B, *spatial, C]``: ``[B, *out_spatial, C·prod(window)]``.

    Channels last, so that a convolution is one matrix product ``[B·S, C·k] @ [C·k, F]``
    with no copy. Features are ordered (group, *window, channel in group): each group's
    ``k·C/groups`` features are contiguous and every copy moves whole runs of channels.
    ``padding`` is a string or explicit ``(low, high)`` pairs (negative crops), and
    ``lhs_dilation``/``rhs_dilation`` dilate the input and the window.
    """
    nd = len(window)
    lhs_dilation = tuple(lhs_dilation or (1,) * nd)
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    in_sp = x_BSC.shape[1:-1]
    pads = _explicit_padding(padding, in_sp, window, strides, lhs_dilation, rhs_dilation)
    config = [(0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(pads, lhs_dilation, strict=True)]
    xp = lax.pad(x_BSC, jnp.zeros((), x_BSC.dtype), [*config, (0, 0, 0)])
    size = xp.shape[1:-1]
    out = tuple(
        (n - (k - 1) * d - 1) // s + 1
        for n, k, d, s in zip(size, window, rhs_dilation, strides, strict=True)
    )
    if min(out) <= 0:
        raise ValueError(f"window {tuple(window)} is larger than the padded input {size}")
    b, c = xp.shape[0], xp.shape[-1]
    y = xp.reshape(b, *size, groups, 1, c // groups)  # [B, *sp, G, (offsets), Cg]
    how = (tuple(window), tuple(strides), rhs_dilation, out)
    return _windows(y, how).reshape(b, *out, c * math.prod(window))


def _offset_slice(y, d, o, how):
    """Offset ``o`` of the window along spatial dim ``d`` of ``y`` (all its strided rows)."""
    _, strides, dilation, out = how
    start, limit, step = [0] * y.ndim, list(y.shape), [1] * y.ndim
    start[1 + d] = o * dilation[d]
    limit[1 + d] = start[1 + d] + (out[d] - 1) * strides[d] + 1
    step[1 + d] = strides[d]
    return lax.slice(y, start, limit, step)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _windows(y, how):
    """``[B, *sp, G, 1, Cg]`` -> ``[B, *out, G, k, Cg]``, one spatial dim at a time (last
    first): ``d`` stages of ``k_d`` slices move less data than ``k`` slices of the whole
    input. Its tangent (and so its transpose, the col2im of the backward pass) takes the
    ``k`` slices in one stage, whose transpose XLA fuses into one pass; the staged
    transpose is not fused and runs slower."""
    window = how[0]
    nd = len(window)
    for d in reversed(range(nd)):
        cols = [_offset_slice(y, d, o, how) for o in range(window[d])]
        y = jnp.concatenate(cols, axis=nd + 2)  # dim d's offsets ahead of the later dims'
    return y


@_windows.defjvp
def _windows_jvp(how, primals, tangents):
    (y,), (t,) = primals, tangents
    return _windows(y, how), _windows_at_once(t, how)


def _windows_at_once(y, how):
    window = how[0]
    nd = len(window)
    cols = []
    for offsets in itertools.product(*(range(k) for k in window)):
        z = y
        for d, o in enumerate(offsets):
            z = _offset_slice(z, d, o, how)
        cols.append(z)
    return jnp.concatenate(cols, axis=nd + 2)


def conv_gemm(lhs, rhs, **params) -> jax.Array:
    """``lax.conv_general_dilated_p`` with the same parameters (as a jaxpr holds them),
    computed as :func:`patches` times the reshaped weight. ``batch_group_count > 1`` (a
    filter gradient's transposed form) is left to XLA."""
    if params.get("batch_group_count", 1) != 1:
        return lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    return conv_gemm_and_patches(lhs, rhs, **params)[0]


def conv_gemm_and_patches(lhs, rhs, **params) -> tuple[jax.Array, jax.Array]:
    """:func:`conv_gemm` (``batch_group_count = 1``) and the patches it multiplied,
    ``[B, *out, G·k·Cg]`` (the structured kernels record them as the weight's activations)."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    groups = params["feature_group_count"]
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # [B, *sp, C]
    w = jnp.transpose(rhs, (rhs_spec[0], *rhs_spec[2:], rhs_spec[1]))  # [F, *window, Cg]
    cols = patches(
        x,
        w.shape[1:-1],
        params["window_strides"],
        params["padding"],
        params["lhs_dilation"],
        params["rhs_dilation"],
        groups,
    )  # [B, *out, G·k·Cg]
    p = cols
    f = w.shape[0]
    dot = {
        "precision": params.get("precision"),
        "preferred_element_type": params.get("preferred_element_type"),
    }
    if groups == 1:
        y = lax.dot_general(p, w.reshape(f, -1), (((p.ndim - 1,), (1,)), ((), ())), **dot)
    else:
        p = p.reshape(*p.shape[:-1], groups, -1)  # [B, *out, G, k·Cg]
        w = w.reshape(groups, f // groups, -1)  # [G, Fg, k·Cg]
        y = lax.dot_general(p, w, (((p.ndim - 1,), (2,)), ((p.ndim - 2,), (0,))), **dot)
        y = jnp.moveaxis(y, 0, -2).reshape(*p.shape[:-2], f)  # [B, *out, F]
    # y's axes are the output's (batch, *spatial, feature) axes
    return jnp.transpose(y, _inverse((out_spec[0], *out_spec[2:], out_spec[1]))), cols


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv
