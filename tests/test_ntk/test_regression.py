"""Kernel regression: 4-D and 2-D paths against direct solves, ridge, singular systems."""

import warnings

import numpy as np
import pytest

import ntk


def setup(n=6, m=4, o=3, p=50, seed=0):
    rng = np.random.default_rng(seed)
    j_tr, j_te = rng.normal(size=(n, o, p)), rng.normal(size=(m, o, p))
    k_tr = np.einsum("aop,bqp->aboq", j_tr, j_tr)
    k_te = np.einsum("aop,bqp->aboq", j_te, j_tr)
    y = np.eye(o)[rng.integers(0, o, n)]
    return k_tr, k_te, y


def test_entk_regression_matches_direct_solve():
    k_tr, k_te, y = setup()
    n, o = y.shape
    big = k_tr.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    big_te = k_te.transpose(0, 2, 1, 3).reshape(-1, n * o)
    want = (big_te @ np.linalg.solve(big, y.reshape(-1))).reshape(-1, o)
    np.testing.assert_allclose(ntk.kernel_regression(k_tr, k_te, y), want, rtol=1e-8)
    # Interpolation: predicting the training points returns the targets.
    np.testing.assert_allclose(ntk.kernel_regression(k_tr, k_tr, y), y, atol=1e-8)


def test_2d_regression_solves_once_for_all_outputs():
    k_tr, k_te, y = setup()
    o = y.shape[1]
    a_tr, a_te = k_tr.sum((2, 3)) / o, k_te.sum((2, 3)) / o
    want = a_te @ np.linalg.solve(a_tr, y)
    np.testing.assert_allclose(ntk.kernel_regression(a_tr, a_te, y), want, rtol=1e-8)
    # On A ⊗ I the 4-D path gives the same predictions as the 2-D path.
    eye = np.eye(o)[None, None]
    np.testing.assert_allclose(
        ntk.kernel_regression(a_tr[..., None, None] * eye, a_te[..., None, None] * eye, y),
        want,
        rtol=1e-8,
    )


def test_ridge_is_relative_to_mean_diagonal():
    k_tr, k_te, y = setup()
    a_tr, a_te = k_tr.sum((2, 3)), k_te.sum((2, 3))
    lam = 0.1 * np.mean(np.diag(a_tr))
    want = a_te @ np.linalg.solve(a_tr + lam * np.eye(len(a_tr)), y)
    got = ntk.kernel_regression(a_tr, a_te, y, ridge=0.1)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    np.testing.assert_allclose(ntk.kernel_regression(5 * a_tr, 5 * a_te, y, ridge=0.1), got)


def test_singular_system():
    rng = np.random.default_rng(0)
    j = rng.normal(size=(6, 2))  # rank 2 < 6
    k, k_te, y = j @ j.T, rng.normal(size=(3, 2)) @ j.T, rng.normal(size=(6, 2))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        ntk.kernel_regression(k, k_te, y, on_singular="raise")
    with pytest.warns(RuntimeWarning, match="least-squares"):
        got = ntk.kernel_regression(k, k_te, y)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, k_te @ np.linalg.pinv(k, rcond=1e-12) @ y, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ntk.kernel_regression(k, k_te, y, ridge=1e-3)  # a ridge makes it regular


def test_linearized_prediction():
    k_tr, k_te, y = setup()
    rng = np.random.default_rng(3)
    f0, f0s = rng.normal(size=y.shape), rng.normal(size=(k_te.shape[0], y.shape[1]))
    got = ntk.linearized_prediction(k_tr, k_te, y, f0, f0s)
    np.testing.assert_allclose(got, f0s + ntk.kernel_regression(k_tr, k_te, y - f0))
    np.testing.assert_allclose(ntk.linearized_prediction(k_tr, k_tr, y, f0, f0), y, atol=1e-8)


def test_accuracy():
    pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert ntk.accuracy(pred, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert ntk.accuracy(pred, np.eye(2)[[0, 1, 0]]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        ntk.accuracy(pred, np.array([0, 1]))


@pytest.mark.parametrize(
    "k_tr, k_te, y, match",
    [
        (np.eye(3), np.ones((2, 4)), np.ones((3, 1)), r"k_test_train: expected \[M, 3\]"),
        (np.ones((3, 4)), np.ones((2, 4)), np.ones((3, 1)), "k_train: expected a square"),
        (np.ones((3, 3, 2)), np.ones((2, 3)), np.ones((3, 1)), "k_train: expected rank 2"),
        (np.eye(3), np.ones((2, 3)), np.ones((4, 1)), "y_train: expected"),
        (np.ones((2, 2, 3, 3)), np.ones((1, 2, 3, 2)), np.ones((2, 3)), "k_test_train"),
    ],
)
def test_bad_shapes(k_tr, k_te, y, match):
    with pytest.raises(ValueError, match=match):
        ntk.kernel_regression(k_tr, k_te, y)


def test_bad_ridge_and_nan():
    k_tr, k_te, y = setup()
    with pytest.raises(ValueError, match="ridge"):
        ntk.kernel_regression(k_tr, k_te, y, ridge=-1.0)
    with pytest.raises(ValueError, match="on_singular"):
        ntk.kernel_regression(k_tr, k_te, y, on_singular="pinv")
    with pytest.raises(ValueError, match="k_train.*NaN"):
        ntk.kernel_regression(np.full_like(k_tr, np.nan), k_te, y)
