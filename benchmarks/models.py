"""The plain-JAX models of the benchmarks (NTK parameterisation, biases): an MLP (the
neural-tangents anchor), a CNN and a small ResNet, each ``(width, o) -> (apply_fn, params,
per-example input shape)``."""

from __future__ import annotations

import math
from collections.abc import Callable


def _mlp(width: int, o: int, d_in: int = 64, depth: int = 3):
    """``d_in -> width x (depth-1) -> o`` ReLU MLP, as in the neural-tangents anchor."""
    import jax
    import jax.numpy as jnp

    dims = [d_in] + [width] * (depth - 1) + [o]
    keys = jax.random.split(jax.random.key(0), depth)
    params = [
        {"w": jax.random.normal(k, (a, b)), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, dims[:-1], dims[1:], strict=True)
    ]

    def apply_fn(p, x):
        for i, layer in enumerate(p):
            x = x @ layer["w"] / math.sqrt(x.shape[-1]) + layer["b"][None]
            if i < len(p) - 1:
                x = jax.nn.relu(x)
        return x

    return apply_fn, params, (d_in,)


def _conv(x, w, b, stride=1):
    import jax

    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y / math.sqrt(w.shape[0] * w.shape[1] * w.shape[2]) + b[None, None, None]


def _cnn(width: int, o: int, side: int = 8):
    """conv3x3(width) -> relu -> conv3x3(width) -> relu -> avgpool 2 -> dense(o)."""
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.key(0), 3)
    flat = (side // 2) ** 2 * width
    params = {
        "c1": {"w": jax.random.normal(k[0], (3, 3, 1, width)), "b": jnp.zeros((width,))},
        "c2": {"w": jax.random.normal(k[1], (3, 3, width, width)), "b": jnp.zeros((width,))},
        "out": {"w": jax.random.normal(k[2], (flat, o)), "b": jnp.zeros((o,))},
    }

    def apply_fn(p, x):
        h = jax.nn.relu(_conv(x, p["c1"]["w"], p["c1"]["b"]))
        h = jax.nn.relu(_conv(h, p["c2"]["w"], p["c2"]["b"]))
        n, hh, ww, c = h.shape
        h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4)).reshape(n, -1)
        return h @ p["out"]["w"] / math.sqrt(h.shape[-1]) + p["out"]["b"][None]

    return apply_fn, params, (side, side, 1)


def _resnet(width: int, o: int, side: int = 8, blocks: int = 2):
    """Stem conv, ``blocks`` basic residual blocks (two 3x3 convs + skip), GAP, dense."""
    import jax
    import jax.numpy as jnp

    k = iter(jax.random.split(jax.random.key(0), 2 * blocks + 2))

    def conv_p(cin, cout):
        return {"w": jax.random.normal(next(k), (3, 3, cin, cout)), "b": jnp.zeros((cout,))}

    params = {
        "stem": conv_p(1, width),
        "blocks": [{"a": conv_p(width, width), "b": conv_p(width, width)} for _ in range(blocks)],
        "out": {"w": jax.random.normal(next(k), (width, o)), "b": jnp.zeros((o,))},
    }

    def apply_fn(p, x):
        h = jax.nn.relu(_conv(x, p["stem"]["w"], p["stem"]["b"]))
        for blk in p["blocks"]:
            r = jax.nn.relu(_conv(h, blk["a"]["w"], blk["a"]["b"]))
            h = jax.nn.relu(h + _conv(r, blk["b"]["w"], blk["b"]["b"]))
        h = h.mean(axis=(1, 2))
        return h @ p["out"]["w"] / math.sqrt(h.shape[-1]) + p["out"]["b"][None]

    return apply_fn, params, (side, side, 1)


MODELS: dict[str, Callable] = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}
