"""Tiny plain-JAX models for kernel tests, and an independent float64 eNTK reference.

The reference flattens the parameters with ``ravel_pytree``, takes ``jax.jacrev`` of the
*batched* function and contracts with one ``einsum``: it shares no code with ``ntk.kernels``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def reference_entk(apply_fn, params, x1, x2=None):
    """float64 ``[N1, N2, O, O]`` from materialised ``jacrev`` + ``einsum``."""
    x2 = x1 if x2 is None else x2
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    flat, unravel = ravel_pytree(params64)

    def jac(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = jnp.asarray(x, jnp.float64)
        return jax.jacrev(lambda t: apply_fn(unravel(t), x))(flat)

    j1_NOP, j2_NOP = jac(x1), jac(x2)
    return np.asarray(jnp.einsum("aop,bqp->aboq", j1_NOP, j2_NOP))


def _dense_init(key, fan_in, fan_out):
    return jax.random.normal(key, (fan_in, fan_out)) / math.sqrt(fan_in)


def mlp():
    """3-layer tanh/ReLU MLP with biases, NTK-style scalar scaling; x: [N, 5], O = 3."""
    k = jax.random.split(jax.random.key(1), 6)
    params = {
        "w1": jax.random.normal(k[0], (5, 16)),
        "b1": 0.1 * jax.random.normal(k[1], (16,)),
        "w2": _dense_init(k[2], 16, 16),
        "b2": 0.1 * jax.random.normal(k[3], (16,)),
        "w3": _dense_init(k[4], 16, 3),
        "b3": 0.1 * jax.random.normal(k[5], (3,)),
    }

    def apply_fn(p, x):
        h = jnp.tanh(x @ p["w1"] / math.sqrt(5.0) + p["b1"][None])
        h = jax.nn.relu(h @ p["w2"] + p["b2"][None])
        return h @ p["w3"] + p["b3"][None]

    return apply_fn, params, (5,)


def cnn():
    """Conv (SAME) -> ReLU -> avg-pool -> conv (VALID, stride 2) -> flatten -> dense; O = 4."""
    k = jax.random.split(jax.random.key(2), 5)
    params = {
        "c1": jax.random.normal(k[0], (3, 3, 2, 4)) / math.sqrt(18.0),
        "cb1": 0.1 * jax.random.normal(k[1], (4,)),
        "c2": jax.random.normal(k[2], (2, 2, 4, 3)) / math.sqrt(16.0),
        "w": jax.random.normal(k[3], (12, 4)) / math.sqrt(12.0),
        "b": 0.1 * jax.random.normal(k[4], (4,)),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def apply_fn(p, x):
        h = jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h + p["cb1"][None, None, None])
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        h = jax.lax.conv_general_dilated(h, p["c2"], (2, 2), "VALID", dimension_numbers=dn)
        h = jnp.tanh(h).reshape(h.shape[0], -1)
        return h @ p["w"] + p["b"][None]

    return apply_fn, params, (8, 8, 2)


def resblock():
    """Dense -> residual block with LayerNorm (learned scale and offset) -> readout; O = 3."""
    k = jax.random.split(jax.random.key(3), 6)
    params = {
        "w_in": jax.random.normal(k[0], (4, 8)) / 2.0,
        "w_a": jax.random.normal(k[1], (8, 8)) / math.sqrt(8.0),
        "ln_scale": 1.0 + 0.1 * jax.random.normal(k[2], (8,)),
        "ln_bias": 0.1 * jax.random.normal(k[3], (8,)),
        "w_b": jax.random.normal(k[4], (8, 8)) / math.sqrt(8.0),
        "w_out": jax.random.normal(k[5], (8, 3)) / math.sqrt(8.0),
    }

    def layer_norm(h, scale, bias):
        mu = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.var(h, axis=-1, keepdims=True)
        return (h - mu) / jnp.sqrt(var + 1e-5) * scale[None] + bias[None]

    def apply_fn(p, x):
        h = x @ p["w_in"]
        r = jax.nn.gelu(layer_norm(h @ p["w_a"], p["ln_scale"], p["ln_bias"]))
        h = h + r @ p["w_b"]
        return jnp.tanh(h) @ p["w_out"]

    return apply_fn, params, (4,)


MODELS = {"mlp": mlp, "cnn": cnn, "resblock": resblock}


def inputs(shape, n, seed):
    return jax.random.normal(jax.random.key(100 + seed), (n, *shape))
