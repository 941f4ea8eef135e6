"""Models as the JAX ecosystem writes them (small), through every implementation and kind:
no crash, and every result equal to the float64 Jacobian-contraction reference at 1e-10.

Equinox (MLP, CNN, embedding + attention, BatchNorm with state), Flax Linen (the examples'
CNN, a causal transformer LM with tied embeddings, an nn.scan stack), Flax NNX (BatchNorm in
eval mode, a transformer LM with nnx.scan layers) and Haiku when installed."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import reference_entk

import ntk

pytestmark = pytest.mark.slow  # ~25 min together on a busy 2-core machine: make test-slow

F64 = jnp.float64
V, T, D = 17, 6, 8


def _tokens(seed, n):
    return jax.random.randint(jax.random.key(seed), (n, T), 0, V)


def _x(seed, n, *shape):
    return jax.random.normal(jax.random.key(seed), (n, *shape), F64)


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(F64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


# --- Equinox --------------------------------------------------------------------------------


def eqx_mlp():
    import equinox as eqx

    model = eqx.nn.MLP(5, 3, 16, 2, activation=jnp.tanh, key=jax.random.key(0), dtype=F64)
    f, params = ntk.from_equinox(model)
    return f, params, _x(1, 3, 5), _x(2, 2, 5), {}


def eqx_cnn():
    import equinox as eqx

    k = jax.random.split(jax.random.key(3), 3)

    class CNN(eqx.Module):
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        out: eqx.nn.Linear

        def __init__(self):
            self.c1 = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k[0], dtype=F64)
            self.c2 = eqx.nn.Conv2d(4, 4, 3, stride=2, groups=2, key=k[1], dtype=F64)
            self.out = eqx.nn.Linear(4 * 2 * 2, 3, key=k[2], dtype=F64)

        def __call__(self, x):
            h = jax.nn.relu(self.c1(x))
            h = jnp.tanh(self.c2(h))
            return self.out(h.reshape(-1))

    f, params = ntk.from_equinox(CNN())
    return f, params, _x(4, 3, 2, 6, 6), _x(5, 2, 2, 6, 6), {}


def eqx_attention():
    import equinox as eqx

    k = jax.random.split(jax.random.key(6), 4)

    class Encoder(eqx.Module):
        emb: eqx.nn.Embedding
        attn: eqx.nn.MultiheadAttention
        norm: eqx.nn.LayerNorm
        out: eqx.nn.Linear

        def __init__(self):
            self.emb = eqx.nn.Embedding(V, D, key=k[0], dtype=F64)
            self.attn = eqx.nn.MultiheadAttention(2, D, key=k[1], dtype=F64)
            self.norm = eqx.nn.LayerNorm(D, dtype=F64)
            self.out = eqx.nn.Linear(D, 3, key=k[2], dtype=F64)

        def __call__(self, ids):
            h = jax.vmap(self.emb)(ids)
            mask = jnp.tril(jnp.ones((T, T), bool))
            h = h + self.attn(h, h, h, mask=mask)
            h = jax.vmap(self.norm)(h)
            return self.out(h.mean(0))

    f, params = ntk.from_equinox(Encoder())
    return f, params, _tokens(7, 3), _tokens(8, 2), {}


def eqx_batchnorm():
    import equinox as eqx

    k = jax.random.split(jax.random.key(9), 2)
    model, state = eqx.nn.make_with_state(
        lambda: eqx.nn.Sequential(
            [
                eqx.nn.Linear(5, 8, key=k[0], dtype=F64),
                eqx.nn.BatchNorm(8, axis_name="batch", dtype=F64),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.Linear(8, 3, key=k[1], dtype=F64),
            ]
        )
    )()
    model = eqx.nn.inference_mode(model)
    f, params = ntk.from_equinox(model, state)
    return f, params, _x(10, 3, 5), _x(11, 2, 5), {}


# --- Flax Linen -----------------------------------------------------------------------------


def linen_cnn():
    import flax.linen as nn

    class CNN(nn.Module):  # the Flax MNIST example's CNN, small
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), param_dtype=F64)(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(8, (3, 3), param_dtype=F64)(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Dense(16, param_dtype=F64)(x.reshape(x.shape[0], -1)))
            return nn.Dense(3, param_dtype=F64)(x)

    x = _x(12, 3, 8, 8, 1)
    model = CNN()
    f, params = ntk.from_linen(model, model.init(jax.random.key(0), x))
    return f, params, x, _x(13, 2, 8, 8, 1), {}


def linen_lm():
    """The Flax examples' decoder-only LM, small: tied embeddings, causal attention,
    pre-LayerNorm blocks stacked with nn.scan, dropout off."""
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            y = nn.LayerNorm(param_dtype=F64)(h)
            mask = nn.make_causal_mask(jnp.ones(h.shape[:2]))
            y = nn.SelfAttention(2, param_dtype=F64, deterministic=True)(y, mask=mask)
            h = h + y
            y = nn.Dense(2 * D, param_dtype=F64)(nn.LayerNorm(param_dtype=F64)(h))
            return h + nn.Dense(D, param_dtype=F64)(nn.gelu(y)), None

    class LM(nn.Module):
        @nn.compact
        def __call__(self, ids):
            emb = nn.Embed(V, D, param_dtype=F64)
            pos = self.param("pos", nn.initializers.normal(0.02), (T, D), F64)
            h = emb(ids) + pos[None]
            stack = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2
            )
            h, _ = stack()(h, None)
            return emb.attend(nn.LayerNorm(param_dtype=F64)(h)[:, -1])[:, :4]

    ids = _tokens(14, 3)
    model = LM()
    f, params = ntk.from_linen(model, model.init(jax.random.key(0), ids))
    return f, params, ids, _tokens(15, 2), {}


# --- Flax NNX -------------------------------------------------------------------------------


def nnx_batchnorm():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs, param_dtype=F64)
            self.bn = nnx.BatchNorm(4, rngs=rngs, param_dtype=F64)
            self.out = nnx.Linear(4, 3, rngs=rngs, param_dtype=F64)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x)))
            return self.out(h.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    net.bn.mean.value = 0.1 * jnp.arange(4.0, dtype=F64)
    net.bn.var.value = 1.0 + 0.2 * jnp.arange(4.0, dtype=F64)
    net.eval()
    f, params = ntk.from_nnx(net)
    return f, params, _x(16, 3, 5, 5, 2), _x(17, 2, 5, 5, 2), {}


def nnx_lm():
    from flax import nnx

    class Layer(nnx.Module):
        def __init__(self, rngs):
            kw = dict(rngs=rngs, param_dtype=F64, dtype=F64)
            self.norm = nnx.LayerNorm(D, **kw)
            # dropout_rate > 0 (off: deterministic) keeps nnx off jax.nn.dot_product_attention,
            # whose softmax runs in float32 even for float64 inputs.
            self.attn = nnx.MultiHeadAttention(
                2, D, D, decode=False, deterministic=True, dropout_rate=0.1, **kw
            )
            self.mlp = nnx.Linear(D, D, **kw)

        def __call__(self, h):
            mask = nnx.make_causal_mask(jnp.ones(h.shape[:2]), dtype=jnp.bool_)
            h = h + self.attn(self.norm(h), mask=mask)
            return h + jnp.tanh(self.mlp(h))

    class LM(nnx.Module):
        def __init__(self, rngs):
            self.emb = nnx.Embed(V, D, rngs=rngs, param_dtype=F64, dtype=F64)

            @nnx.split_rngs(splits=2)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(r):
                return Layer(r)

            self.layers = make(rngs)

        def __call__(self, ids):
            h = self.emb(ids)

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def run(h, layer):
                return layer(h)

            h = run(h, self.layers)
            return self.emb.attend(h[:, -1])[:, :4]

    f, params = ntk.from_nnx(LM(nnx.Rngs(0)))
    return f, params, _tokens(18, 3), _tokens(19, 2), {}


# --- Haiku (optional) -----------------------------------------------------------------------


def haiku_mlp():
    hk = pytest.importorskip("haiku")

    def net(ids):
        h = hk.Embed(V, D)(ids).mean(axis=1)
        h = jnp.tanh(hk.Linear(16)(h))
        return hk.Linear(3)(h)

    tr = hk.without_apply_rng(hk.transform(net))
    ids = _tokens(20, 3)
    params = _f64(tr.init(jax.random.key(0), ids))
    return tr.apply, params, ids, _tokens(21, 2), {}


MODELS = {
    "eqx_mlp": eqx_mlp,
    "eqx_cnn": eqx_cnn,
    "eqx_attention": eqx_attention,
    "eqx_batchnorm": eqx_batchnorm,
    "linen_cnn": linen_cnn,
    "linen_lm": linen_lm,
    "nnx_batchnorm": nnx_batchnorm,
    "nnx_lm": nnx_lm,
    "haiku_mlp": haiku_mlp,
}


def _assert_close(got, want, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=rtol * np.max(np.abs(want)))


@functools.cache
def _model_and_reference(name):
    f, params, x, x2, _ = MODELS[name]()
    return f, params, x, x2, reference_entk(f, params, x), reference_entk(f, params, x, x2)


@pytest.mark.parametrize("implementation", ["jacobian", "ntk_vp", "structured", "auto"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_model_every_kind(name, implementation):
    f, params, x, x2, ref, ref12 = _model_and_reference(name)
    o = ref.shape[-1]
    want = {
        "entk": ref12,
        "pntk": ref12.sum((2, 3)) / o,
        "trace": np.einsum("abkk->ab", ref12) / o,
        "diagonal": np.einsum("abkk->abk", ref12),
    }
    if implementation in ("jacobian", "ntk_vp"):  # their kinds are tested on every model in
        want = {"entk": ref12, "pntk": want["pntk"]}  # test_kernels; keep this file fast
    for kind, w in want.items():
        _assert_close(ntk.kernel(f, params, x, x2, kind=kind, implementation=implementation), w)
    _assert_close(ntk.entk(f, params, x, implementation=implementation), ref)
