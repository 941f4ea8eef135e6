"""Convolutions as patches x matrix (``ntk.kernels.convolution``): equal to XLA's
convolution in values and in both cotangents, for every parameter a jaxpr can hold, and the
kernels' hot path calls no float64 convolution on the CPU."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk
from ntk.kernels.api import clear_caches
from ntk.kernels.convolution import conv_gemm, lowering, patches

NHWC = ("NHWC", "HWIO", "NHWC")
# (input shape, weight shape, strides, padding, lhs_dilation, rhs_dilation, dims, groups)
CASES = {
    "same": ((2, 7, 8, 3), (3, 3, 3, 4), (1, 1), "SAME", None, None, NHWC, 1),
    "same_lower": ((2, 6, 7, 3), (2, 3, 3, 4), (1, 1), "SAME_LOWER", None, None, NHWC, 1),
    "valid_strided": ((2, 9, 10, 3), (3, 2, 3, 4), (2, 3), "VALID", None, None, NHWC, 1),
    "explicit_crop_nchw": (
        (2, 3, 9, 10),
        (4, 3, 3, 3),
        (2, 1),
        [(1, 2), (0, -1)],
        None,
        (2, 1),
        ("NCHW", "OIHW", "NCHW"),
        1,
    ),
    "transposed_grouped": (
        (2, 6, 7, 4),
        (3, 3, 2, 6),
        (1, 1),
        [(1, 1), (2, 2)],
        (2, 1),
        (1, 2),
        NHWC,
        2,
    ),
    "depthwise": ((2, 6, 6, 4), (3, 3, 1, 8), (1, 1), "SAME", None, None, NHWC, 4),
    "conv1d_dilated": ((2, 11, 3), (5, 3, 4), (2,), "SAME", None, (2,), ("NWC", "WIO", "NWC"), 1),
    "conv3d": (
        (2, 4, 5, 6, 2),
        (2, 3, 2, 2, 3),
        (1, 2, 1),
        "SAME",
        None,
        None,
        ("NDHWC", "DHWIO", "NDHWC"),
        1,
    ),
    "mixed_layouts": (
        (3, 4, 6, 6),
        (3, 3, 4, 5),
        (1, 1),
        "SAME",
        None,
        None,
        ("NCHW", "HWIO", "NHWC"),
        1,
    ),
}


def _conv_eqn(f, *args):
    eqns = jax.make_jaxpr(f)(*args).jaxpr.eqns
    return next(e for e in eqns if e.primitive.name == "conv_general_dilated")


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_gemm_equals_xla_values_and_cotangents(name):
    xs, ws, strides, padding, lhs_d, rhs_d, dims, groups = CASES[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xs))
    w = jnp.asarray(rng.normal(size=ws))

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            strides,
            padding,
            lhs_dilation=lhs_d,
            rhs_dilation=rhs_d,
            dimension_numbers=dims,
            feature_group_count=groups,
        )

    params = _conv_eqn(xla, x, w).params

    def gemm(x, w):
        return conv_gemm(x, w, **params)

    y_ref, vjp_ref = jax.vjp(xla, x, w)
    y, vjp = jax.vjp(gemm, x, w)
    assert y.shape == y_ref.shape and y.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    ct = jnp.asarray(rng.normal(size=y.shape))
    for got, want in zip(vjp(ct), vjp_ref(ct), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    hlo = jax.jit(lambda x, w, ct: jax.vjp(gemm, x, w)[1](ct)).lower(x, w, ct).as_text()
    assert "convolution" not in hlo  # the forward and both transposes are products and pads


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_patches_match_xla_patches(groups):
    x = jax.random.normal(jax.random.key(0), (2, 4, 9, 8), jnp.float64)
    args = ((3, 2), (2, 1), [(1, 1), (0, 1)])
    want = jax.lax.conv_general_dilated_patches(x, *args, rhs_dilation=(1, 2))
    # XLA orders features (channel, *window); ours are (group, *window, channel in group)
    n, _, *out = want.shape
    want = want.reshape(n, groups, 4 // groups, 6, *out)
    want = jnp.moveaxis(jnp.swapaxes(want, 2, 3).reshape(n, 24, *out), 1, -1)
    got = patches(jnp.moveaxis(x, 1, -1), *args, rhs_dilation=(1, 2), groups=groups)
    np.testing.assert_array_equal(got, want)
    # the staged slices' tangent and transpose are those of the windows taken at once
    t = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)
    f = lambda a: patches(jnp.moveaxis(a, 1, -1), *args, rhs_dilation=(1, 2), groups=groups)  # noqa: E731
    np.testing.assert_array_equal(jax.jvp(f, (x,), (t,))[1], f(t))
    ct = jax.random.normal(jax.random.key(2), got.shape, jnp.float64)
    (back,) = jax.vjp(f, x)[1](ct)
    np.testing.assert_allclose(jnp.vdot(back, t), jnp.vdot(ct, f(t)), rtol=1e-12)


def test_patches_window_larger_than_input_is_an_error():
    with pytest.raises(ValueError, match="window"):
        patches(jnp.zeros((1, 2, 2, 1)), (3, 3), (1, 1), "VALID")


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="CIRCULAR")(x))
        h = nn.relu(nn.Conv(6, (3, 3), kernel_dilation=2, feature_group_count=2)(h))
        h = nn.avg_pool(h, (2, 2), (2, 2))
        return nn.Dense(4)(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("kind", ["pntk", "entk"])
def test_structured_kernel_on_cpu_calls_no_float64_convolution(kind):
    """The pNTK and the eNTK of a float64 conv net: exact against the Jacobian-contraction
    kernel (whose vjp uses XLA's convolutions), and lowered without a convolution."""
    if lowering(jnp.float64) != "gemm":
        pytest.skip("convolutions are lowered to products on the CPU only")
    net = _Net()
    x = jax.random.normal(jax.random.key(1), (3, 12, 12, 2), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(2), x))
    fn = ntk.kernel_fn(net.apply, kind=kind, implementation="structured")
    ref = ntk.kernel_fn(net.apply, kind=kind, implementation="jacobian")
    np.testing.assert_allclose(fn(params, x), ref(params, x), rtol=1e-10, atol=1e-12)
    assert "convolution" not in jax.jit(fn).lower(params, x).as_text()


@pytest.mark.parametrize("kind", ["entk", "pntk"])
def test_xla_patches_off_the_cpu_are_exact(kind, monkeypatch):
    """Off the CPU a weight's patches come from XLA's patches convolution; forced here in
    float32 (where the model's convolutions stay XLA's), every conv site materialising J_W."""
    from ntk.kernels.structured import contract, factors
    from ntk.kernels.structured import kernel as structured

    monkeypatch.setattr(factors, "slice_patches", lambda: False)
    monkeypatch.setattr(structured, "slice_patches", lambda: False)
    monkeypatch.setattr(contract, "site_costs", lambda *a, **k: (math.inf, 0.0, 0.0))
    clear_caches()
    try:
        net = _Net()
        x = jax.random.normal(jax.random.key(1), (3, 12, 12, 2), jnp.float32)
        params = net.init(jax.random.key(2), x)
        got = ntk.kernel(net.apply, params, x, kind=kind, implementation="structured")
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x64 = x.astype(jnp.float64)
        want = ntk.kernel(net.apply, p64, x64, kind=kind, implementation="jacobian")
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4 * np.abs(want).max())
    finally:
        clear_caches()
