"""Metrics against closed forms and against a direct computation."""

import numpy as np
import pytest

import ntk


def random_psd_entk(n, o, seed=0, p=40):
    rng = np.random.default_rng(seed)
    j_NOP = rng.normal(size=(n, o, p))
    return np.einsum("aop,bqp->aboq", j_NOP, j_NOP)


def test_as_matrix_and_kron_layout_are_sample_major():
    e = random_psd_entk(3, 2)
    m = ntk.as_matrix(e)
    assert m[1 * 2 + 1, 2 * 2 + 0] == e[1, 2, 1, 0]
    a = np.arange(9.0).reshape(3, 3)
    k = ntk.kron_identity(a, 2)
    assert k[1 * 2 + 1, 2 * 2 + 1] == a[1, 2] and k[1 * 2 + 0, 2 * 2 + 1] == 0.0


def test_relative_frobenius_error_closed_forms():
    n, o = 4, 3
    a = np.random.default_rng(1).normal(size=(n, n))
    exact = a[:, :, None, None] * np.eye(o)
    assert ntk.relative_frobenius_error(exact, a) == 0.0
    assert ntk.relative_frobenius_error(exact, 2 * a) == pytest.approx(1.0)
    assert ntk.relative_frobenius_error(exact, np.zeros((n, n))) == pytest.approx(1.0)
    e = random_psd_entk(n, o)
    direct = np.linalg.norm(ntk.as_matrix(e) - np.kron(a, np.eye(o))) / np.linalg.norm(e)
    assert ntk.relative_frobenius_error(e, a) == pytest.approx(direct, rel=1e-12)
    diag = np.einsum("abkk->abk", e)
    off = e - diag[..., None] * np.eye(o)
    want = np.linalg.norm(off) / np.linalg.norm(e)
    assert ntk.relative_frobenius_error(e, diag) == pytest.approx(want, rel=1e-12)


def test_compare_spectra_matches_eigh():
    n, o = 5, 3
    e = random_psd_entk(n, o)
    pntk = e.sum(axis=(2, 3)) / o
    out = ntk.compare_spectra(e, pntk)
    eig_e = np.linalg.eigvalsh(ntk.as_matrix(e))
    eig_p = np.sort(np.repeat(np.linalg.eigvalsh(pntk), o))
    np.testing.assert_allclose(out["eig_entk"], eig_e, rtol=1e-10)
    np.testing.assert_allclose(out["eig_approx"], np.maximum(eig_p, 0), rtol=1e-10, atol=1e-12)
    assert out["lambda_max_rel_error"] == pytest.approx(abs(eig_p[-1] - eig_e[-1]) / eig_e[-1])
    assert out["lambda_min_rel_error"] == pytest.approx(abs(eig_p[0] - eig_e[0]) / eig_e[0])
    assert out["cond_entk"] == pytest.approx(eig_e[-1] / eig_e[0])
    assert out["cond_approx"] == pytest.approx(eig_p[-1] / eig_p[0])


def test_spectra_roundoff_negatives_are_reported_and_clipped():
    # Rank-deficient PSD kernel: exact zero eigenvalues come out as tiny ± round-off.
    e = random_psd_entk(6, 2, p=3)
    out = ntk.compare_spectra(e, e.sum(axis=(2, 3)) / 2)
    assert out["eig_entk"].min() >= 0.0
    m, a = ntk.as_matrix(e), e.sum(axis=(2, 3)) / 2
    raw = np.linalg.eigvalsh(0.5 * (m + m.T))
    raw_a = np.linalg.eigvalsh(0.5 * (a + a.T))
    assert (raw < 0).any()  # the case under test: round-off negatives exist
    # counted over Θ and over A ⊗ I_O (each eigenvalue of A repeated O = 2 times)
    assert out["n_roundoff_negative"] == int((raw < 0).sum() + 2 * (raw_a < 0).sum())
    np.testing.assert_array_equal(out["eig_entk"], np.clip(raw, 0.0, None))
    bad = e - 5.0 * np.eye(6)[:, :, None, None] * np.eye(2)
    with pytest.raises(ValueError, match="not PSD"):
        ntk.compare_spectra(bad, e.sum(axis=(2, 3)) / 2)


@pytest.mark.parametrize(
    "entk_shape, approx_shape, match",
    [
        ((3, 3, 2), (3, 3), "entk: expected rank 4"),
        ((3, 3, 2, 2), (3, 4), "approx: shape"),
        ((3, 3, 2, 3), (3, 3), r"entk: expected \[N1, N2, O, O\]"),
        ((3, 3, 2, 2), (3, 3, 2, 2, 1), "approx: expected rank"),
    ],
)
def test_wrong_shapes(entk_shape, approx_shape, match):
    with pytest.raises(ValueError, match=match):
        ntk.relative_frobenius_error(np.ones(entk_shape), np.ones(approx_shape))


def test_nan_and_asymmetric_inputs():
    e = random_psd_entk(3, 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ntk.relative_frobenius_error(e, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="square"):
        ntk.compare_spectra(np.ones((3, 2, 2, 2)), np.ones((3, 2)))
    asym = e.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        ntk.compare_spectra(asym, e.sum(axis=(2, 3)) / 2)
