"""ntk.scale.cholesky: the out-of-core factor of a stored kernel against numpy on the dense
matrix (factor, solve, shift, smallest eigenvalues), resume after an interrupted factor, and
the errors (singular kernel, non-symmetric store, bad shift, another kernel's panels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk
from ntk.scale.cholesky import NotPositiveDefinite, factor, smallest_eigenvalues

F64 = jnp.float64


def _mlp(width=48, d=4, o=3):
    k = jax.random.split(jax.random.key(0), 2)
    params = {
        "w": jax.random.normal(k[0], (d, width), F64),
        "v": jax.random.normal(k[1], (width, o), F64) / np.sqrt(width),
    }

    def f(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    return f, params


def _store(tmp_path, kind="entk", n=23, width=48, block_size=6):
    f, params = _mlp(width)
    x = jax.random.normal(jax.random.key(1), (n, 4), F64)
    path = ntk.store_kernel(
        f, params, x, path=tmp_path / kind, kind=kind, block_size=block_size, progress=False
    )
    k = ntk.open_kernel(path)
    dense = np.asarray(k, np.float64)
    return k, ntk.as_matrix(dense) if dense.ndim == 4 else dense


def _lower(chol):
    out = np.zeros(chol.shape)
    for j, (c, e) in enumerate(zip(chol.starts, chol.starts[1:], strict=False)):
        out[c:, c:e] = chol.panel(j)
    return out


@pytest.mark.parametrize("kind", ["entk", "pntk"])
def test_factor_solve_and_smallest_eigenvalues_equal_dense_numpy(tmp_path, kind):
    k, m = _store(tmp_path, kind)  # 23 points in blocks of 6: the last panel is ragged
    chol = factor(k, tmp_path / "L", progress=False)
    low = _lower(chol)
    assert np.all(np.triu(low, 1) == 0)
    np.testing.assert_allclose(low @ low.T, m, rtol=0, atol=1e-13 * np.abs(m).max())
    v = np.random.default_rng(0).standard_normal((m.shape[0], 3))
    np.testing.assert_allclose(chol.solve(v), np.linalg.solve(m, v), rtol=1e-9)
    np.testing.assert_allclose(chol.solve(v[:, 0]), np.linalg.solve(m, v[:, 0]), rtol=1e-9)
    w = np.linalg.eigvalsh(m)
    assert w[-1] / w[0] > 1e3  # ill-conditioned enough that the test means something
    got = smallest_eigenvalues(chol, k=3, tol=1e-12)
    np.testing.assert_allclose(got["smallest"], w[:3], rtol=1e-9)
    assert got["n_solves"] > 0


def test_shift_is_a_ridge_and_a_cached_factor_reads_no_panel_files(tmp_path):
    k, m = _store(tmp_path)
    s = 0.3
    chol = factor(k, tmp_path / "L", shift=s, cache=True, progress=False)
    for p in (tmp_path / "L").glob("panel_*.npy"):
        p.unlink()  # solves must come from memory now
    v = np.random.default_rng(1).standard_normal(m.shape[0])
    np.testing.assert_allclose(
        chol.solve(v), np.linalg.solve(m + s * np.eye(len(m)), v), rtol=1e-10
    )


def test_interrupted_factor_resumes_from_the_first_missing_panel(tmp_path):
    k, m = _store(tmp_path)  # 4 panels
    seen = []

    def stop(desc, j):
        seen.append(j)
        if j == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        factor(k, tmp_path / "L", progress=False, callback=stop)
    assert sorted(p.name for p in (tmp_path / "L").glob("panel_*")) == [
        "panel_0.npy",
        "panel_1.npy",
    ]
    (tmp_path / "entk").rename(tmp_path / "moved")  # the factor knows its kernel by content
    k = ntk.open_kernel(tmp_path / "moved")
    again = []
    chol = factor(k, tmp_path / "L", progress=False, callback=lambda d, j: again.append(j))
    assert again == [3, 4]  # panels 2 and 3 (callbacks count from 1)
    fresh = factor(k, tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(_lower(chol), _lower(fresh))
    assert not [p for p in (tmp_path / "L").iterdir() if p.name.endswith(".tmp")]


def test_errors_name_the_argument(tmp_path):
    k, m = _store(tmp_path, n=20, width=4)  # 20 parameters < N·O = 60: rank-deficient
    with pytest.raises(NotPositiveDefinite, match="not positive definite") as err:
        factor(k, tmp_path / "L", progress=False)
    assert 0 <= err.value.column < m.shape[0]
    with pytest.raises(ValueError, match="shift: must be a finite number >= 0"):
        factor(k, tmp_path / "L2", shift=-1.0, progress=False)
    k2, _ = _store(tmp_path / "other", n=20, width=48)
    with pytest.raises(ValueError, match="path: .* another kernel"):
        factor(k2, tmp_path / "L", progress=False)
    f, params = _mlp()
    x = jax.random.normal(jax.random.key(2), (8, 4), F64)
    cross = ntk.open_kernel(
        ntk.store_kernel(f, params, x, x[:5], path=tmp_path / "x", kind="entk", progress=False)
    )
    with pytest.raises(ValueError, match="kernel: expected a square"):
        factor(cross, tmp_path / "L3", progress=False)
    square = ntk.open_kernel(
        ntk.store_kernel(f, params, x, x, path=tmp_path / "sq", kind="entk", progress=False)
    )
    with pytest.raises(ValueError, match="kernel: the factor needs a symmetric store"):
        factor(square, tmp_path / "L3", progress=False)
    chol = factor(_store(tmp_path / "ok")[0], tmp_path / "L4", progress=False)
    with pytest.raises(ValueError, match=r"v: expected \[D\] or \[D, C\] with D = 69"):
        chol.solve(np.ones(5))
    with pytest.raises(ValueError, match="k: must be an int in"):
        smallest_eigenvalues(chol, k=0)
