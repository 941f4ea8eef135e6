"""Implicit eNTK/pNTK operators against dense kernels: matvecs, eigenvalues, CG regression."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import MODELS, inputs

import ntk
from ntk import implicit
from ntk.implicit import _jjt


@functools.cache
def case(model="mlp"):
    apply_fn, params, shape = MODELS[model]()
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = inputs(shape, 12, 0).astype(jnp.float64)
    xt = inputs(shape, 5, 1).astype(jnp.float64)
    return apply_fn, params, x, xt


@functools.cache
def dense(model="mlp"):
    apply_fn, params, x, xt = case(model)
    return (
        np.asarray(ntk.as_matrix(ntk.entk(apply_fn, params, x))),
        np.asarray(ntk.pntk(apply_fn, params, x)),
        np.asarray(ntk.as_matrix(ntk.entk(apply_fn, params, xt, x))),
        np.asarray(ntk.pntk(apply_fn, params, xt, x)),
    )


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_matvecs_equal_dense(model, batch_size):
    apply_fn, params, x, xt = case(model)
    k, kp, ks, ksp = dense(model)
    o = k.shape[0] // 12
    v = np.random.default_rng(0).standard_normal((12, o))
    got = implicit.entk_matvec(apply_fn, params, x, batch_size=batch_size)(v)
    np.testing.assert_allclose(np.asarray(got).ravel(), k @ v.ravel(), rtol=1e-10, atol=1e-12)
    pm = implicit.pntk_matvec(apply_fn, params, x, batch_size=batch_size)
    np.testing.assert_allclose(pm(v[:, 0]), kp @ v[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pm(v), kp @ v, rtol=1e-10, atol=1e-12)  # column by column
    cm = implicit.cross_matvec(apply_fn, params, xt, x, batch_size=batch_size)
    np.testing.assert_allclose(np.asarray(cm(v)).ravel(), ks @ v.ravel(), rtol=1e-10, atol=1e-12)
    cp = implicit.cross_matvec(apply_fn, params, xt, x, kind="pntk", batch_size=batch_size)
    np.testing.assert_allclose(cp(v[:, 1]), ksp @ v[:, 1], rtol=1e-10, atol=1e-12)
    diag = implicit.kernel_diagonal(apply_fn, params, x, batch_size=batch_size)
    np.testing.assert_allclose(np.asarray(diag).ravel(), np.diag(k), rtol=1e-10)
    diag_p = implicit.kernel_diagonal(apply_fn, params, x, kind="pntk", batch_size=batch_size)
    np.testing.assert_allclose(diag_p, np.diag(kp), rtol=1e-10)


def test_matvec_under_jit_compiles_once():
    apply_fn, params, x, _ = case()
    k = dense()[0]
    mv = implicit.entk_matvec(apply_fn, params, x)
    f = jax.jit(lambda v: 2.0 * mv(v))
    v = jnp.ones((12, 3))
    np.testing.assert_allclose(np.asarray(f(v)).ravel(), 2.0 * k @ np.ones(36), rtol=1e-10)
    mv(v)
    before = _jjt._cache_size()
    mv(v + 1.0)
    implicit.entk_matvec(apply_fn, params, x)(v)  # a new operator on the same shapes
    assert _jjt._cache_size() == before


@pytest.mark.parametrize("kind", ["entk", "pntk"])
def test_extreme_eigenvalues_match_eigvalsh(kind):
    apply_fn, params, x, _ = case()
    k, kp, _, _ = dense()
    eig = np.linalg.eigvalsh(k if kind == "entk" else kp)
    assert eig[0] > 1e-3 * eig[-1]  # well conditioned: λ_min is meaningful
    res = implicit.extreme_eigenvalues(apply_fn, params, x, kind=kind, k=2, tol=1e-12)
    np.testing.assert_allclose(res["largest"], eig[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(res["smallest"], eig[:2], rtol=1e-8)
    assert res["lambda_max"] == res["largest"][0] and res["lambda_min"] == res["smallest"][0]
    top = implicit.extreme_eigenvalues(
        apply_fn, params, x, kind=kind, k=2, tol=1e-12, ends="largest"
    )
    np.testing.assert_allclose(top["largest"], res["largest"], rtol=1e-10)
    assert "smallest" not in top and math.isnan(top["lambda_min"])
    with pytest.raises(ValueError, match="ends"):
        implicit.extreme_eigenvalues(apply_fn, params, x, ends="top")


def test_preconditioned_lobpcg_finds_lambda_min_of_ill_conditioned_entk():
    apply_fn, params, x, _ = case()
    x = x.at[1].set(x[0] + 3e-3 * x[1])  # two near-duplicate inputs: a tiny λ_min
    k = np.asarray(ntk.as_matrix(ntk.entk(apply_fn, params, x)))
    kp = np.asarray(ntk.pntk(apply_fn, params, x))
    eig = np.linalg.eigvalsh(k)
    assert eig[-1] > 1e5 * eig[0] > 0  # ill-conditioned, still positive definite
    t = np.linalg.inv(kp)  # (pNTK)⁻¹ ⊗ I on sample-major [N·O, C]
    calls = []

    def prec(v):
        calls.append(v.shape)
        return (t @ v.reshape(12, -1)).reshape(v.shape)

    res = implicit.extreme_eigenvalues(
        apply_fn, params, x, tol=1e-7, preconditioner=prec, n_vectors=4
    )
    assert 1e-7 * eig[0] > 36 * np.finfo(float).eps * eig[-1]  # the tolerance, not round-off
    assert res["converged"] and max(c[1] for c in calls) == 4  # LOBPCG ran, 4 vectors
    assert res["residuals"][0] <= 1e-7 * res["lambda_min"]  # so |error| <= 1e-7 λ_min
    np.testing.assert_allclose(res["lambda_min"], eig[0], rtol=1e-7)
    np.testing.assert_allclose(res["lambda_max"], eig[-1], rtol=1e-8)
    with pytest.raises(TypeError, match="preconditioner"):
        implicit.extreme_eigenvalues(apply_fn, params, x, preconditioner=np.eye(36))
    with pytest.raises(ValueError, match="n_vectors"):
        implicit.extreme_eigenvalues(apply_fn, params, x, preconditioner=prec, n_vectors=0)


@pytest.mark.parametrize("kind", ["entk", "pntk"])
@pytest.mark.parametrize("ridge", [1e-3, 0.1])
def test_cg_regression_matches_dense(kind, ridge):
    apply_fn, params, x, xt = case()
    y = np.random.default_rng(1).standard_normal((12, 3))
    got = implicit.cg_kernel_regression(
        apply_fn, params, x, y, xt, kind=kind, ridge=ridge, tol=1e-11, batch_size=5
    )
    fn = ntk.entk if kind == "entk" else ntk.pntk
    want = ntk.kernel_regression(
        fn(apply_fn, params, x), fn(apply_fn, params, xt, x), y, ridge=ridge
    )
    assert got.shape == (5, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_cg_not_converged_raises_with_residual():
    apply_fn, params, x, xt = case()
    y = np.random.default_rng(1).standard_normal((12, 3))
    with pytest.raises(RuntimeError, match=r"did not converge.*relative residual \d"):
        implicit.cg_kernel_regression(apply_fn, params, x, y, xt, tol=1e-12, maxiter=2)


def test_bad_inputs():
    apply_fn, params, x, xt = case()
    mv = implicit.entk_matvec(apply_fn, params, x)
    with pytest.raises(ValueError, match=r"v: expected shape \[N, O\] = \(12, 3\)"):
        mv(jnp.ones((12,)))
    with pytest.raises(ValueError, match=r"v: expected shape \[N\]"):
        implicit.pntk_matvec(apply_fn, params, x)(jnp.ones((11,)))
    with pytest.raises(ValueError, match="batch_size"):
        implicit.entk_matvec(apply_fn, params, x, batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        implicit.extreme_eigenvalues(apply_fn, params, x, kind="trace")
    with pytest.raises(ValueError, match=r"k: must be an int in \[1, 36\)"):
        implicit.extreme_eigenvalues(apply_fn, params, x, k=36)
    with pytest.raises(ValueError, match="y_train"):
        implicit.cg_kernel_regression(apply_fn, params, x, np.ones((12, 2)), xt)
    with pytest.raises(ValueError, match="ridge"):
        implicit.cg_kernel_regression(apply_fn, params, x, np.ones((12, 3)), xt, ridge=-1.0)
    with pytest.raises(ValueError, match="per-example shapes differ"):
        implicit.cross_matvec(apply_fn, params, jnp.ones((4, 6)), x)
