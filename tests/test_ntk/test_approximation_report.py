"""ntk.approximation_report: its numbers against an independent float64 reference (jacrev +
einsum + numpy), the stored (block-wise, Lanczos, CG) path against the in-memory one, resume
after an interrupted run, bad input, and Flax NNX / Equinox models."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import reference_entk

import ntk

F64 = jnp.float64


def _mlp(width=32, d=5, o=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w1": jax.random.normal(k[0], (d, width), F64),
        "b1": jnp.zeros(width, F64),
        "w2": jax.random.normal(k[1], (width, o), F64),
        "b2": jnp.zeros(o, F64),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["w1"] / math.sqrt(d) + p["b1"][None])
        return h @ p["w2"] / math.sqrt(width) + p["b2"][None]

    return f, params


def _data(n=16, m=6, d=5, o=3, seed=1):
    k = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(k[0], (n, d), F64)
    xt = jax.random.normal(k[1], (m, d), F64)
    return x, np.arange(n) % o, xt, np.arange(m) % o


def _reference(f, params, x, y, xt, yt, ridge):
    """Everything the report states, from a jacrev eNTK and numpy only."""
    z = jnp.concatenate([x, xt])
    n, o = x.shape[0], 3
    k = reference_entk(f, params, z)  # [N+M, N+M, O, O] float64
    kt, ks = k[:n, :n], k[n:, :n]
    mat = kt.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    eig_e = np.linalg.eigvalsh(mat)
    approx = {"pntk": k.sum((2, 3)) / o, "trace": np.einsum("abqq->ab", k) / o}
    yy = np.eye(o)[y]
    out = {"lambda_max": eig_e[-1], "lambda_min": eig_e[0], "kinds": {}}

    def solve(a, b, targets, r):
        sys_ = a + r * np.mean(np.diag(a)) * np.eye(len(a))
        return b @ np.linalg.solve(sys_, targets)

    for r in (0.0, ridge):
        pred_e = solve(mat, ks.transpose(0, 2, 1, 3).reshape(-1, n * o), yy.reshape(-1), r)
        out[r] = pred_e.reshape(-1, o)
    for name, a in approx.items():
        at, ast = a[:n, :n], a[n:, :n]
        blocks = np.kron(at, np.eye(o))
        eig = np.linalg.eigvalsh(at)
        row = {
            "frob": np.linalg.norm(mat - blocks) / np.linalg.norm(mat),
            "lambda_max": eig[-1],
            "lambda_min": eig[0],
        }
        for r in (0.0, ridge):
            p = solve(at, ast, yy, r)
            row[r] = np.linalg.norm(p - out[r]) / np.linalg.norm(out[r])
            row[f"acc{r}"] = np.mean(np.argmax(p, 1) == yt)
        out["kinds"][name] = row
    out["trace"] = np.trace(mat)
    # readout: f = h·w2/√W + b2, its eNTK block is (h·h'/W + 1) ⊗ I
    h = np.tanh(np.asarray(x) @ np.asarray(params["w1"]) / math.sqrt(x.shape[1]))
    out["readout_trace"] = o * np.sum(np.sum(h * h, 1) / h.shape[1] + 1.0)
    return out


def test_in_memory_numbers_equal_float64_reference():
    f, params = _mlp()
    x, y, xt, yt = _data()
    rep = ntk.approximation_report(
        f,
        params,
        x,
        y,
        x_test=xt,
        y_test=yt,
        kinds=("pntk", "trace"),
        ridge=0.1,
        timing_repeats=1,
    )
    ref = _reference(f, params, x, y, xt, yt, 0.1)
    np.testing.assert_allclose(rep.entk["lambda_max"], ref["lambda_max"], rtol=1e-10)
    np.testing.assert_allclose(rep.entk["lambda_min"], ref["lambda_min"], rtol=1e-8)
    for name, row in ref["kinds"].items():
        k = rep.kinds[name]
        np.testing.assert_allclose(k.relative_frobenius_error, row["frob"], rtol=1e-10)
        np.testing.assert_allclose(k.lambda_max, row["lambda_max"], rtol=1e-10)
        np.testing.assert_allclose(k.lambda_min, row["lambda_min"], rtol=1e-8)
        np.testing.assert_allclose(
            k.lambda_max_rel_error,
            abs(row["lambda_max"] - ref["lambda_max"]) / ref["lambda_max"],
            rtol=1e-8,
        )
        np.testing.assert_allclose(k.cond, row["lambda_max"] / row["lambda_min"], rtol=1e-8)
        for r in (0.0, 0.1):
            reg = k.regression[f"ridge={r:g}"]
            np.testing.assert_allclose(reg["pred_rel_diff"], row[r], rtol=1e-6)
            assert reg["accuracy"] == pytest.approx(row[f"acc{r}"])
    assert rep.o == 3 and rep.n == 16 and rep.n_test == 6
    assert rep.n_params == 5 * 32 + 32 + 32 * 3 + 3
    assert rep.readout_width == 32
    assert set(rep.readout_leaves) == {"['w2']", "['b2']"}
    np.testing.assert_allclose(rep.readout_share, ref["readout_trace"] / ref["trace"], rtol=1e-10)
    assert rep.entk["implementation"] in ntk.IMPLEMENTATIONS
    assert rep.entk["warm_seconds"] > 0


def test_diagonal_kind_is_compared_blockwise():
    f, params = _mlp()
    x, y, xt, yt = _data()
    rep = ntk.approximation_report(
        f, params, x, y, x_test=xt, kinds=["diagonal"], ridge=0.0, timing_repeats=1
    )
    n, o = 16, 3
    k = reference_entk(f, params, x)
    mat = k.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    d = np.einsum("abqq->abq", k)
    blockdiag = (d[:, :, :, None] * np.eye(o)).transpose(0, 2, 1, 3).reshape(n * o, n * o)
    want = np.linalg.norm(mat - blockdiag) / np.linalg.norm(mat)
    r = rep.kinds["diagonal"]
    assert r.compared_as == "diag blocks"
    np.testing.assert_allclose(r.relative_frobenius_error, want, rtol=1e-10)
    eig = np.linalg.eigvalsh(blockdiag)  # the union of the O kernels' eigenvalues
    np.testing.assert_allclose([r.lambda_min, r.lambda_max], [eig[0], eig[-1]], rtol=1e-8)
    assert list(rep.ridges) == [0.0] and rep.kinds["diagonal"].regression["ridge=0"]


@pytest.mark.slow
def test_stored_equals_in_memory_and_json_round_trips(tmp_path):
    f, params = _mlp()
    x, y, xt, yt = _data(n=20, m=7)
    kw = dict(x_test=xt, y_test=yt, ridge=0.01, timing_repeats=1)
    mem = ntk.approximation_report(f, params, x, y, **kw)
    st = ntk.approximation_report(
        f,
        params,
        x,
        y,
        path=tmp_path / "r",
        block_size=8,
        progress=False,
        lanczos_tol=1e-13,
        cg_tol=1e-13,
        cg_maxiter=5000,
        **kw,
    )
    assert st.mode == "stored" and mem.mode == "in memory" and not st.notes
    for name in mem.kinds:
        a, b = mem.kinds[name], st.kinds[name]
        np.testing.assert_allclose(
            b.relative_frobenius_error, a.relative_frobenius_error, rtol=1e-12
        )
        np.testing.assert_allclose(b.lambda_max, a.lambda_max, rtol=1e-11)
        np.testing.assert_allclose(b.lambda_min, a.lambda_min, rtol=1e-9)
        for key, reg in a.regression.items():
            np.testing.assert_allclose(
                b.regression[key]["pred_rel_diff"], reg["pred_rel_diff"], rtol=1e-7
            )
            assert b.regression[key]["accuracy"] == reg["accuracy"]
    np.testing.assert_allclose(st.entk["lambda_min"], mem.entk["lambda_min"], rtol=1e-9)
    np.testing.assert_allclose(st.readout_share, mem.readout_share, rtol=1e-12)
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert ntk.ApproximationReport.from_dict(saved) == st
    assert ntk.ApproximationReport.from_json(mem.to_json()) == mem
    assert "pntk" in str(mem) and "readout width 32" in str(mem)


def test_stored_kinds_too_large_to_read_whole_equal_in_memory(tmp_path):
    f, params = _mlp()
    x, y, xt, yt = _data(n=20, m=7)
    kw = dict(x_test=xt, y_test=yt, ridge=0.01, timing_repeats=1, kinds=("pntk", "diagonal"))
    mem = ntk.approximation_report(f, params, x, y, **kw)
    st = ntk.approximation_report(
        f, params, x, y, path=tmp_path / "r", block_size=8, progress=False, lanczos_tol=1e-13,
        cg_tol=1e-13, cg_maxiter=5000, memory_budget=4 * 8 * 20 * 20 - 1, **kw,
    )  # fmt: skip  # below a quarter of budget: pNTK by its factor, diagonal by Lanczos, CG
    assert not st.notes
    for name in kw["kinds"]:
        a, b = mem.kinds[name], st.kinds[name]
        np.testing.assert_allclose(b.lambda_max, a.lambda_max, rtol=1e-11)
        np.testing.assert_allclose(b.lambda_min, a.lambda_min, rtol=1e-9)
        for key, reg in a.regression.items():
            np.testing.assert_allclose(
                b.regression[key]["pred_rel_diff"], reg["pred_rel_diff"], rtol=1e-7
            )


def test_rank_deficient_entk_has_lambda_min_zero_in_both_modes(tmp_path):
    f, params = _mlp(width=4)  # 39 parameters < N·O = 60: Θ has rank ≤ 39
    x, y, xt, yt = _data(n=20, m=7)
    kinds = ("pntk", "diagonal")
    kw = dict(x_test=xt, y_test=yt, ridge=0.01, timing_repeats=1, kinds=kinds)
    mem = ntk.approximation_report(f, params, x, y, **kw)
    st = ntk.approximation_report(
        f, params, x, y, path=tmp_path / "r", block_size=8, progress=False, lanczos_tol=1e-13,
        **kw,
    )  # fmt: skip
    w = np.linalg.eigvalsh(ntk.as_matrix(reference_entk(f, params, x)))
    assert abs(w[20]) < 1e-12 * w[-1] < w[21]  # the float64 reference: 21 zeros, then not
    for rep in (mem, st):
        assert rep.n_params == 39
        assert rep.entk["lambda_min"] == 0.0 and rep.entk["cond"] == math.inf
        assert any(n.startswith("entk: rank ≤ 39") and "21 smallest" in n for n in rep.notes)
        np.testing.assert_allclose(rep.entk["lambda_max"], w[-1], rtol=1e-10)
        assert rep.kinds["pntk"].lambda_min > 0  # N = 20 < 39: the pNTK has full rank
    assert mem.spectra["entk"][:21] == [0.0] * 21 and mem.spectra["entk"][21] > 0
    for name in kinds:  # with a ridge, the stored eNTK is solved exactly by its factor
        a, b = mem.kinds[name].regression, st.kinds[name].regression
        np.testing.assert_allclose(
            b["ridge=0.01"]["pred_rel_diff"], a["ridge=0.01"]["pred_rel_diff"], rtol=1e-9
        )
        assert b["ridge=0"]["pred_rel_diff"] is None  # no ridgeless eNTK to compare with
    assert st.entk["regression"]["ridge=0.01"] == mem.entk["regression"]["ridge=0.01"]
    assert st.entk["regression"]["ridge=0"]["accuracy"] is None
    assert mem.entk["regression"]["ridge=0"]["accuracy"] is not None  # minimum-norm
    assert any(n.startswith("entk, ridge 0: Θ is rank-deficient") for n in st.notes)
    assert not (tmp_path / "r" / "factors").exists()  # deleted once the report is done


def test_stored_entk_not_positive_definite_in_float64_is_noted_and_resumed(tmp_path, monkeypatch):
    from ntk.scale import cholesky

    def fail(kernel, path, **kw):
        raise cholesky.NotPositiveDefinite("kernel: not positive definite (simulated)", 0)

    monkeypatch.setattr(cholesky, "factor", fail)
    f, params = _mlp()
    x, y, xt, yt = _data(n=12, m=4)
    kw = dict(x_test=xt, y_test=yt, kinds=["pntk"], path=tmp_path / "r", block_size=8,
              progress=False, timing_repeats=1)  # fmt: skip
    for _ in range(2):  # the second call reads every phase back: the notes must survive
        rep = ntk.approximation_report(f, params, x, y, **kw)
        assert rep.entk["lambda_min"] == 0.0 and rep.entk["cond"] == math.inf
        assert rep.entk["regression"]["ridge=0"]["accuracy"] is None
        why = [n for n in rep.notes if "not positive definite (simulated)" in n]
        assert [n.split(":")[0] for n in why] == [
            "entk, ridge 0",
            "entk, ridge 0",
            "entk, ridge 0.01",
        ]


def test_stored_resumes_after_an_interruption(tmp_path):
    f, params = _mlp()
    x, y, xt, yt = _data(n=20, m=5)
    kw = dict(
        x_test=xt,
        y_test=yt,
        kinds=("pntk", "diagonal"),
        path=tmp_path / "r",
        block_size=8,
        progress=False,
        timing_repeats=1,
    )
    seen = []

    def stop(phase, step):
        seen.append((phase, step))
        if phase == "kernel diagonal" and step == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        ntk.approximation_report(f, params, x, y, callback=stop, **kw)
    assert ("kernel entk", 6) in seen and not (tmp_path / "r" / "report.json").exists()
    again = []
    rep = ntk.approximation_report(f, params, x, y, callback=lambda p, s: again.append(p), **kw)
    assert "kernel entk" not in again  # the finished store is not recomputed
    assert again.count("kernel diagonal") == 6 - 2  # 3×3 upper triangle, 2 blocks were done
    fresh = ntk.approximation_report(f, params, x, y, **{**kw, "path": tmp_path / "fresh"})
    for name in rep.kinds:
        assert (
            rep.kinds[name].relative_frobenius_error == fresh.kinds[name].relative_frobenius_error
        )
        assert rep.kinds[name].regression == fresh.kinds[name].regression
    mem = ntk.approximation_report(f, params, x, y, **{**kw, "path": None})
    for name in rep.kinds:
        np.testing.assert_allclose(
            rep.kinds[name].relative_frobenius_error,
            mem.kinds[name].relative_frobenius_error,
            rtol=1e-12,
        )
    phases = []
    ntk.approximation_report(f, params, x, y, callback=lambda p, s: phases.append(p), **kw)
    assert phases == []  # everything finished: nothing recomputed


@pytest.mark.slow
def test_stored_resumes_after_sigkill(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(tmp_path.parent)!r})
        import jax
        jax.config.update("jax_enable_x64", True)
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import test_approximation_report as t, ntk
        f, params = t._mlp()
        x, y, xt, yt = t._data(n=20, m=5)
        def kill(phase, step):
            if phase == "eigenvalues entk":
                os.kill(os.getpid(), signal.SIGKILL)
        ntk.approximation_report(f, params, x, y, x_test=xt, y_test=yt, kinds=["pntk"],
            path={str(tmp_path / "r")!r}, block_size=8, progress=False, callback=kill)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "r" / "phases" / "frobenius.json").exists()
    f, params = _mlp()
    x, y, xt, yt = _data(n=20, m=5)
    kw = dict(x_test=xt, y_test=yt, kinds=["pntk"], block_size=8, progress=False)
    seen = []
    rep = ntk.approximation_report(
        f, params, x, y, path=tmp_path / "r", callback=lambda p, s: seen.append(p), **kw
    )
    assert not any(p.startswith(("kernel", "frobenius")) for p in seen)
    mem = ntk.approximation_report(f, params, x, y, **{**kw, "block_size": 256})
    np.testing.assert_allclose(
        rep.kinds["pntk"].relative_frobenius_error,
        mem.kinds["pntk"].relative_frobenius_error,
        rtol=1e-12,
    )


def test_bad_input_raises_clear_errors(tmp_path):
    f, params = _mlp()
    x, y, xt, yt = _data()
    with pytest.raises(ValueError, match=r"y: expected 16 labels.*\(15,\)"):
        ntk.approximation_report(f, params, x, y[:15], x_test=xt)
    with pytest.raises(ValueError, match=r"y_test: expected 6 labels"):
        ntk.approximation_report(f, params, x, y, x_test=xt, y_test=yt[:4])
    with pytest.raises(ValueError, match=r"x_test: per-example shapes.*\(6, 4\).*\(16, 5\)"):
        ntk.approximation_report(f, params, x, y, x_test=xt[:, :4])
    with pytest.raises(ValueError, match=r"kinds: unknown value 'pntkk'"):
        ntk.approximation_report(f, params, x, kinds=["pntkk"])
    with pytest.raises(ValueError, match=r"kinds: 'entk' is the reference"):
        ntk.approximation_report(f, params, x, kinds=["entk"])
    with pytest.raises(ValueError, match=r"y: labels must be in \[0, O=3\)"):
        ntk.approximation_report(f, params, x, np.arange(16), x_test=xt)
    with pytest.raises(ValueError, match=r"ridge"):
        ntk.approximation_report(f, params, x, ridge=-1.0)
    with pytest.raises(ValueError, match=r"path: the in-memory report.*\[16, 16, 3, 3\]"):
        ntk.approximation_report(f, params, x, memory_budget=1000.0)
    target = tmp_path / "r"
    with pytest.raises(ValueError, match=r"y: expected 16 labels"):
        ntk.approximation_report(f, params, x, y[:3], x_test=xt, path=target)
    assert not target.exists()  # nothing written on bad input
    ntk.approximation_report(
        f, params, x, kinds=["pntk"], path=target, block_size=8, progress=False, timing_repeats=1
    )
    with pytest.raises(ValueError, match=r"path: .* other inputs.*\['params'\]"):
        ntk.approximation_report(
            f,
            jax.tree.map(lambda a: a + 1, params),
            x,
            kinds=["pntk"],
            path=target,
            block_size=8,
            progress=False,
        )
    assert not [p for p in target.rglob("*") if p.name.endswith(".tmp")]


def _nnx_model():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs, param_dtype=F64)
            self.bn = nnx.BatchNorm(4, rngs=rngs, param_dtype=F64)
            self.hidden = nnx.Linear(4, 12, rngs=rngs, param_dtype=F64)
            self.out = nnx.Linear(12, 3, rngs=rngs, param_dtype=F64)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x["image"]))).mean(axis=(1, 2))
            return self.out(jnp.tanh(self.hidden(h)) * x["scale"][:, None])

    net = Net(nnx.Rngs(0))
    net.bn.mean.value = 0.1 * jnp.arange(4.0, dtype=F64)
    net.bn.var.value = 1.0 + 0.2 * jnp.arange(4.0, dtype=F64)
    net.eval()
    f, params = ntk.from_nnx(net)
    _, _, state = __import__("flax").nnx.split(net, __import__("flax").nnx.Param, ...)
    return f, params, state


def _pytree_x(n, seed):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "image": jax.random.normal(k[0], (n, 5, 5, 2), F64),
        "scale": 1.0 + 0.1 * jax.random.normal(k[1], (n,), F64),
    }


@pytest.mark.slow
def test_flax_nnx_with_state_and_pytree_inputs(tmp_path):
    f, params, state = _nnx_model()
    x, xt = _pytree_x(10, 1), _pytree_x(4, 2)
    y = np.arange(10) % 3
    kw = dict(x_test=xt, kinds=("pntk", "single_logit"), timing_repeats=1, state=state)
    rep = ntk.approximation_report(f, params, x, y, **kw)

    def g(p, idx):  # the reference takes arrays: rows of the pytree by index
        return f(p, jax.tree.map(lambda a: a[idx], x), state=state)

    k = reference_entk(g, params, jnp.arange(10))
    n, o = 10, 3
    mat = k.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    want = np.linalg.norm(mat - np.kron(k.sum((2, 3)) / o, np.eye(o))) / np.linalg.norm(mat)
    np.testing.assert_allclose(rep.kinds["pntk"].relative_frobenius_error, want, rtol=1e-10)
    assert rep.readout_width == 12
    st = ntk.approximation_report(
        f,
        params,
        x,
        y,
        path=tmp_path / "r",
        block_size=4,
        progress=False,
        lanczos_tol=1e-13,
        cg_tol=1e-12,
        **kw,
    )
    for name in rep.kinds:
        np.testing.assert_allclose(
            st.kinds[name].relative_frobenius_error,
            rep.kinds[name].relative_frobenius_error,
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            st.kinds[name].lambda_max, rep.kinds[name].lambda_max, rtol=1e-10
        )


def test_equinox_model_and_bottleneck_readout():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(5, 3, 16, 2, activation=jnp.tanh, key=jax.random.key(0), dtype=F64)
    f, params = ntk.from_equinox(model)
    x, y, xt, yt = _data(n=12, m=4)
    rep = ntk.approximation_report(f, params, x, y, x_test=xt, kinds=["pntk"], timing_repeats=1)
    k = reference_entk(f, params, x)
    mat = k.transpose(0, 2, 1, 3).reshape(36, 36)
    want = np.linalg.norm(mat - np.kron(k.sum((2, 3)) / 3, np.eye(3))) / np.linalg.norm(mat)
    np.testing.assert_allclose(rep.kinds["pntk"].relative_frobenius_error, want, rtol=1e-10)
    assert rep.readout_width == 16 and rep.o == 3
    assert 0 < rep.readout_share < 1


def test_readout_unknown_when_the_output_is_not_linear():
    f, params = _mlp()
    x, *_ = _data()
    rep = ntk.approximation_report(
        lambda p, a: jnp.tanh(f(p, a)), params, x, kinds=["pntk"], timing_repeats=1
    )
    assert rep.readout_width is None and rep.readout_share is None
    assert "readout width unknown" in str(rep)


def test_plot_draws_one_figure():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    f, params = _mlp()
    x, *_ = _data()
    rep = ntk.approximation_report(f, params, x, kinds=["pntk", "trace"], timing_repeats=1)
    fig = rep.plot()
    assert len(fig.axes) == 3


# --- the study's models through the Hydra entry (experiments/approximation_report.py) ----------


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A tiny digits MLP trained for one epoch with kernels at epochs 0 and 1 (N = 20)."""
    from _study import compose_cfg

    from ntk_repro import experiment

    cfg = compose_cfg(
        [
            "kernel=default",
            "debug=smoke",
            "model.width=32",
            "trainer.epochs=1",
            "trainer.checkpoint_epochs=[0,1]",
            "kernel.timing_repeats=0",
        ]
    )
    run_dir = tmp_path_factory.mktemp("study") / "run"
    experiment.run(cfg, run_dir)
    return run_dir


def _entry_cfg(overrides):
    from _study import compose_cfg
    from omegaconf import OmegaConf

    cfg = compose_cfg(overrides, "approximation_report")
    return OmegaConf.to_container(cfg, resolve=True)


def test_study_entry_reports_the_numbers_the_study_recorded(study_run, capsys):
    from ntk_repro.analysis.approximation_runs import main, report_path

    logged = {
        r["epoch"]: r
        for r in map(json.loads, (study_run / "metrics.jsonl").read_text().splitlines())
        if "relative_frobenius_error" in r
    }
    assert sorted(logged) == [0, 1]
    cfg = _entry_cfg([f"run_dir={study_run}", "kinds=[pntk,trace]"])
    results = main(cfg)  # every saved checkpoint: epochs 0 and 1, one model function for both
    assert [r["epoch"] for r in results] == [0, 1]
    text = capsys.readouterr().out
    for epoch, study in logged.items():
        report = ntk.ApproximationReport.from_json(report_path(study_run, epoch))
        assert (report.n, report.n_test, report.o) == (study["n"], study["n_test"], 10)
        pntk = report.kinds["pntk"]
        np.testing.assert_allclose(
            pntk.relative_frobenius_error, study["relative_frobenius_error"], rtol=1e-9
        )
        np.testing.assert_allclose(
            pntk.lambda_max_rel_error, study["lambda_max_rel_error"], rtol=1e-6
        )
        np.testing.assert_allclose(report.entk["cond"], study["cond_entk"], rtol=1e-6)
        ridgeless = pntk.regression["ridge=0"]
        np.testing.assert_allclose(ridgeless["pred_rel_diff"], study["kr_pred_rel_diff"], rtol=1e-6)
        assert report.entk["regression"]["ridge=0"]["accuracy"] == study["kr_acc_entk"]
        assert ridgeless["accuracy"] == study["kr_acc_pntk"]
        assert f"epoch {epoch} (step {study['step']})" in text
    assert text.count("approximation report (in memory)") == 2
    # training moved the parameters: the two checkpoints' numbers differ
    errors = [r["report"].kinds["pntk"].relative_frobenius_error for r in results]
    assert errors[0] != errors[1]


def test_study_entry_other_points_and_bad_epochs(study_run):
    from ntk_repro.analysis.approximation_runs import report_run

    out = report_run(study_run, epochs=[0], n_per_class=1, kinds=["pntk"], progress=False)
    assert (
        len(out) == 1
        and out[0]["epoch"] == 0
        and out[0]["report"].n == 10
        and out[0]["path"].name == "approximation_report_epoch0.json"
    )
    with pytest.raises(ValueError, match=r"epochs: \[7\] not saved"):
        report_run(study_run, epochs=[7])
    with pytest.raises(FileNotFoundError, match="run_dir"):
        report_run(study_run.parent / "nowhere")


@pytest.mark.slow
def test_study_entry_script_sweeps_over_runs(study_run, tmp_path):
    """``experiments/approximation_report.py -m run_dir=A,B``: one report per run."""
    import shutil
    from pathlib import Path

    other = tmp_path / "copy"
    shutil.copytree(study_run, other, ignore=shutil.ignore_patterns("approximation_report_*"))
    script = Path(__file__).resolve().parents[2] / "experiments" / "approximation_report.py"
    cmd = [sys.executable, str(script), "-m", f"run_dir={study_run},{other}", "epochs=[0]"]
    cmd += ["kinds=[pntk]", "progress=false"]
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in (study_run, other):
        report = ntk.ApproximationReport.from_json(run / "approximation_report_epoch0.json")
        assert set(report.kinds) == {"pntk"}
    assert done.stdout.count("approximation report (in memory)") == 2
