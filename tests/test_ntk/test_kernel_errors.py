"""Bad input to the kernel API raises a clear error naming the argument and the values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk


def model():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    return (lambda p, x: x @ p["w"] + p["b"][None]), params


def test_feature_shape_mismatch():
    f, p = model()
    with pytest.raises(ValueError, match=r"x1 and x2.*\(4, 3\).*\(2, 5\)"):
        ntk.entk(f, p, jnp.ones((4, 3)), jnp.ones((2, 5)))


def test_output_not_batch_by_o():
    _, p = model()
    with pytest.raises(ValueError, match=r"apply_fn.*\[batch, O\].*\(4,\)"):
        ntk.entk(lambda p, x: (x @ p["w"]).sum(1), p, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"apply_fn.*\[batch, O\]"):
        ntk.pntk(lambda p, x: (x @ p["w"])[:, :, None], p, jnp.ones((4, 3)))


def test_integer_param_leaf_raises():
    f, p = model()
    p = {**p, "step": jnp.array(3)}
    with pytest.raises(TypeError, match=r"params\['step'\].*int"):
        ntk.entk(f, p, jnp.ones((4, 3)))


@pytest.mark.parametrize("where", ["params", "x1", "x2"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(where, bad):
    f, p = model()
    x1, x2 = jnp.ones((4, 3)), jnp.ones((2, 3))
    if where == "params":
        p = {**p, "w": p["w"].at[0, 0].set(bad)}
    elif where == "x1":
        x1 = x1.at[1, 2].set(bad)
    else:
        x2 = x2.at[0, 0].set(bad)
    with pytest.raises(ValueError, match=rf"{where}.*NaN or Inf"):
        ntk.entk(f, p, x1, x2)


def test_empty_batch():
    f, p = model()
    with pytest.raises(ValueError, match=r"x1: empty batch.*\(0, 3\)"):
        ntk.pntk(f, p, jnp.ones((0, 3)))
    with pytest.raises(ValueError, match=r"x2: empty batch"):
        ntk.pntk(f, p, jnp.ones((2, 3)), jnp.ones((0, 3)))


def test_unknown_names_list_valid_ones():
    f, p = model()
    with pytest.raises(ValueError, match=r"implementation.*'fast'.*'jacobian'.*'ntk_vp'"):
        ntk.entk(f, p, jnp.ones((2, 3)), implementation="fast")
    with pytest.raises(ValueError, match=r"kind.*'ntkk'.*'pntk'"):
        ntk.kernel(f, p, jnp.ones((2, 3)), kind="ntkk")


@pytest.mark.parametrize("bs", [0, -2, 1.5, True])
def test_bad_batch_size(bs):
    f, p = model()
    with pytest.raises((ValueError, TypeError), match="batch_size"):
        ntk.entk(f, p, jnp.ones((2, 3)), batch_size=bs)


def test_bad_kind_options():
    f, p = model()
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"logit.*\[0, 2\).*5"):
        ntk.single_logit_ntk(f, p, x, logit=5)
    with pytest.raises(ValueError, match="key"):
        ntk.kernel(f, p, x, kind="random_projection")
    with pytest.raises(ValueError, match="n_projections"):
        ntk.random_projection_ntk(f, p, x, key=jax.random.key(0), n_projections=0)


def test_empty_params_and_non_callable():
    with pytest.raises(ValueError, match="params"):
        ntk.entk(lambda p, x: x, {}, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="apply_fn"):
        ntk.entk("not a function", {"w": jnp.ones(3)}, jnp.ones((2, 3)))


def custom_vjp_model():
    @jax.custom_vjp
    def act(h):
        return jnp.sin(h)

    act.defvjp(lambda h: (jnp.sin(h), h), lambda h, g: (g * jnp.cos(h),))
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)}
    return (lambda p, x: act(x @ p["w"])), params


def test_forward_mode_on_custom_vjp_names_the_fix():
    f, p = custom_vjp_model()
    with pytest.raises(TypeError, match=r"implementation='ntk_vp'.*forward-mode.*'jacobian'"):
        ntk.entk(f, p, jnp.ones((4, 3)), implementation="ntk_vp")


def test_auto_never_picks_forward_mode_for_custom_vjp(monkeypatch):
    from ntk.kernels import estimates
    from ntk.kernels.implementations import IMPLEMENTATIONS

    f, p = custom_vjp_model()
    # Make ntk_vp the cheapest by far, so only the forward-mode check can reject it.
    cheap = dataclasses.replace(IMPLEMENTATIONS["ntk_vp"], cost=lambda **_: 0.0)
    monkeypatch.setitem(IMPLEMENTATIONS, "ntk_vp", cheap)
    x = jnp.linspace(0.0, 1.0, 12).reshape(4, 3)
    assert estimates.choose_implementation(f, p, x, None, 2, False) != "ntk_vp"
    want = ntk.entk(f, p, x, implementation="jacobian")
    np.testing.assert_allclose(ntk.entk(f, p, x), want, rtol=1e-6)
    g, q = model()
    assert estimates.choose_implementation(g, q, x, None, 2, False) == "ntk_vp"
