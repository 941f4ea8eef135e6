"""The claim checks on synthetic numbers: every verdict is reachable, and the thresholds are
the documented ones."""

import json
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
    talk=None,
    gap=0.0,
    disagree=0.05,
):
    """Width-sweep rows whose metrics follow power laws in width, seed noise multiplicative.
    ``talk[ridge] = (slope, floor[, below[, spread]])``: the talk's arm's difference is
    ``sqrt(floor² + (0.6·(w/64)^slope)²)`` (the floor plus a converging part), or with
    ``below`` ``floor·(1 − 0.5·(w/64)^slope)`` (the floor approached from below, d < f at
    every width), with extra multiplicative noise ``spread``; its predicted floor is ``floor``
    (default: the ridgeless law, floor 1e-4)."""
    ridge_slopes = ridge_slopes or {r: slope for r in RIDGES}
    abs_ridge_slopes = abs_ridge_slopes or ridge_slopes
    talk = talk or {r: (ridge_slopes[0.0], 1e-4) for r in RIDGES if r}
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
            for ridge, (s_talk, floor, *rest) in talk.items():
                tag = f"@unscaled_ridge={ridge:g}"
                below, spread = (list(rest) + [False, 0.0][len(rest) :])[:2]
                d = floor * (1 - 0.5 * law(0, s_talk)) if below else None
                d = d if below else math.hypot(floor, law(0, s_talk, 0.6))
                r["kr_pred_rel_diff" + tag] = d * math.exp(spread * rng.standard_normal())
                r["kr_floor" + tag] = floor * math.exp(noise * rng.standard_normal())
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
TINY = {0.01: (-0.5, 1e-4), 1.0: (-0.5, 1e-4)}  # floors far below the ridgeless difference


@pytest.mark.parametrize(
    ("talk", "noise", "verdict", "breaks"),
    [
        # ridge 1 levels off at its floor 0.5, above the ridgeless difference (0.6 → 0.15);
        # ridge 0.01's floor is out of reach: not informative
        ({0.01: (-0.5, 1e-4), 1.0: (-0.5, 0.5)}, 0.01, AGREES, ["r = 1"]),
        # ridge 1 stops converging altogether (slope 0) with a reachable floor
        ({0.01: (-0.5, 1e-4), 1.0: (0.0, 0.5)}, 0.01, AGREES, ["r = 1"]),
        # the regime d < f: ridge 1 approaches its floor 0.5 from below (0.44 at the widest
        # width, within d₀ = 0.15 of it): a limit approached, not a contradiction
        ({0.01: (-0.5, 1e-4), 1.0: (-0.5, 0.5, True)}, 0.01, AGREES, ["r = 1"]),
        # both informative, both at their floors
        ({0.01: (-0.5, 0.3), 1.0: (-0.5, 0.5, True)}, 0.01, AGREES, ["r = 0.01", "r = 1"]),
        # ANY ridge: one informative ridge agrees, the other's seeds scatter (inconclusive):
        # the combined verdict does not let the one stand for all
        ({0.01: (-0.5, 0.3, False, 0.8), 1.0: (-0.5, 0.5)}, 0.01, INCONCLUSIVE, ["r = 1"]),
        # floors too small to reach at these widths, converging as without ridge
        (TINY, 0.01, INCONCLUSIVE, []),
        (TINY, 0.4, INCONCLUSIVE, []),  # and noisy
        # stops converging, but its floor is not reachable: not informative, not decisive
        ({0.01: (-0.5, 1e-4), 1.0: (0.0, 1e-4)}, 0.01, INCONCLUSIVE, []),
    ],
)
def test_c5_verdict_is_the_talks_setting(talk, noise, verdict, breaks):
    rows = _rows(talk=talk, noise=noise)
    c = _claim(rows, "C5")
    assert c.verdict == verdict, c.parts
    assert c.measured["ridges"] == [0.01, 1.0]  # the ridges the rows hold, not a copy
    assert c.measured["value"] == breaks
    judged = [p for p in c.parts if p["verdict"] != claims.NOT_JUDGED]
    assert {p["arm"] for p in judged} == {"unscaled_ridge"}
    for p in judged:  # the measured difference and the predicted floor, side by side
        assert p["value_at_widest"] > 0 and p["floor_at_widest"] > 0
        assert p["informative"] == (p["floor_at_widest"] > 0.2)
    assert "will not hold" in c.expected["source"] and "not scaling" in c.expected["source"]
    assert "our reading" in c.expected["source"] and "which we read as" in c.rule


def test_c5_does_not_agree_when_the_difference_falls_below_a_reachable_floor():
    """The floor (0.5) is above the ridgeless difference, yet the talk's arm converges like
    ridgeless to far below it (d + d₀ = 0.3 < f): the talk's mechanism is contradicted; the
    one informative ridge decides."""
    rows = _rows(talk={0.01: (-0.5, 1e-4), 1.0: (-0.5, 1e-4)}, noise=0.01)
    for r in rows:
        r["kr_floor@unscaled_ridge=1"] = 0.5
    c = _claim(rows, "C5")
    assert c.verdict == DISAGREES, c.parts
    assert c.measured["informative_ridges"] == [1.0]


def test_c5_one_informative_ridge_against_the_talk_outweighs_one_for_it():
    rows = _rows(talk={0.01: (-0.5, 0.3), 1.0: (-0.5, 1e-4)}, noise=0.01)
    for r in rows:
        r["kr_floor@unscaled_ridge=1"] = 0.5
    c = _claim(rows, "C5")
    verdicts = {p["ridge"]: p["verdict"] for p in c.parts if p["arm"] == "unscaled_ridge"}
    assert verdicts == {0.01: AGREES, 1.0: DISAGREES}
    assert c.verdict == DISAGREES


def test_c5_below_the_floor_by_less_than_the_margin_is_not_a_contradiction():
    """d < f at the widest width but d + d₀ > f: the floor is a limit (d = f ± e), so this is
    no evidence against the talk; without d clearly above d₀ it is none for it either."""
    rows = _rows(talk={0.01: (-0.5, 1e-4), 1.0: (-0.5, 1e-4)}, noise=0.01)
    for r in rows:  # d ≈ 0.15 = d₀, f = 0.25: d < f < d + d₀
        r["kr_floor@unscaled_ridge=1"] = 0.25
    c = _claim(rows, "C5")
    (p,) = [p for p in c.parts if p["arm"] == "unscaled_ridge" and p["ridge"] == 1.0]
    assert p["value_at_widest"] < p["floor_at_widest"] and p["informative"]
    assert p["verdict"] == INCONCLUSIVE and c.verdict == INCONCLUSIVE


@pytest.mark.parametrize(
    ("ridge_slopes", "abs_slopes", "finding"),
    [
        (SAME, SAME, "the agreement holds at every ridge"),
        ({0.0: -0.5, 0.01: -0.5, 1.0: -0.1}, SAME, "some ridge breaks the agreement"),
    ],
)
def test_c5_scale_matched_arms_are_a_finding_not_a_verdict(ridge_slopes, abs_slopes, finding):
    rows = _rows(ridge_slopes=ridge_slopes, abs_ridge_slopes=abs_slopes, talk=TINY, noise=0.01)
    c = _claim(rows, "C5")
    assert c.verdict == INCONCLUSIVE  # decided by the talk's arm alone
    assert c.measured["finding"]["ridge"] == finding
    found = [p for p in c.parts if p["arm"] in ("ridge", "abs_ridge")]
    assert len(found) == 4 and all(p["verdict"] == claims.NOT_JUDGED for p in found)


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


def _cost_rows(
    exponent, model="resnet18", base=5.0, outputs=(10, 100, 200), solve=3.0, bytes_exp=2.0
):
    """Cost rows whose time ratio is ``base·O^exponent`` (repeats ±1 %), whose kernel arrays'
    byte ratio is ``O^bytes_exp`` and, in the O = max run, solve times ``∝ O'^solve``."""
    rows = []
    for depth in (18, 34):
        for o in outputs:
            for seed in (0, 1):
                ratio = base * o**exponent * (1.0 + 0.01 * seed)
                r = {
                    "model": model,
                    "parameterization": "ntk",
                    "width": 16,
                    "depth": depth,
                    "seed": seed,
                    "epoch": 0,
                    "num_outputs": o,
                    "n_cost": 70,
                    "time_entk_s": 1e-3 * ratio,
                    "time_entk_s_min": 0.99e-3 * ratio,
                    "time_entk_s_max": 1.01e-3 * ratio,
                    "time_pntk_s": 1e-3,
                    "time_pntk_s_min": 0.99e-3,
                    "time_pntk_s_max": 1.01e-3,
                    "array_bytes_entk": int(4 * 70**2 * round(o**bytes_exp)),
                    "array_bytes_pntk": 4 * 70**2,
                    "kernel_bytes_entk": int(1000 * o**1.5),
                    "kernel_bytes_pntk": 1000,
                    "flops_entk": 1e9 * base * o**exponent,
                    "flops_pntk": 1e9,
                }
                if o == max(outputs) and seed == 0:
                    r["solve_n"] = 70
                    for o2 in (4, 8, 12, 16, 20):
                        t = 1e-2 * (o2 / 4) ** solve
                        r[f"solve_times_entk_s@O={o2}"] = [t * 1.02, t, t * 1.05]
                        r[f"solve_times_pntk_s@O={o2}"] = [4e-4, 4e-4, 5e-4]
                rows.append(r)
    return rows


@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({"exponent": 1.3}, AGREES),  # O² memory, cubic solve, cheaper and growing
        ({"exponent": 2.6}, AGREES),  # the kernel exponent is reported, not judged
        ({"exponent": -0.5}, DISAGREES),  # the saving shrinks with O
        ({"exponent": 1.3, "base": 1e-3}, DISAGREES),  # the pNTK is the slower one
        # "up to O((NO)³)" is an upper bound: a quadratic solve is within it and grows
        # faster than the pNTK's; a quartic one is above it; one not clearly above 1 is not
        # shown to cost more than the pNTK's
        ({"exponent": 1.3, "solve": 2.0}, AGREES),
        ({"exponent": 1.3, "solve": 4.0}, DISAGREES),
        ({"exponent": 1.3, "solve": 0.5}, INCONCLUSIVE),
        ({"exponent": 1.3, "bytes_exp": 1.0}, DISAGREES),  # memory ratio O, not O²
    ],
)
def test_c7_verdicts(kw, verdict):
    c = _claim([], "C7", cost=_cost_rows(**kw))
    assert c.verdict == verdict, [(p["check"], p["verdict"]) for p in c.parts]
    assert c.measured["at"]["O"] == 200
    magnitude = [p for p in c.parts if p["check"].startswith("magnitude")]
    assert len(magnitude) == 1 and magnitude[0]["verdict"] == INCONCLUSIVE
    assert "N =" in magnitude[0]["reason"] and "GPU" in magnitude[0]["reason"]
    # the FLOP model is in no part of the verdict
    assert not any("FLOP" in p["check"] or "flop" in json.dumps(p) for p in c.parts)


def test_c7_reports_the_talks_terabytes_at_float64_and_at_the_measured_bytes():
    c = _claim([], "C7", cost=_cost_rows(1.3))
    (tb,) = [p for p in c.parts if "terabytes" in p["check"]]
    assert tb["verdict"] == claims.NOT_JUDGED  # the talk's dtype is our inference
    assert tb["bytes"] == (50_000 * 10) ** 2 * 8 == 2e12 and tb["tib"] == pytest.approx(1.819)
    assert "500,000 rows" in tb["arithmetic"] and "1.82 TiB" in tb["arithmetic"]
    # the cost rows hold float32 arrays: 4 bytes per entry, half the float64 reading
    assert tb["bytes_per_entry_measured"] == [4.0]
    at4 = tb["at_measured_bytes_per_entry"]["4"]
    assert at4["bytes"] == 1e12 and at4["tib"] == pytest.approx(0.9095)
    assert "inference" in tb["rule"] and "1.00e+12 bytes" in c.measured["terabytes_arithmetic"]
    solve = next(p for p in c.parts if p["check"].startswith("downstream"))
    assert solve["exponent"] == pytest.approx(3.0, abs=0.05) and solve["N"] == 70
    assert solve["verdict"] == AGREES and "upper bound" in solve["rule"]


def test_c7_times_the_solve_per_n_never_pooled():
    rows = _cost_rows(1.3) + [
        dict(r, solve_n=140, n_cost=140) for r in _cost_rows(1.3, solve=4.0) if "solve_n" in r
    ]
    c = _claim([], "C7", cost=rows)
    solves = {p["N"]: p["verdict"] for p in c.parts if p["check"].startswith("downstream")}
    assert solves == {70: AGREES, 140: DISAGREES} and c.verdict == DISAGREES


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
    assert sum("N = 10:" in s for s in labels) == 2 * 3  # memory, cheaper, grows, per depth


def test_c7_with_a_single_output_count_is_inconclusive():
    c = _claim([], "C7", cost=_cost_rows(1.3, outputs=(10,)))
    assert c.verdict == INCONCLUSIVE


def test_cost_model_names_its_misses():
    from ntk_repro.report.tables import cost_model

    rows = _cost_rows(1.3)
    for r in rows:
        if r["num_outputs"] == 200:
            r["flops_entk"] *= 3  # the model predicts 3x the measured ratio here
    cm = cost_model(rows)
    assert len(cm["rows"]) == 2 * 3 * 2  # depth, O, kind
    assert len(cm["misses"]) == 2 and all("O = 200" in m for m in cm["misses"])


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
        # every rule quotes or cites what it rests on
        assert "'" in d["rule"] or "Rests on:" in d["rule"], d["rule"]


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
    """C5's arms on Θ = A⊗I exactly, with the pNTK scaled by c: ridgeless and relative
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
        # the talk's setting: where pNTK⊗I = Θ (c = 1) the unscaled pNTK (O·pNTK) with the
        # same λ is Θ at ridge λ/O: its difference is exactly the predicted floor, > 0
        talk, floor = s["kr_pred_rel_diff@unscaled_ridge=0.1"], s["kr_floor@unscaled_ridge=0.1"]
        assert floor > 1e-3
        if c == 1.0:
            assert talk == pytest.approx(floor, rel=1e-8)


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


def test_solve_timings_use_the_kernels_of_the_first_outputs():
    """The eNTK of the first O' outputs is the leading O'×O' block of the eNTK, and its pNTK
    (1/O') times that block's sum: the solve sweep at fixed N needs one kernel."""
    import jax

    import ntk
    from ntk_repro.analysis.cost import solve_cost
    from ntk_repro.models import build_model, init_model, kernel_model

    model = build_model("mlp", num_classes=4, num_outputs=6, width=16, depth=2)
    apply_fn, params, state = kernel_model(model, init_model(model, jax.random.key(0), (5,)))
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    full = np.asarray(ntk.entk(lambda p, a: apply_fn(p, a, **state), params, x))

    def first3(p, a):
        return apply_fn(p, a, **state)[:, :3]

    sub = np.asarray(ntk.entk(first3, params, x))
    np.testing.assert_allclose(full[:, :, :3, :3], sub, rtol=1e-5, atol=1e-6)
    p3 = np.asarray(ntk.pntk(first3, params, x))
    np.testing.assert_allclose(full[:, :, :3, :3].sum(axis=(2, 3)) / 3, p3, rtol=1e-5, atol=1e-6)
    out = solve_cost(full, [2, 3], repeats=2)
    assert out["solve_n"] == 7
    for kind in ("entk", "pntk"):
        for o in (2, 3):
            times = out[f"solve_times_{kind}_s@O={o}"]
            assert len(times) == 2 and all(t > 0 for t in times)
    with pytest.raises(ValueError, match="solve_outputs"):
        solve_cost(full, [7], repeats=1)


def test_cost_runs_store_the_kernel_arrays_own_bytes_and_time_the_solve_at_o_above_max():
    """array_bytes_* is the returned kernel's nbytes in its own dtype; the solve is timed in
    every run whose O is at least max(solve_outputs), not only at O = max."""
    import jax

    from ntk_repro.analysis.evalset import EvalSet
    from ntk_repro.analysis.quality import kernel_metrics
    from ntk_repro.models import build_model, init_model, kernel_model

    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    ev = EvalSet(x, np.arange(6) % 4, x[:2], np.arange(2), 4)
    for o, timed_solve in ((8, True), (3, True), (2, False)):
        model = build_model("mlp", num_classes=4, num_outputs=o, width=8, depth=1)
        apply_fn, params, _ = kernel_model(model, init_model(model, jax.random.key(0), (5,)))
        for dtype, size in (("float32", 4), ("float64", 8)):
            s = kernel_metrics(
                apply_fn,
                params,
                ev,
                measure="cost",
                dtype=dtype,
                timing_repeats=1 if dtype == "float32" else 0,
                solve_outputs=(2, 3),
            ).scalars
            assert s["array_bytes_entk"] == 6 * 6 * o * o * size, (o, dtype)
            assert s["array_bytes_pntk"] == 6 * 6 * size and s["array_dtype_entk"] == dtype
            assert ("solve_times_entk_s@O=3" in s) == timed_solve, o
