"""The claim checks on synthetic numbers: every verdict is reachable, and the thresholds are
the documented ones."""

import math

import numpy as np
import pytest

from ntk_repro.report import claims
from ntk_repro.report.claims import claim_checks
from ntk_repro.report.verdicts import AGREES, DISAGREES, INCONCLUSIVE, fit_slope

WIDTHS = (64, 128, 256, 512, 1024)
RIDGES = (0.0, 0.01, 1.0)


def _rows(
    slope=-0.5,
    noise=0.0,
    seeds=(0, 1, 2),
    model="mlp",
    lmin_slope=-0.3,
    ridge_slopes=None,
    abs_ridge_slopes=None,
    gap=0.0,
    disagree=0.05,
):
    """Width-sweep rows whose metrics follow power laws in width, seed noise multiplicative."""
    ridge_slopes = ridge_slopes or {r: slope for r in RIDGES}
    abs_ridge_slopes = abs_ridge_slopes or ridge_slopes
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for w in WIDTHS:

            def law(a, s, c=1.0, w=w):
                return c * (w / 64) ** s * math.exp(noise * rng.standard_normal())

            r = {
                "model": model,
                "parameterization": "ntk",
                "width": w,
                "seed": seed,
                "epoch": 0,
                "n_test": 100,
                "relative_frobenius_error": law(0, slope, 0.4),
                "lambda_max_rel_error": law(0, slope, 0.3),
                "lambda_min_rel_error": law(0, lmin_slope, 5.0),
                "cond_entk": 1000.0,
                "cond_pntk": 1000.0 * (1 + law(0, lmin_slope, 2.0)),
                "lin_pred_rel_diff": law(0, slope, 0.5),
            }
            arms = [("ridge", ridge, ridge_slopes[ridge]) for ridge in RIDGES]
            arms += [("abs_ridge", ridge, abs_ridge_slopes[ridge]) for ridge in RIDGES if ridge]
            for arm, ridge, s in arms:
                tag = f"@{arm}={ridge:g}"
                r["kr_pred_rel_diff" + tag] = law(0, s, 0.6)
                r["kr_acc_entk" + tag] = 0.9
                r["kr_acc_pntk" + tag] = 0.9 - gap
                r["kr_argmax_disagree" + tag] = disagree
            rows.append(r)
    return rows


def _claim(rows, cid, **kw):
    found = [
        c for c in claim_checks(rows, kw.get("training", []), kw.get("cost", [])) if c.id == cid
    ]
    assert len(found) == 1
    return found[0]


def test_fit_slope_recovers_a_power_law_and_its_spread():
    pts = [(s, w, 2.0 * w**-0.5) for s in (0, 1) for w in WIDTHS]
    fit = fit_slope(pts)
    assert fit.slope == pytest.approx(-0.5)
    assert fit.se == pytest.approx(0.0, abs=1e-9)
    assert fit.n_seeds == 2 and fit.xs == WIDTHS and fit.df == 2 * len(WIDTHS) - 2
    # the pooled fit's standard error and the t quantile for n − 2 degrees of freedom
    rng = np.random.default_rng(1)
    pts2 = [(s, w, w**-0.5 * math.exp(0.1 * rng.standard_normal())) for s in (0, 1) for w in WIDTHS]
    fit2 = fit_slope(pts2)
    lx = np.log([p[1] for p in pts2])
    ly = np.log([p[2] for p in pts2])
    b, a = np.polyfit(lx, ly, 1)
    se = math.sqrt(np.sum((ly - b * lx - a) ** 2) / (len(lx) - 2) / np.sum((lx - lx.mean()) ** 2))
    assert fit2.slope == pytest.approx(b) and fit2.se == pytest.approx(se)
    t8 = 2.306004135  # Student's t, 97.5 % quantile, 8 degrees of freedom
    assert fit2.interval == pytest.approx((b - t8 * se, b + t8 * se))
    assert len(fit2.per_seed) == 2  # kept for the record


def test_fit_slope_with_too_little_data_is_nan():
    assert math.isnan(fit_slope([(0, 64, 0.3)]).slope)
    assert math.isnan(fit_slope([(0, 64, 0.3), (0, 128, 0.2)]).se)  # two points, one seed


@pytest.mark.parametrize(
    ("slope", "noise", "verdict"),
    [
        (-0.5, 0.01, AGREES),  # the theory's rate, tight
        (-0.1, 0.01, DISAGREES),  # far too slow, tight
        (-0.3, 0.05, INCONCLUSIVE),  # on the band's edge
        (-0.5, 2.0, INCONCLUSIVE),  # the seeds disagree wildly
    ],
)
def test_c1_verdicts(slope, noise, verdict):
    c = _claim(_rows(slope=slope, noise=noise), "C1")
    assert c.verdict == verdict, c.measured
    assert c.expected["band"] == [-0.8, -0.3]


def test_c1_with_one_seed_uses_the_fit_error():
    c = _claim(_rows(seeds=(0,), noise=0.01), "C1")
    assert c.verdict == AGREES and c.measured["n_seeds"] == 1 and c.measured["se"] > 0


@pytest.mark.parametrize(
    ("slope", "noise", "verdict"),
    [(-0.5, 0.01, AGREES), (0.2, 0.01, DISAGREES), (0.0, 0.5, INCONCLUSIVE)],
)
def test_c2_verdicts(slope, noise, verdict):
    assert _claim(_rows(slope=slope, noise=noise), "C2").verdict == verdict


@pytest.mark.parametrize(
    ("lmin_slope", "noise", "verdict"),
    [(-0.3, 0.01, AGREES), (0.3, 0.01, DISAGREES), (0.0, 0.5, INCONCLUSIVE)],
)
def test_c3_verdicts(lmin_slope, noise, verdict):
    c = _claim(_rows(slope=-0.5, lmin_slope=lmin_slope, noise=noise), "C3")
    assert c.verdict == verdict, c.parts


def test_c3_judges_no_rate_against_lambda_max():
    """The sources say λ_min converges too, nothing of its rate: faster and slower than
    λ_max's both agree, and the ratio of the slopes is reported."""
    for lmin in (-0.9, -0.2):
        c = _claim(_rows(slope=-0.5, lmin_slope=lmin, noise=0.01), "C3")
        assert c.verdict == AGREES and len(c.parts) == 2
        assert c.measured["rate_vs_lambda_max"] == pytest.approx(lmin / -0.5, rel=0.05)


@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({}, AGREES),
        ({"gap": 0.2, "disagree": 0.2}, DISAGREES),  # a gap of 0.2 against se 0.026
        ({"ridge_slopes": {0.0: 0.0, 0.01: -0.5, 1.0: -0.5}, "noise": 0.3}, INCONCLUSIVE),
    ],
)
def test_c4_verdicts(kw, verdict):
    args = {"noise": 0.01, **kw}
    assert _claim(_rows(**args), "C4").verdict == verdict


def test_c4_gap_uses_the_paired_binomial_error():
    c = _claim(_rows(noise=0.01, gap=0.04, disagree=0.06), "C4")
    part = next(p for p in c.parts if p["check"].startswith("accuracy gap"))
    # se = sqrt(0.06 / (100 · 3 seeds)) = 0.0141; 0.04 > 2·se
    assert part["se"] == pytest.approx(math.sqrt(0.06 / 300), rel=1e-3)
    assert part["verdict"] == DISAGREES


SAME = {0.0: -0.5, 0.01: -0.5, 1.0: -0.5}


@pytest.mark.parametrize(
    ("ridge_slopes", "abs_slopes", "noise", "verdict", "breaks"),
    [
        # ridge 1 slows the convergence in the relative arm
        ({0.0: -0.5, 0.01: -0.5, 1.0: -0.1}, SAME, 0.01, AGREES, ["ridge r = 1"]),
        # only the absolute ridge stops the convergence
        (
            SAME,
            {0.0: -0.5, 0.01: 0.0, 1.0: 0.1},
            0.01,
            AGREES,
            ["abs_ridge r = 0.01", "abs_ridge r = 1"],
        ),
        (SAME, SAME, 0.01, DISAGREES, []),  # ridge changes nothing
        ({0.0: -0.5, 0.01: -0.9, 1.0: -0.9}, SAME, 0.01, DISAGREES, []),  # a ridge helps
        (SAME, SAME, 0.4, INCONCLUSIVE, []),  # too noisy to say
    ],
)
def test_c5_verdicts(ridge_slopes, abs_slopes, noise, verdict, breaks):
    rows = _rows(ridge_slopes=ridge_slopes, abs_ridge_slopes=abs_slopes, noise=noise)
    c = _claim(rows, "C5")
    assert c.verdict == verdict, c.parts
    assert c.measured["ridges"] == [0.01, 1.0]  # the ridges the rows hold, not a copy
    assert c.measured["value"] == breaks
    assert {p["arm"] for p in c.parts} == {"ridge", "abs_ridge"}
    for p in c.parts:  # the slope and the value at the widest width, with and without ridge
        assert p["value_at_widest"] > 0 and p["value_at_widest_ridge0"] > 0


def _training_rows(ratios):
    """Training rows: ``ratios[width][seed]`` = error at the last epoch over init."""
    rows = []
    for w, per_seed in ratios.items():
        for seed, ratio in enumerate(per_seed):
            for epoch, v in ((0, 0.3), (5, 0.3 * (1 + ratio) / 2), (10, 0.3 * ratio)):
                rows.append(
                    {
                        "model": "mlp",
                        "parameterization": "ntk",
                        "width": w,
                        "seed": seed,
                        "epoch": epoch,
                        "relative_frobenius_error": v,
                    }
                )
    return rows


@pytest.mark.parametrize(
    ("ratios", "verdict"),
    [
        ({128: [1.5, 1.6, 1.55], 1024: [1.1, 1.12, 1.11]}, AGREES),  # less when wider
        ({128: [0.7, 0.72, 0.71], 1024: [0.8, 0.81, 0.805]}, DISAGREES),  # improves everywhere
        ({128: [1.5, 0.6, 1.0], 1024: [1.1, 0.9, 1.0]}, INCONCLUSIVE),  # seeds disagree
        # two seeds: one degree of freedom, t = 12.7, too few to say it grows
        ({128: [1.5, 1.6], 1024: [1.1, 1.12]}, INCONCLUSIVE),
    ],
)
def test_c6_verdicts(ratios, verdict):
    c = _claim([], "C6", training=_training_rows(ratios))
    assert c.verdict == verdict, c.parts
    assert c.measured["ratio_to_init"]["128"]["0"] == 1.0


def _cost_rows(exponent, model="resnet18", base=5.0, outputs=(10, 100, 200), model_factor=1.0):
    """Cost rows whose time ratio is ``base·O^exponent``; the FLOP model predicts
    ``model_factor`` times that."""
    rows = []
    for depth in (18, 34):
        for o in outputs:
            for seed in (0, 1):
                ratio = base * o**exponent * (1.0 + 0.01 * seed)
                rows.append(
                    {
                        "model": model,
                        "parameterization": "ntk",
                        "width": 16,
                        "depth": depth,
                        "seed": seed,
                        "epoch": 0,
                        "num_outputs": o,
                        "time_entk_s": 1e-3 * ratio,
                        "time_pntk_s": 1e-3,
                        "kernel_bytes_entk": int(1000 * o**1.5),
                        "kernel_bytes_pntk": 1000,
                        "flops_entk": 1e9 * model_factor * base * o**exponent,
                        "flops_pntk": 1e9,
                    }
                )
    return rows


@pytest.mark.parametrize(
    ("exponent", "factor", "verdict"),
    [
        (1.3, 1.0, AGREES),  # exponent 1.3, as the FLOP model says
        (1.3, 1.5, AGREES),  # the model off by 1.5: within its factor 2
        (0.3, 1.0, DISAGREES),  # the ratio hardly grows with O
        (1.5, 3.0, DISAGREES),  # grows right, but 3x below the FLOP model's ratio
    ],
)
def test_c7_verdicts(exponent, factor, verdict):
    c = _claim([], "C7", cost=_cost_rows(exponent, model_factor=factor))
    assert c.verdict == verdict == c.measured["shape"], c.parts
    assert c.measured["at"]["O"] == 200
    magnitude = [p for p in c.parts if not p["shape"]]
    assert len(magnitude) == 1 and magnitude[0]["verdict"] == INCONCLUSIVE
    assert "N =" in magnitude[0]["reason"] and "GPU" in magnitude[0]["reason"]


def test_c7_never_pools_runs_timed_on_different_numbers_of_points():
    base = 1e3 / 200**1.3
    small = [dict(r, n_cost=10) for r in _cost_rows(1.3, base=base)]
    large = [  # ten times the points: the eNTK/pNTK ratio is 10x larger
        dict(r, n_cost=100, time_entk_s=10 * r["time_entk_s"]) for r in _cost_rows(1.3, base=base)
    ]
    c = _claim([], "C7", cost=small + large)
    rows = {(t["depth"], t["N"], t["O"]): t["time_ratio"] for t in c.measured["table"]}
    assert len(rows) == 2 * 2 * 3
    for depth in (18, 34):
        for o in (10, 100, 200):
            # the median of the two seeds' ratios (1x and 1.01x) of this N alone
            want = base * o**1.3 * 1.005
            assert rows[depth, 10, o] == pytest.approx(want, rel=1e-3)
            assert rows[depth, 100, o] == pytest.approx(10 * want, rel=1e-3)
    labels = [p["check"] for p in c.parts]
    assert sum("N = 10:" in s for s in labels) == 2 * 3  # time, memory, FLOP model, per depth


def test_c7_with_a_single_output_count_is_inconclusive():
    c = _claim([], "C7", cost=_cost_rows(1.3, outputs=(10,)))
    assert c.verdict == INCONCLUSIVE


def test_every_claim_for_every_model_and_json_shape():
    rows = _rows(noise=0.01) + _rows(noise=0.01, model="cnn")
    training = _training_rows({128: [1.5, 1.6, 1.55], 1024: [1.1, 1.12, 1.11]})
    out = claim_checks(rows, training, _cost_rows(1.3))
    got = {(c.id, c.model) for c in out}
    for cid in ("C1", "C2", "C3", "C4", "C5"):
        assert (cid, "mlp") in got and (cid, "cnn") in got
    assert ("C6", "mlp") in got and ("C7", "resnet18") in got
    for c in out:
        d = c.as_dict()
        assert set(d) >= {"id", "model", "measured", "expected", "verdict"}
        assert d["verdict"] in claims.VERDICTS
        assert d["expected"]["source"]


# --- the numbers behind the claims: linearised dynamics, layer shares, README ------------


def test_linearized_gd_is_exact_for_a_linear_model():
    """For f(θ, x) = θᵀx the network is its own linearisation: t steps of full-batch gradient
    descent on mean ½‖f − y‖² must give exactly linearized_gd's prediction."""
    from ntk_repro.analysis.linearized import linearized_gd

    rng = np.random.default_rng(0)
    n, m, d, o, lr, steps = 6, 5, 9, 3, 0.3, 40  # d > n: K = x·xᵀ is invertible
    x, xs = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    y, theta0 = rng.normal(size=(n, o)), rng.normal(size=(d, o))
    theta = theta0.copy()
    for _ in range(steps):
        theta -= lr * x.T @ (x @ theta - y) / n
    k = x @ x.T  # eNTK = (x·x') ⊗ I for this model
    eye = np.eye(o)
    k4, ks4 = k[:, :, None, None] * eye, (xs @ x.T)[:, :, None, None] * eye
    args = (y, x @ theta0, xs @ theta0)
    for kt, kst in ((k4, ks4), (k, xs @ x.T)):  # full eNTK and the [N, N] ⊗ I form
        pred = linearized_gd(kt, kst, *args, lr=lr, steps=steps)
        np.testing.assert_allclose(pred, xs @ theta, rtol=1e-9, atol=1e-10)
    # t → ∞ is kernel regression from f0: f0* + K*K⁻¹(Y − f0)
    far = linearized_gd(k, xs @ x.T, *args, lr=lr, steps=10**6)
    ref = xs @ theta0 + xs @ x.T @ np.linalg.solve(k, y - x @ theta0)
    np.testing.assert_allclose(far, ref, rtol=1e-6)


def test_layer_shares_sum_to_one_and_the_readout_has_no_error():
    import jax

    from ntk_repro.analysis.layers import layer_shares
    from ntk_repro.models import build_model, init_model, kernel_model

    model = build_model("mlp", num_classes=4, width=16, depth=2)
    variables = init_model(model, jax.random.key(0), (5,))
    apply_fn, params, state = kernel_model(model, variables)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    s = layer_shares(apply_fn, params, x, state)
    kernel = {k: v for k, v in s.items() if k.startswith("kernel_share_")}
    error = {k: v for k, v in s.items() if k.startswith("error_share_")}
    assert len(kernel) == 3 == len(error)  # Dense_0, Dense_1, the readout Dense_2
    assert sum(kernel.values()) == pytest.approx(1.0, abs=1e-6)
    assert sum(error.values()) == pytest.approx(1.0, abs=1e-6)
    # the readout's contribution is exactly (h·h'/n) ⊗ I: no part of Θ − pNTK⊗I
    assert error["error_share_Dense_2"] == pytest.approx(0.0, abs=1e-6)
    assert layer_shares(apply_fn, params, x, state, max_bytes=10) == {}


def test_readme_results_section_is_generated(tmp_path):
    import json

    from ntk_repro.report.build import README_BEGIN, README_END, update_readme

    rows = [
        {
            "model": "mlp",
            "parameterization": "ntk",
            "width": w,
            "seed": 0,
            "epoch": 0,
            "experiment": "width_init",
            "relative_frobenius_error": 0.1 * w,
        }
        for w in (1, 2)
    ]
    c1 = claims.check_c1(rows, "mlp", "ntk").as_dict()
    (tmp_path / "summary.json").write_text(json.dumps({"claims": [c1], "rows": rows}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold hand-made row\n{README_END}\ntail\n")
    update_readme(tmp_path, readme)
    text = readme.read_text()
    assert "old hand-made row" not in text and text.startswith("intro") and "tail" in text
    assert "| C1 | MLP, NTK param. |" in text and c1["verdict"] in text


def test_ridge_arms_relative_is_scale_free_absolute_is_not():
    """C5's two arms on Θ = A⊗I exactly, with the pNTK scaled by c: ridgeless and relative
    ridge predictions ignore c; an absolute ridge (one λ for both kernels) does not."""
    from ntk_repro.analysis.quality import _regression

    rng = np.random.default_rng(0)
    n, m, o, d = 12, 5, 3, 20
    x, xs = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    a, a_st = x @ x.T / d, xs @ x.T / d
    eye = np.eye(o)
    theta, theta_st = a[:, :, None, None] * eye, a_st[:, :, None, None] * eye
    y = np.eye(o)[rng.integers(0, o, n)]
    y_te = rng.integers(0, o, m)
    for c in (1.0, 3.0):
        s: dict = {}
        _regression(theta, theta_st, c * a, c * a_st, y, y_te, (0.0, 0.1), s)
        assert s["pntk_diag_scale"] == pytest.approx(c)
        assert s["kr_pred_rel_diff@ridge=0"] == pytest.approx(0.0, abs=1e-10)
        assert s["kr_pred_rel_diff@ridge=0.1"] == pytest.approx(0.0, abs=1e-10)
        if c == 1.0:
            assert s["kr_pred_rel_diff@abs_ridge=0.1"] == pytest.approx(0.0, abs=1e-10)
        else:  # λ = 0.1·mean diag Θ on a kernel 3x larger: a smaller effective ridge
            assert s["kr_pred_rel_diff@abs_ridge=0.1"] > 1e-3


def test_cost_rows_carry_the_flop_model_of_the_implementation_that_ran():
    import jax

    from ntk.kernels.estimates import implementation_estimates
    from ntk_repro.analysis.evalset import EvalSet
    from ntk_repro.analysis.quality import kernel_metrics
    from ntk_repro.models import build_model, init_model, kernel_model

    model = build_model("mlp", num_classes=4, num_outputs=8, width=16, depth=2)
    apply_fn, params, state = kernel_model(model, init_model(model, jax.random.key(0), (5,)))
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    ev = EvalSet(x, np.arange(6) % 4, x[:2], np.arange(2), 4)
    s = kernel_metrics(apply_fn, params, ev, measure="cost", dtype="float32").scalars
    assert s["num_outputs"] == 8 and s["backend"] == jax.default_backend()
    for kind, k in (("entk", 8), ("pntk", 1)):
        est = implementation_estimates(
            lambda p, a: apply_fn(p, a, **state), params, x, None, k, False
        )
        assert s[f"flops_{kind}"] == est[s[f"implementation_{kind}"]][0] > 0
    assert s["flops_entk"] > s["flops_pntk"]
