"""ntk.lookahead: the Schur-complement look-ahead equals a brute-force float64 recompute of
(K_{L+x} + λI)⁻¹ for every candidate, with the eNTK and the pNTK, with and without a ridge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk

N, C, U, O, P = 6, 5, 7, 3, 60


def _kernels(kind: str, seed: int = 0):
    """Kernels of random Jacobians J [N+C+U, O, P] (full rank: P > (N+1)·O), split into
    L, C, U; the pNTK is the NTK of Σ_o f_o/√O, as ntk.pntk defines it."""
    rng = np.random.default_rng(seed)
    j_XOP = rng.normal(size=(N + C + U, O, P))
    if kind == "entk":
        k = np.einsum("aip,bjp->abij", j_XOP, j_XOP)
    else:
        g_XP = j_XOP.sum(1) / np.sqrt(O)
        k = g_XP @ g_XP.T
    f0 = rng.normal(size=(N + C + U, O))
    y = rng.integers(0, O, N)
    sl, sc, su = slice(0, N), slice(N, N + C), slice(N + C, None)
    return k, f0, y, (sl, sc, su)


def _matrix(k_block):
    return k_block if k_block.ndim == 2 else ntk.as_matrix(k_block)


def _brute(k, f0, y_NO, yhat_CO, sl, sc, su, ridge):
    """For each candidate: (K_{L+x} + λI)⁻¹ recomputed with np.linalg.inv, λ fixed by K_LL."""
    idx_l, idx_u = np.arange(N), np.arange(su.start, su.start + U)
    kll = _matrix(k[sl, sl])
    lam = ridge * np.mean(np.diag(kll))
    out = []
    for c in range(C):
        idx = np.concatenate([idx_l, [sc.start + c]])
        kk = _matrix(k[np.ix_(idx, idx)])
        ku = _matrix(k[np.ix_(idx_u, idx)])
        r = np.concatenate([y_NO - f0[sl], yhat_CO[c : c + 1] - f0[sc][c : c + 1]])
        inv = np.linalg.inv(kk + lam * np.eye(len(kk)))
        if k.ndim == 2:
            pred = f0[su] + ku @ inv @ r
        else:
            pred = f0[su] + (ku @ inv @ r.reshape(-1)).reshape(U, O)
        out.append(pred)
    base = f0[su] + (
        _matrix(k[su, sl]) @ np.linalg.inv(kll + lam * np.eye(len(kll))) @ (y_NO - f0[sl])
        if k.ndim == 2
        else (
            ntk.as_matrix(k[su, sl])
            @ np.linalg.inv(kll + lam * np.eye(len(kll)))
            @ (y_NO - f0[sl]).reshape(-1)
        ).reshape(U, O)
    )
    return base, np.stack(out)


def _call(k, f0, y, parts, **kw):
    sl, sc, su = parts
    k_cc = k[sc, sc]
    return ntk.lookahead_from_kernels(
        k[sl, sl], k[sl, sc], k_cc, k[su, sl], k[su, sc], y, f0[sl], f0[sc], f0[su], **kw
    )


@pytest.mark.parametrize("kind", ["entk", "pntk"])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_lookahead_equals_brute_force_recompute(kind, ridge, chunk_size):
    k, f0, y, parts = _kernels(kind)
    la = _call(k, f0, y, parts, ridge=ridge, chunk_size=chunk_size, return_deltas=True)
    base, brute_CUO = _brute(k, f0, np.eye(O)[y], la.candidate_targets, *parts, ridge)
    scale = np.max(np.abs(brute_CUO - base))
    np.testing.assert_allclose(la.predictions, base, rtol=0, atol=1e-10 * np.max(np.abs(base)))
    np.testing.assert_allclose(la.deltas, brute_CUO - base, rtol=0, atol=1e-9 * scale)
    changes = np.sum(np.argmax(brute_CUO, 2) != np.argmax(base, 1)[None], axis=1)
    np.testing.assert_array_equal(la.changes, changes)
    np.testing.assert_allclose(la.l2_change, np.linalg.norm(brute_CUO - base, axis=(1, 2)))
    # default labels: the network's own predicted class
    np.testing.assert_array_equal(la.candidate_targets, np.eye(O)[np.argmax(f0[parts[1]], 1)])
    # the base is the linearised network of ntk.linearized_prediction
    sl, _, su = parts
    lin = ntk.linearized_prediction(k[sl, sl], k[su, sl], np.eye(O)[y], f0[sl], f0[su], ridge=ridge)
    np.testing.assert_allclose(la.predictions, lin, rtol=1e-8, atol=1e-10)


def test_explicit_labels_and_whole_or_diagonal_k_cc():
    k, f0, y, parts = _kernels("entk", seed=1)
    sl, sc, su = parts
    labels = np.arange(C) % O
    la = _call(k, f0, y, parts, candidate_labels=labels, ridge=0.01, return_deltas=True)
    base, brute = _brute(k, f0, np.eye(O)[y], np.eye(O)[labels], *parts, 0.01)
    np.testing.assert_allclose(la.deltas, brute - base, atol=1e-9 * np.max(np.abs(brute - base)))
    diag = k[sc, sc][np.arange(C), np.arange(C)]
    la2 = ntk.lookahead_from_kernels(
        k[sl, sl], k[sl, sc], diag, k[su, sl], k[su, sc], y, f0[sl], f0[sc], f0[su],
        candidate_labels=np.eye(O)[labels], ridge=0.01,
    )  # fmt: skip
    np.testing.assert_allclose(la2.l2_change, la.l2_change, rtol=1e-12)


def test_select_orders_by_changes_then_l2():
    k, f0, y, parts = _kernels("pntk", seed=2)
    la = _call(k, f0, y, parts)
    order = la.select(C)
    keys = list(zip(-la.changes[order], -la.l2_change[order], strict=True))
    assert keys == sorted(keys)
    assert list(la.select(2, score="l2_change")) == list(np.argsort(-la.l2_change)[:2])
    with pytest.raises(ValueError, match="batch: must be in"):
        la.select(C + 1)
    with pytest.raises(ValueError, match="score: unknown value"):
        la.select(1, score="entropy")


def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] / jnp.sqrt(x.shape[1]))
    return h @ params["w2"] / jnp.sqrt(params["w2"].shape[0])


@pytest.mark.parametrize("kind", ["entk", "pntk"])
def test_kernel_function_path_matches_precomputed_kernels(kind):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k1, (4, 64)), "w2": jax.random.normal(k2, (64, O))}
    x = jax.random.normal(k3, (N + C + U, 4))
    y = np.arange(N) % O
    fn = ntk.kernel_fn(_mlp, kind=kind)
    la = ntk.lookahead(
        fn, params, x[:N], y, x[N : N + C], x[N + C :], ridge=1e-3, chunk_size=2,
        return_deltas=True,
    )  # fmt: skip
    k = np.asarray(fn(params, x))
    f0 = np.asarray(_mlp(params, x), np.float64)
    parts = (slice(0, N), slice(N, N + C), slice(N + C, None))
    ref = _call(k, f0, y, parts, ridge=1e-3, return_deltas=True)
    np.testing.assert_allclose(la.deltas, ref.deltas, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(la.changes, ref.changes)
    base, brute = _brute(k, f0, np.eye(O)[y], la.candidate_targets, *parts, 1e-3)
    np.testing.assert_allclose(la.deltas, brute - base, atol=1e-8 * np.max(np.abs(brute - base)))


def test_bad_arguments_raise_clear_errors():
    k, f0, y, parts = _kernels("entk")
    sl, sc, su = parts
    args = [k[sl, sl], k[sl, sc], k[sc, sc], k[su, sl], k[su, sc], y, f0[sl], f0[sc], f0[su]]

    def call(i=None, value=None, **kw):
        a = list(args)
        if i is not None:
            a[i] = value
        return ntk.lookahead_from_kernels(*a, **kw)

    with pytest.raises(ValueError, match=r"k_ll: expected a square"):
        call(0, k[sl, sc])
    with pytest.raises(ValueError, match=r"k_lc: expected \[6, 5, 3, 3\].*got \(6, 4, 3, 3\)"):
        call(1, k[sl, N : N + 4])
    with pytest.raises(ValueError, match=r"k_uc: expected \[7, 5, 3, 3\]"):
        call(4, k[su, sl])
    with pytest.raises(ValueError, match=r"k_cc: expected the candidates' diagonal \[5, 3, 3\]"):
        call(2, k[sc, sc][:2])
    with pytest.raises(ValueError, match=r"y_labelled: labels must be in \[0, 3\)"):
        call(5, np.array([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match=r"y_labelled: expected \[6\] int labels"):
        call(5, y[:4])
    with pytest.raises(TypeError, match=r"y_labelled: 1-D labels must be ints"):
        call(5, y.astype(float))
    with pytest.raises(ValueError, match=r"candidate_labels: expected \[5\] int labels"):
        call(candidate_labels=[0, 1])
    with pytest.raises(ValueError, match=r"f0_pool: expected \[U, 3\]"):
        call(8, f0[su][:, :2])
    with pytest.raises(ValueError, match=r"ridge: must be a finite number >= 0, got -1"):
        call(ridge=-1.0)
    with pytest.raises(ValueError, match=r"ridge: must be a finite number >= 0, got nan"):
        call(ridge=float("nan"))
    with pytest.raises(ValueError, match=r"chunk_size: must be positive"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match=r"f0_candidates: contains NaN"):
        call(7, np.full_like(f0[sc], np.nan))
    with pytest.raises(TypeError, match=r"kernel: expected a kernel function"):
        ntk.lookahead(np.eye(3), {}, np.ones((2, 1)), [0, 1], np.ones((2, 1)), np.ones((2, 1)))


def test_singular_systems_ask_for_a_ridge():
    k, f0, y, parts = _kernels("pntk")
    sl, sc, su = parts
    k_dup = k.copy()
    idx = np.arange(len(k))
    idx[sc.start] = 0  # candidate 0 is labelled point 0 again
    k_dup = k[np.ix_(idx, idx)]
    with pytest.raises(np.linalg.LinAlgError, match=r"candidates \[0\].*pass ridge > 0"):
        _call(k_dup, f0, y, parts)
    la = _call(k_dup, f0, y, parts, ridge=1e-3)
    assert np.all(la.schur_min > 0)
    rank_def = np.ones((N, N))
    with pytest.raises(np.linalg.LinAlgError, match=r"k_ll: .*not positive definite"):
        ntk.lookahead_from_kernels(
            rank_def, k[sl, sc], k[sc, sc], k[su, sl], k[su, sc], y, f0[sl], f0[sc], f0[su]
        )


def test_empty_labelled_set_or_candidates_raise_value_errors():
    """N = 0 (with a ridge: λ = mean of an empty diagonal would be NaN) and C = 0 are named
    with their shapes, not an IndexError or silent NaNs."""
    for kind in ("pntk", "entk"):
        k, f0, y, (sl, sc, su) = _kernels(kind)
        e = slice(0, 0)
        with pytest.raises(ValueError, match=r"k_ll, y_labelled: no labelled points \(k_ll \(0, 0"):
            ntk.lookahead_from_kernels(
                k[e, e], k[e, sc], k[sc, sc], k[su, e], k[su, sc], y[:0], f0[e], f0[sc], f0[su],
                ridge=0.1,
            )  # fmt: skip
        with pytest.raises(ValueError, match=r"f0_candidates, k_lc: no candidates .*\(0, 3\)"):
            ntk.lookahead_from_kernels(
                k[sl, sl], k[sl, e], k[e, e], k[su, sl], k[su, e], y, f0[sl], f0[e], f0[su]
            )
        with pytest.raises(ValueError, match=r"f0_pool, k_ul: no pool points"):
            ntk.lookahead_from_kernels(
                k[sl, sl], k[sl, sc], k[sc, sc], k[e, sl], k[e, sc], y, f0[sl], f0[sc], f0[e]
            )


class _CountingKernel:
    """A kernel function that counts its calls (none may happen before the checks)."""

    kind = "pntk"

    def __init__(self):
        self.calls = 0
        self.apply_fn = _mlp

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("kernel computed before the argument checks")


def test_lookahead_checks_every_argument_before_computing_a_kernel():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k1, (4, 8)), "w2": jax.random.normal(k2, (8, O))}
    x = jax.random.normal(k3, (N + C + U, 4))
    fn = _CountingKernel()
    xs = (x[:N], np.arange(N) % O, x[N : N + C], x[N + C :])
    with pytest.raises(ValueError, match=r"ridge: must be a finite number >= 0"):
        ntk.lookahead(fn, params, *xs, ridge=-1.0)
    with pytest.raises(ValueError, match=r"y_labelled: labels must be in \[0, 3\)"):
        ntk.lookahead(fn, params, xs[0], np.arange(N), *xs[2:])
    with pytest.raises(ValueError, match=r"y_labelled: expected \[6\] int labels"):
        ntk.lookahead(fn, params, xs[0], np.arange(4) % O, *xs[2:])
    with pytest.raises(ValueError, match=r"candidate_labels: expected \[5\] int labels"):
        ntk.lookahead(fn, params, *xs, candidate_labels=[0, 1])
    with pytest.raises(ValueError, match=r"candidate_labels: labels must be in \[0, 3\)"):
        ntk.lookahead(fn, params, *xs, candidate_labels=np.arange(C))
    with pytest.raises(ValueError, match=r"x_candidates: empty batch"):
        ntk.lookahead(fn, params, *xs[:2], x[:0], xs[3])
    with pytest.raises(ValueError, match=r"chunk_size: must be positive"):
        ntk.lookahead(fn, params, *xs, chunk_size=0)
    assert fn.calls == 0


def test_pntk_update_is_exact_with_one_output():
    """The pNTK's update forms K_UL V ([U, C]) before the outer product with e; it is exact
    with one output as well as with O = 3 (the brute-force test)."""
    k, f0, y, parts = _kernels("pntk", seed=3)
    f1 = f0[:, :1]
    la = _call(k, f1, np.zeros(N, int), parts, candidate_labels=np.ones((C, 1)), ridge=0.1,
               return_deltas=True)  # fmt: skip
    base, brute = _brute(k, f1, np.ones((N, 1)), np.ones((C, 1)), *parts, 0.1)
    np.testing.assert_allclose(la.deltas, brute - base, atol=1e-9 * np.max(np.abs(brute - base)))
