"""The claim checks on synthetic numbers: every verdict is reachable, and the thresholds are
the documented ones."""

import math

import numpy as np
import pytest

from ntk_repro import claims
from ntk_repro.claims import AGREES, DISAGREES, INCONCLUSIVE, claim_checks, fit_slope

WIDTHS = (64, 128, 256, 512, 1024)
RIDGES = (0.0, 0.01, 1.0)


def _rows(
    slope=-0.5,
    noise=0.0,
    seeds=(0, 1, 2),
    model="mlp",
    lmin_slope=-0.3,
    ridge_slopes=None,
    gap=0.0,
    disagree=0.05,
):
    """Width-sweep rows whose metrics follow power laws in width, seed noise multiplicative."""
    ridge_slopes = ridge_slopes or {r: slope for r in RIDGES}
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
            for ridge in RIDGES:
                tag = f"@ridge={ridge:g}"
                r["kr_pred_rel_diff" + tag] = law(0, ridge_slopes[ridge], 0.6)
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
    assert fit.n_seeds == 2 and fit.xs == WIDTHS
    # one seed with another exponent: the spread over seeds widens the interval
    pts2 = [(0, w, w**-0.5) for w in WIDTHS] + [(1, w, w**-0.3) for w in WIDTHS]
    fit2 = fit_slope(pts2)
    assert fit2.slope == pytest.approx(-0.4)
    assert fit2.se >= 0.1 / math.sqrt(2) * math.sqrt(2) / 2  # std(ddof=1) of {-.5,-.3}/√2 = .1
    assert fit2.interval[0] < -0.5 and fit2.interval[1] > -0.3


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
    ("lmin_slope", "verdict"),
    [(-0.3, AGREES), (0.3, DISAGREES), (-0.5, INCONCLUSIVE)],  # slower / grows / same rate
)
def test_c3_verdicts(lmin_slope, verdict):
    c = _claim(_rows(slope=-0.5, lmin_slope=lmin_slope, noise=0.01), "C3")
    assert c.verdict == verdict, c.parts
    if lmin_slope == -0.5:  # converges at λ_max's own rate: "more slowly" is not shown
        assert c.parts[-1]["verdict"] == INCONCLUSIVE


def test_c3_faster_than_lambda_max_does_not_agree():
    c = _claim(_rows(slope=-0.3, lmin_slope=-0.9, noise=0.01), "C3")
    assert c.verdict == DISAGREES and c.parts[-1]["verdict"] == DISAGREES


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


@pytest.mark.parametrize(
    ("ridge_slopes", "noise", "verdict"),
    [
        ({0.0: -0.5, 0.01: -0.5, 1.0: -0.1}, 0.01, AGREES),  # ridge 1 changes the scaling
        ({0.0: -0.5, 0.01: -0.5, 1.0: -0.5}, 0.01, DISAGREES),  # ridge changes nothing
        ({0.0: -0.5, 0.01: -0.5, 1.0: -0.5}, 0.4, INCONCLUSIVE),  # too noisy to say
    ],
)
def test_c5_verdicts(ridge_slopes, noise, verdict):
    c = _claim(_rows(ridge_slopes=ridge_slopes, noise=noise), "C5")
    assert c.verdict == verdict, c.parts
    assert c.measured["ridges"] == [0.01, 1.0]  # the ridges the rows hold, not a copy


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
        ({128: [1.5, 1.6], 1024: [1.1, 1.12]}, AGREES),  # degrades, less when wider
        ({128: [0.7, 0.72], 1024: [0.8, 0.81]}, DISAGREES),  # improves everywhere
        ({128: [1.5, 0.6], 1024: [1.1, 0.9]}, INCONCLUSIVE),  # seeds disagree
    ],
)
def test_c6_verdicts(ratios, verdict):
    c = _claim([], "C6", training=_training_rows(ratios))
    assert c.verdict == verdict, c.parts
    assert c.measured["ratio_to_init"]["128"]["0"] == 1.0


def _cost_rows(exponent, model="resnet18", base=5.0, outputs=(10, 100, 200)):
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
                    }
                )
    return rows


@pytest.mark.parametrize(
    ("exponent", "base", "verdict"),
    [
        (1.3, 1e3 / 200**1.3, AGREES),  # 10³ at O = 200, exponent 1.3
        (0.3, 5.0, DISAGREES),  # the ratio hardly grows with O
        (1.5, 0.1 / 200**0.5, DISAGREES),  # grows right, but 141× at O = 200: not ~10³
    ],
)
def test_c7_verdicts(exponent, base, verdict):
    c = _claim([], "C7", cost=_cost_rows(exponent, base=base))
    assert c.verdict == verdict, c.parts
    assert c.measured["at"]["O"] == 200


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
    assert sum("N = 10:" in s for s in labels) == 2 * 3  # time, memory, paper, per depth


def test_c7_with_a_single_output_count_is_inconclusive():
    c = _claim([], "C7", cost=_cost_rows(1.3, outputs=(10,)))
    assert c.verdict == INCONCLUSIVE


def test_every_claim_for_every_model_and_json_shape():
    rows = _rows(noise=0.01) + _rows(noise=0.01, model="cnn")
    out = claim_checks(rows, _training_rows({128: [1.5, 1.6], 1024: [1.1, 1.12]}), _cost_rows(1.3))
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
    from ntk_repro.analysis import linearized_gd

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

    from ntk_repro.analysis import layer_shares
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

    from ntk_repro.report import README_BEGIN, README_END, update_readme

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
