"""One-case smoke runs of the benchmark suites: every model, the API-overhead case, the
tables. Numbers are not asserted (timings live in the benchmarks), only their sanity."""

import math

import numpy as np
import pytest

from benchmarks import scale as bench_scale
from benchmarks import suite as bench

MACHINE = {
    "description": "test",
    "platform": "cpu",
    "device": "cpu",
    "jax": "x",
    "rounds": 1,
    "gemm": {"jax_gflops": 1.0, "numpy_gflops": 1.0},
}


@pytest.mark.parametrize("model", sorted(bench.MODELS))
@pytest.mark.parametrize("implementation", ["jacobian", "structured", "auto"])
def test_bench_case_runs_and_reports(model, implementation):
    case = dict(section="models", model=model, n=3, width=4, o=2, kind="entk")
    case["implementation"] = implementation
    (timing,) = bench.run_timing([case], rounds=2, max_seconds=60)
    assert timing["rounds"] == 2 and 0 < timing["warm_min_s"] <= timing["warm_median_s"]
    row = bench.with_timing(bench.run_memory(case), timing)
    assert row["chosen"] in ("jacobian", "ntk_vp", "structured")
    if implementation != "auto":
        assert row["chosen"] == implementation
    assert row["warm_median_s"] > 0 and row["first_call_s"] >= row["compile_s"] >= 0
    assert row["flops"] > 0 and math.isfinite(row["gflops_per_s"])
    table = bench.markdown({"machine": MACHINE, "rows": [row], "slopes": {}})
    assert f"| {model} | 3 | entk |" in table


def test_overhead_case_and_its_table():
    case = dict(section="overhead", model="mlp", n=4, width=8, o=3, kind="pntk")
    row = bench.run_overhead_case({**case, "implementation": "structured", "calls": 3})
    for key in ("caller_jit_s", "kernel_fn_s", "kernel_s"):
        assert row[key] > 0
    assert row["kernel_fn_ratio"] == pytest.approx(row["kernel_fn_s"] / row["caller_jit_s"])
    table = bench.markdown({"machine": MACHINE, "rows": [row], "slopes": {}})
    assert "Per-call overhead of the API" in table and "| mlp | 4 | pntk | structured |" in table


def test_timing_interleaves_every_implementation_of_a_case():
    base = dict(section="models", model="mlp", n=3, width=4, o=2, kind="pntk")
    cases = [{**base, "implementation": impl} for impl in ("jacobian", "structured")]
    timings = bench.run_timing(cases, rounds=5, max_seconds=60)
    assert [t["rounds"] for t in timings] == [5, 5]  # each ran once per round, in turn
    assert bench._group_key(cases[0]) == bench._group_key(cases[1])


def test_interleave_reverses_the_order_every_other_round():
    from benchmarks import harness

    seen = []
    calls = {name: (lambda name=name: seen.append(name)) for name in "abc"}
    times = harness.interleave(calls, 3)
    assert "".join(seen) == "abccbaabc" and all(len(t) == 3 for t in times.values())


def test_slopes_fit_a_known_power_law():
    rows = [
        {"section": "scale_n", "implementation": "jacobian", "n": n, "warm_median_s": 3e-3 * n**2}
        for n in (8, 16, 32, 64)
    ]
    got = bench.slopes(rows)["jacobian"]["n"]
    assert got["slope"] == pytest.approx(2.0) and got["slope_top_half"] == pytest.approx(2.0)


def test_scale_bench_row_streams_a_correct_kernel(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_scale.ROWS, "tiny", dict(kind="pntk", n=70, block_size=32))
    row = bench_scale.run_row("tiny", tmp_path)
    assert row["shape"] == [70, 70] and row["spot_check_max_rel_err"] < 1e-10
    assert np.isfinite(row["seconds"])
    assert "tiny" in bench_scale.markdown_table([row])


def test_plots_draw_every_computed_series(tmp_path):
    rows = [
        {"section": "scale_n", "implementation": impl, "n": n, "warm_median_s": c * n}
        for c, impl in enumerate(bench.IMPLS[:3], start=1)
        for n in (8, 16, 32)
    ]
    rows += [
        {"section": "models", "model": "mlp", "kind": "entk", "implementation": impl,
         "warm_median_s": 0.1}
        for impl in bench.IMPLS[:3]
    ]  # fmt: skip
    result = {"rows": rows, "slopes": bench.slopes(rows)}
    files = bench.plot(result, tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in files] == ["scaling.png", "implementations.png"]
    models_only = [r for r in rows if r["section"] == "models"]  # quick: no sweeps, no panels
    (tmp_path / "q").mkdir()
    files_quick = bench.plot({"rows": models_only, "slopes": {}}, tmp_path / "q")
    assert [p.rsplit("/", 1)[-1] for p in files_quick] == ["implementations.png"]
    import matplotlib.image

    for path in files:
        img = matplotlib.image.imread(path)
        assert img.shape[0] > 100 and img.std() > 0  # a drawn figure, not a blank canvas


@pytest.mark.slow
def test_scale_bench_worker_row_writes_its_tables(tmp_path, monkeypatch):
    row = dict(kind="pntk", n=80, block_size=40, workers=(1, 2))
    monkeypatch.setitem(bench_scale.WORKER_ROWS, "tiny_workers", row)
    monkeypatch.setattr(bench_scale, "ALL_ROWS", (*bench_scale.ALL_ROWS, "tiny_workers"))
    bench_scale.run_scale_bench(tmp_path, ("tiny_workers",))
    import json

    scaling = json.loads((tmp_path / "bench_scale.json").read_text())["scaling"]
    assert [r["n_workers"] for r in scaling] == [1, 2]
    assert all(r["blocks"] == 3 and r["spot_check_max_rel_err"] < 1e-10 for r in scaling)
    assert scaling[0]["speedup"] == 1.0
    md = (tmp_path / "bench_scale.md").read_text()
    assert "| tiny_workers | 80 | 1 × 1 | 3 |" in md and "| tiny_workers | 80 | 2 × 1 | 3 |" in md
    assert not (tmp_path / "kernels").exists()  # the work directory is removed


def test_conv_nets_rows_time_every_kind_against_the_entk(monkeypatch):
    """The conv-net bench on a tiny conv net: a row per kind, the eNTK's own speed-up 1,
    the predicted time the FLOPs over the run's GEMM rate, and a table with every row."""
    import jax
    import jax.numpy as jnp

    from benchmarks import conv_nets

    def tiny(dtype):
        w = {"c": jnp.ones((3, 3, 1, 2), dtype) / 3, "d": jnp.ones((2 * 16, 3), dtype) / 8}

        def f(p, x):
            h = jax.lax.conv_general_dilated(
                x, p["c"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return jnp.tanh(h).reshape(x.shape[0], -1) @ p["d"]

        x = jax.random.normal(jax.random.key(0), (4, 4, 4, 1), dtype)
        return f, w, x, {}, 2

    monkeypatch.setitem(conv_nets.MODELS, "tiny", (tiny, ("float32",)))
    monkeypatch.setattr(conv_nets, "gemm_rate", lambda dtype: 10.0)
    monkeypatch.setattr(conv_nets, "copy_rate", lambda dtype: 5.0)
    rows = conv_nets.measure("tiny", "float32", rounds=2)
    assert [r["kind"] for r in rows] == list(conv_nets.KINDS)
    entk = rows[0]
    assert entk["speedup_over_entk"] == 1.0 and entk["flop_ratio_entk"] == 1.0
    for r in rows:
        assert r["flops"] > 0 and r["warm_min_s"] > 0 and r["batch_size"] == 2
        assert math.isclose(r["predicted_s"], r["flops"] / 1e10)
        assert math.isclose(r["speedup_over_entk"], entk["warm_min_s"] / r["warm_min_s"])
        assert r["xla_gbytes"] > 0  # two blocks of 2: both block programs, summed
    table = conv_nets.markdown(rows, {"description": "test", "jax": jax.__version__})
    assert table.count("| tiny |") == len(conv_nets.KINDS)
    monkeypatch.setitem(conv_nets.MODELS, "tiny", (lambda dt: (*tiny(dt)[:4], None), ("float32",)))
    one = conv_nets.measure("tiny", "float32", rounds=2)[0]
    assert one["xla_gbytes"] > 0 and math.isclose(one["bytes_s"], one["xla_gbytes"] / 5.0)


def test_conv_nets_gap_names_what_explains_a_miss():
    from benchmarks import conv_nets

    row = {"within_2x": False, "warm_min_s": 2.0, "predicted_s": 0.5, "xla_gbytes": 8.0}
    assert conv_nets.gap({**row, "within_2x": True, "bytes_s": 1.6}) == ""
    assert "overhead" in conv_nets.gap({**row, "warm_min_s": 0.05, "bytes_s": 1.6})
    assert "data movement: 8.0 GB" in conv_nets.gap({**row, "bytes_s": 1.6})  # 2.1 s predicted
    assert "not explained" in conv_nets.gap({**row, "bytes_s": 0.1})  # 0.6 s: 3.3x off
    assert "not explained" in conv_nets.gap({**row, "warm_min_s": 30.0, "bytes_s": 1.6})
    assert "not counted" in conv_nets.gap({**row, "bytes_s": math.nan})
