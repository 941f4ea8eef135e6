"""Every implementation and every kernel kind against an independent float64 reference."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import count_backend_compiles
from _models import MODELS, inputs, reference_entk

import ntk

IMPLS = sorted(ntk.IMPLEMENTATIONS) + ["auto"]
RTOL64 = 1e-10


@functools.cache
def case(model, with_x2):
    apply_fn, params, shape = MODELS[model]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x1 = inputs(shape, 5, 0).astype(jnp.float64)
    x2 = inputs(shape, 3, 1).astype(jnp.float64) if with_x2 else None
    return apply_fn, params, x1, x2, reference_entk(apply_fn, params, x1, x2)


def expected(kind, ref, **opts):
    o = ref.shape[-1]
    if kind == "entk":
        return ref
    if kind == "pntk":
        return ref.sum(axis=(2, 3)) / o
    diag = np.einsum("abkk->abk", ref)
    if kind == "trace":
        return diag.mean(-1)
    if kind == "diagonal":
        return diag
    if kind == "single_logit":
        return diag[..., opts["logit"]]
    if kind == "random_projection":
        r = np.asarray(jax.random.normal(opts["key"], (opts["n_projections"], o), jnp.float64))
        r = r / np.sqrt(o)
        return np.einsum("jk,abkl,jl->ab", r, ref, r) / opts["n_projections"]
    raise AssertionError(kind)


def kind_opts(kind):
    if kind == "single_logit":
        return {"logit": 1}
    if kind == "random_projection":
        return {"key": jax.random.key(7), "n_projections": 3}
    return {}


def assert_close(got, want, rtol=RTOL64):
    got = np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_x2", [False, True])
def test_entk_matches_reference(model, impl, with_x2):
    apply_fn, params, x1, x2, ref = case(model, with_x2)
    got = ntk.entk(apply_fn, params, x1, x2, implementation=impl)
    assert got.dtype == jnp.float64
    assert_close(got, ref)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", sorted(set(ntk.KINDS) - {"entk"}))
def test_every_kind_matches_reference(model, impl, kind):
    apply_fn, params, x1, x2, ref = case(model, True)
    opts = kind_opts(kind)
    got = ntk.kernel(apply_fn, params, x1, x2, kind=kind, implementation=impl, **opts)
    assert_close(got, expected(kind, ref, **opts))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_x2", [False, True])
def test_under_jit(impl, with_x2):
    apply_fn, params, x1, x2, ref = case("cnn", with_x2)

    @jax.jit
    def both(p, a, b):
        return ntk.entk(apply_fn, p, a, b, implementation=impl), ntk.pntk(
            apply_fn, p, a, b, implementation=impl
        )

    e, p = both(params, x1, x2)
    assert_close(e, ref)
    assert_close(p, expected("pntk", ref))


@pytest.mark.parametrize("impl", IMPLS)
def test_float32(impl):
    apply_fn, params, x1, x2, ref = case("mlp", True)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    got = ntk.entk(
        apply_fn, p32, x1.astype(jnp.float32), x2.astype(jnp.float32), implementation=impl
    )
    assert got.dtype == jnp.float32
    assert_close(got, ref, rtol=1e-4)


def test_public_wrappers_agree_with_kernel():
    apply_fn, params, x1, x2, ref = case("mlp", True)
    key = jax.random.key(7)
    assert_close(ntk.trace_ntk(apply_fn, params, x1, x2), expected("trace", ref))
    assert_close(ntk.diagonal_ntk(apply_fn, params, x1, x2), expected("diagonal", ref))
    assert_close(
        ntk.single_logit_ntk(apply_fn, params, x1, x2, logit=1),
        expected("single_logit", ref, logit=1),
    )
    assert_close(
        ntk.random_projection_ntk(apply_fn, params, x1, x2, key=key, n_projections=3),
        expected("random_projection", ref, key=key, n_projections=3),
    )


# --- invariants -------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_symmetric_and_psd(impl):
    apply_fn, params, x1, _, _ = case("resblock", False)
    e = np.asarray(ntk.entk(apply_fn, params, x1, implementation=impl))
    m = ntk.as_matrix(e)
    np.testing.assert_array_equal(m, m.T)  # x2=None is exactly symmetric
    eig = np.linalg.eigvalsh(m)
    assert eig[0] >= -1e-10 * eig[-1]
    p = np.asarray(ntk.pntk(apply_fn, params, x1, implementation=impl))
    np.testing.assert_array_equal(p, p.T)
    assert np.linalg.eigvalsh(p)[0] >= -1e-10 * np.abs(p).max()


@pytest.mark.parametrize("impl", IMPLS)
def test_pntk_is_scaled_block_mean(impl):
    """pNTK = (1/O) Σ_{o,o'} Θ[o, o'] (O times the plain mean of the O×O block)."""
    apply_fn, params, x1, x2, _ = case("cnn", True)
    e = np.asarray(ntk.entk(apply_fn, params, x1, x2, implementation=impl))
    p = np.asarray(ntk.pntk(apply_fn, params, x1, x2, implementation=impl))
    o = e.shape[-1]
    np.testing.assert_allclose(p, o * e.mean(axis=(2, 3)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_readout_contribution_is_gram_kron_identity(impl):
    """For f = W h(x)/√n the readout weights contribute exactly (h·h'/n) ⊗ I_O."""
    n, o = 12, 4
    k = jax.random.split(jax.random.key(5), 3)
    w_hid = jax.random.normal(k[0], (6, n))
    w_out = jax.random.normal(k[1], (n, o))

    def features(x):
        return jnp.tanh(x @ w_hid)

    def apply_fn(p, x):
        return features(x) @ p["readout"] / math.sqrt(n)

    x1 = inputs((6,), 5, 0)
    x2 = inputs((6,), 3, 1)
    got = np.asarray(ntk.entk(apply_fn, {"readout": w_out}, x1, x2, implementation=impl))
    gram = np.asarray(features(x1) @ features(x2).T) / n
    want = gram[:, :, None, None] * np.eye(o)[None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("with_x2", [False, True])
def test_blocked_equals_unblocked(impl, batch_size, with_x2):
    apply_fn, params, x1, x2, ref = case("mlp", with_x2)
    full = np.asarray(ntk.entk(apply_fn, params, x1, x2, implementation=impl))
    blocked = np.asarray(
        ntk.entk(apply_fn, params, x1, x2, implementation=impl, batch_size=batch_size)
    )
    # Same kernel whatever the block size: only GEMM summation order may differ.
    np.testing.assert_allclose(blocked, full, rtol=0, atol=1e-13 * np.abs(full).max())
    assert_close(blocked, ref)
    pb = ntk.pntk(apply_fn, params, x1, x2, implementation=impl, batch_size=batch_size)
    assert_close(pb, expected("pntk", ref))


def test_blocked_jacobian_is_bitwise_identical():
    apply_fn, params, x1, x2, _ = case("mlp", True)
    full = np.asarray(ntk.entk(apply_fn, params, x1, x2, implementation="jacobian"))
    blocked = ntk.entk(apply_fn, params, x1, x2, implementation="jacobian", batch_size=2)
    np.testing.assert_array_equal(np.asarray(blocked), full)


def test_second_call_does_not_recompile():
    apply_fn, params, x1, x2, _ = case("mlp", True)
    ntk.entk(apply_fn, params, x1, x2, implementation="jacobian")
    params2 = jax.tree_util.tree_map(lambda a: a * 1.5, params)
    x1b = x1 + 1.0
    with count_backend_compiles() as n:
        ntk.entk(apply_fn, params2, x1b, x2, implementation="jacobian")
    assert n[0] == 0


def test_auto_picks_the_cheapest_by_its_cost_models_and_is_exact():
    from ntk.kernels.estimates import forward_flops

    apply_fn, params, x1, x2, ref = case("mlp", True)
    n1, n2 = x1.shape[0], x2.shape[0]
    p = sum(a.size for a in jax.tree_util.tree_leaves(params))
    fp = forward_flops(apply_fn, params, x1)
    ctx = dict(apply_fn=apply_fn, params=params, x1=x1, x2=x2)
    costs = {
        name: impl.cost(n1=n1, n2=n2, k=3, p=p, fp=fp, diag=False, **ctx)
        for name, impl in ntk.IMPLEMENTATIONS.items()
    }
    name = ntk.choose_implementation(apply_fn, params, x1, x2, 3, False)
    assert costs[name] == min(costs.values())
    np.testing.assert_allclose(ntk.entk(apply_fn, params, x1, x2), ref, rtol=1e-10)


# --- Flax adapters ----------------------------------------------------------------------


def test_linen_adapter_holds_batch_stats_fixed():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(8)(x)
            h = nn.BatchNorm(use_running_average=not train)(h)
            return nn.Dense(3)(nn.relu(h))

    net = Net()
    x = inputs((4,), 6, 0)
    variables = net.init(jax.random.key(0), x, train=False)
    # Non-trivial running statistics so that eval mode is distinguishable from train mode.
    to64 = functools.partial(jax.tree_util.tree_map, lambda a: jnp.asarray(a, jnp.float64))
    variables = {
        "params": to64(variables["params"]),
        "batch_stats": to64(jax.tree_util.tree_map(lambda a: a + 0.3, variables["batch_stats"])),
    }
    apply_fn, params = ntk.from_linen(net, variables, train=False)
    assert set(params) == set(variables["params"])
    got = ntk.entk(apply_fn, params, x)
    assert_close(got, reference_entk(apply_fn, params, x))


def test_nnx_adapter():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    apply_fn, params = ntk.from_nnx(Net(nnx.Rngs(0)))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = inputs((4,), 5, 0)
    assert_close(ntk.entk(apply_fn, params, x), reference_entk(apply_fn, params, x))
