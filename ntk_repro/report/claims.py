"""The paper's claims C1–C7 as checks: a measured number with its spread, the expectation with
its source, and a verdict.

Each check returns a :class:`Claim` (``id``, ``model``, ``measured``, ``expected``,
``verdict``, ``rule``, ``parts``), built from summary rows (one dict per run and checkpoint,
as in ``results/summary.json``). A verdict is one of :data:`VERDICTS`:

* ``"agrees"``: the measured interval lies where the expectation says;
* ``"does not agree"``: it lies entirely outside;
* ``"inconclusive"``: it straddles a boundary, or there is too little data to say.

Intervals are 95 %: ``estimate ± t(df)·se`` with Student's t quantile for the estimate's
degrees of freedom (:func:`~ntk_repro.report.verdicts.t_interval`). A log-log slope over widths
(:func:`fit_slope`) is the pooled least-squares fit over every run, each run (width, seed) an
independent initialisation, with n − 2 degrees of freedom; a mean over k seeds has k − 1. The
only tolerances are written next to each check with their reason (theory or a sentence of the
sources); none is tuned to a result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import jax
import numpy as np

from ntk_repro.report.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    VERDICTS,
    Claim,
    Slope,
    Z,
    arms,
    at_widest,
    combine,
    cond_error,
    falls,
    fit_slope,
    mean_se,
    part,
    ridges_of,
    rounded,
    select,
    slope_in_band,
    t_interval,
    width_slope,
    within,
)

__all__ = [
    "AGREES",
    "DISAGREES",
    "INCONCLUSIVE",
    "VERDICTS",
    "Claim",
    "Slope",
    "check_c1",
    "check_c2",
    "check_c3",
    "check_c4",
    "check_c5",
    "check_c6",
    "check_c7",
    "claim_checks",
    "ridges_of",
]

# The sources quoted by the rules: the paper's abstract, and the first author's talk on it.
TALK = "the talk (M. A. Mohamadi, 'A tale of ∞-wide neural networks', MILD, September 2022)"

# C1: "roughly like width^-1/2". Theory (the talk: the difference's diagonal grows linearly
# with width, its off-diagonal stays constant): with r ∝ width^-1/2 the part of Θ that
# pNTK⊗I misses against the rest, the error is e = r/√(1 + r²), whose local log-log slope is
# −(1 − e²)/2: −1/2 for small errors, −0.3 at e = 0.63. The same margin is allowed on the
# steep side, for the next order (1/width) of the finite-width expansion, whose sign the
# theory does not fix. "Roughly" is therefore ±0.3 around −1/2; the slope the theory expects
# at the measured errors is reported beside it.
C1_SLOPE = -0.5
C1_BAND = (-0.8, -0.3)
# C5: a ridge leaves the convergence "the same" when its slope is within the C1 tolerance
# (0.3) of the ridgeless slope.
SAME_SLOPE = 0.3
# C7: the eNTK/pNTK kernel-time ratio grows like O^a with a in [1, 2] by theory: the
# Jacobian phase needs O backward passes per input instead of one (a = 1), the contraction O²
# times the products (a = 2). Reported beside the measured exponent, not judged: the sources
# say "less time", not how much less.
C7_EXPONENT = (1.0, 2.0)
# C7, downstream: "up to O((NO)³) computation". At fixed N the eNTK's solve (NO × NO) grows
# like O³; "near 3" is the band of exponents nearer 3 than the neighbouring powers 2 (a
# matrix-vector-bound cost) and 4.
C7_SOLVE_EXPONENT = (2.5, 3.5)
# C7, memory: the talk's "over 1.8 terabytes" for ResNet-18's full eNTK on CIFAR-10.
C7_CIFAR_N, C7_CIFAR_O, C7_TALK_BYTES = 50_000, 10, 1.8e12
# C7, magnitude: the paper's ~10³ at O = 200 (ResNets on V100 GPUs, its N not reported).
C7_PAPER_RATIO = 1e3
C7_PAPER_O = 200
ABSTRACT_C7 = (
    "the paper's abstract: 'the eNTK on N inputs is of size NO × NO, taking O((NO)²) memory "
    "and up to O((NO)³) computation'"
)
TALK_C7 = (
    f"{TALK}: 'Computing the Full empirical NTK of ResNet18 on Cifar-10 requires over 1.8 "
    "terabytes of RAM!' and 'Computing this approximation requires less time and memory "
    "complexity'"
)
NOT_JUDGED = "reported, not judged"


# --- the claims ---------------------------------------------------------------------------


def _interval_rule(what: str) -> str:
    return f"{what} ± t(n − 2)·se (pooled least-squares fit over widths and seeds, 95 %)"


def _mean_at(rows, key, width):
    vals = [r[key] for r in rows if r["width"] == width and r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def check_c1(rows, model, param) -> Claim:
    s = width_slope(rows, "relative_frobenius_error")
    w, vals = at_widest(rows, "relative_frobenius_error")
    narrow = min((r["width"] for r in rows), default=None)
    e_narrow = _mean_at(rows, "relative_frobenius_error", narrow)
    e_wide = float(np.mean(vals)) if vals else None
    local = [rounded(-(1 - e * e) / 2) if e is not None else None for e in (e_narrow, e_wide)]
    return Claim(
        "C1",
        model,
        "relative Frobenius error ‖Θ − pNTK⊗I‖/‖Θ‖ at initialisation falls like width^-1/2",
        {
            "value": rounded(s.slope),
            **s.as_dict(),
            "error_at_narrowest": rounded(e_narrow),
            "error_at_widest": rounded(e_wide),
            "theory_local_slope_narrowest_widest": local,
        },
        {
            "value": C1_SLOPE,
            "band": list(C1_BAND),
            "source": "theory (paper, Thm. 1; the talk: the difference's diagonal grows linearly "
            "with width, its off-diagonal stays constant). Band: e = r/√(1+r²) with r ∝ "
            "width^-1/2 has local slope −(1 − e²)/2 (−0.3 at e = 0.63); the same margin on the "
            "steep side for the 1/width terms: ±0.3 around −1/2",
        },
        slope_in_band(s, C1_BAND),
        _interval_rule("slope") + " inside the band: agrees; disjoint from it: does not agree; "
        "otherwise inconclusive",
        param,
    )


def check_c2(rows, model, param) -> Claim:
    s = width_slope(rows, "lambda_max_rel_error")
    w, vals = at_widest(rows, "lambda_max_rel_error")
    _, bound = at_widest(rows, "weyl_bound_lambda_max")
    return Claim(
        "C2",
        model,
        "λ_max is well approximated and its relative error converges with width",
        {
            "value": rounded(s.slope),
            **s.as_dict(),
            "lambda_max_rel_error_at_widest": rounded(np.mean(vals) if vals else None),
            "weyl_bound_at_widest": rounded(np.mean(bound) if bound else None),
        },
        {
            "value": "slope < 0",
            "source": f"{TALK}: the λ_max bound is 'just a triangle inequality based on the "
            "previous result' (Weyl: |Δλ_max| ≤ ‖Θ − pNTK⊗I‖₂, which falls with the "
            "Frobenius error)",
        },
        falls(s),
        _interval_rule("slope of the λ_max relative error vs width")
        + " below 0: agrees; above 0: does not agree; containing 0: inconclusive",
        param,
    )


def check_c3(rows, model, param) -> Claim:
    s_min = width_slope(rows, "lambda_min_rel_error")
    s_cond = width_slope(rows, cond_error)
    s_max = width_slope(rows, "lambda_max_rel_error")
    parts = [
        part(
            "λ_min relative error falls", falls(s_min), "slope interval below 0", **s_min.as_dict()
        ),
        part(
            "condition-number relative error |κ_pNTK/κ_eNTK − 1| falls",
            falls(s_cond),
            "slope interval below 0",
            **s_cond.as_dict(),
        ),
    ]
    ratio = s_min.slope / s_max.slope if s_max.slope else math.nan
    return Claim(
        "C3",
        model,
        "λ_min and the condition number converge too, empirically (no bound is proven)",
        {
            "value": rounded(s_min.slope),
            "slope_lambda_min": s_min.as_dict(),
            "slope_cond": s_cond.as_dict(),
            "slope_lambda_max": rounded(s_max.slope),
            "rate_vs_lambda_max": rounded(ratio),  # reported, never judged
        },
        {
            "value": "slopes < 0",
            "source": f"{TALK}: 'we could not come up with a similar bound for min eigenvalue "
            "and correspondingly the condition number, but empirical evaluations suggest that "
            "such a bound exists!' (nothing is said of the rate)",
        },
        combine(p["verdict"] for p in parts),
        "both parts agree: agrees; any part does not: does not agree. "
        + _interval_rule("each slope")
        + ". The rate against λ_max's (rate_vs_lambda_max) is reported, not judged",
        param,
        parts,
    )


def _gap_check(rows: Sequence[dict], tag: str) -> tuple[str, dict]:
    """Accuracy gap eNTK − pNTK at the widest width against its paired binomial error:
    ``se = sqrt(disagree / M)`` per seed (disagree = the fraction of test points whose
    predicted classes differ), combined over seeds as ``sqrt(mean(disagree) / (M·k))``; the
    normal quantile (a count over M test points, not an estimate from a few seeds)."""
    w, gaps = None, []
    if rows:
        w = max(r["width"] for r in rows)
    wide = [r for r in rows if r["width"] == w]
    dis, m = [], None
    for r in wide:
        a, b = r.get("kr_acc_entk" + tag), r.get("kr_acc_pntk" + tag)
        if a is None or b is None:
            continue
        gaps.append(a - b)
        dis.append(r.get("kr_argmax_disagree" + tag))
        m = r.get("n_test")
    if not gaps or m is None or any(d is None for d in dis):
        return INCONCLUSIVE, {"width": w, "gap": None}
    gap = float(np.mean(gaps))
    se = math.sqrt(max(float(np.mean(dis)), 1.0 / m) / (m * len(gaps)))
    verdict = AGREES if abs(gap) <= Z * se else DISAGREES
    return verdict, {"width": w, "gap": rounded(gap), "se": rounded(se), "n_seeds": len(gaps)}


def check_c4(rows, model, param) -> Claim:
    tag = "@ridge=0"
    s = width_slope(rows, "kr_pred_rel_diff" + tag)
    gap_v, gap = _gap_check(rows, tag)
    s_lin = width_slope(rows, "lin_pred_rel_diff")
    parts = [
        part(
            "ridge-0 prediction difference falls", falls(s), "slope interval below 0", **s.as_dict()
        ),
        part(
            "accuracy gap at the widest width is within noise",
            gap_v,
            f"|gap| ≤ {Z:.3g}·se (paired binomial se, normal quantile)",
            **gap,
        ),
        part(
            "linearised-network predictions f0 + Θ*Θ⁻¹(Y − f0) agree more with width",
            falls(s_lin),
            "slope interval below 0",
            **s_lin.as_dict(),
        ),
    ]
    return Claim(
        "C4",
        model,
        "ridgeless kernel-regression predictions with the pNTK approach those with the eNTK",
        {
            "value": rounded(s.slope),
            **s.as_dict(),
            "accuracy_gap_at_widest": gap.get("gap"),
            "slope_linearized": rounded(s_lin.slope),
        },
        {
            "value": "slope < 0 and accuracy gap → 0",
            "source": "paper (Thm.: ridgeless predictions converge; the kernel's scale cancels "
            "in K*K⁻¹)",
        },
        combine(p["verdict"] for p in parts),
        "every part agrees: agrees; any part does not: does not agree. "
        + _interval_rule("each slope"),
        param,
        parts,
    )


# C5's arms. The talk's setting decides the verdict; the two others are our finding.
TALK_ARM = "unscaled_ridge"
RIDGE_ARMS = {
    TALK_ARM: "the talk's setting (pNTK of Σₒ fₒ without 1/√O, one λ = r·mean diag Θ for both)",
    "ridge": "relative ridge (each kernel's own λ = r·mean diag)",
    "abs_ridge": "absolute ridge with our scaled pNTK (one λ = r·mean diag Θ for both kernels)",
}
FINDING_ARMS = ("ridge", "abs_ridge")
TALK_C5 = (
    f"{TALK}, the kernel-regression slide: 'Note: This approximation will not hold if there is "
    "any regularization (ridge) in the kernel regression! :(' and, beside it, 'Note that we are "
    "not scaling the function values anymore!'"
)


def _breaks(s: Slope, d: float, se: float, df: float) -> str:
    """Our finding at one ridge of a scale-matched arm: the ridge breaks the agreement when
    the prediction difference stops falling with width (slope interval above 0) or falls
    significantly more slowly than without ridge (the difference's interval above 0); it
    holds the same way when the slope interval is below 0 and the slowdown's interval ends
    below the C1 tolerance."""
    lo, hi = t_interval(d, se, df)
    if not (math.isfinite(lo) and math.isfinite(s.se)):
        return "unclear"
    if falls(s) == DISAGREES or lo > 0:
        return "breaks"
    if falls(s) == AGREES and hi < SAME_SLOPE:
        return "holds"
    return "unclear"


def _finding_arm(rows, arm: str, ridges, s0: Slope, widest0) -> tuple[str, list[dict]]:
    """One scale-matched arm (relative, or absolute with the scaled pNTK), reported as our
    finding beside the verdict: does the agreement hold at every ridge?"""
    parts, outcomes = [], []
    for ridge in ridges:
        key = f"kr_pred_rel_diff@{arm}={ridge:g}"
        s = width_slope(rows, key)
        if not s.xs:
            continue
        d, se, df = s.minus(s0)
        outcome = _breaks(s, d, se, df)
        outcomes.append(outcome)
        w, vals = at_widest(rows, key)
        gap_v, gap = _gap_check(rows, f"@{arm}={ridge:g}")
        parts.append(
            part(
                f"finding: {RIDGE_ARMS[arm]}, r = {ridge:g}",
                NOT_JUDGED,
                "our finding, not a verdict on the talk (it removes the talk's scale mismatch). "
                "Breaks: slope interval above 0 or slope − slope₀ interval above 0; holds: slope "
                f"interval below 0 and slope − slope₀ interval below {SAME_SLOPE}",
                arm=arm,
                ridge=ridge,
                finding=outcome,
                **s.as_dict(),
                slope_minus_ridge0=rounded(d),
                slope_minus_ridge0_interval=[rounded(v) for v in t_interval(d, se, df)],
                value_at_widest=rounded(np.mean(vals) if vals else None),
                value_at_widest_ridge0=rounded(widest0),
                accuracy_gap=gap.get("gap"),
                accuracy_gap_within_noise=gap_v,
            )
        )
    if outcomes and all(o == "holds" for o in outcomes):
        return "the agreement holds at every ridge", parts
    if "breaks" in outcomes:
        return "some ridge breaks the agreement", parts
    return "unclear", parts


def _paired_at_widest(rows, key: str, minus: str) -> tuple[float, tuple[float, float], int]:
    """``key − minus`` per seed at the widest width: mean, its t interval (k − 1 df over k
    seeds) and k."""
    w, _ = at_widest(rows, key)
    diffs = [
        r[key] - r[minus]
        for r in rows
        if r["width"] == w and r.get(key) is not None and r.get(minus) is not None
    ]
    mu, se, df = mean_se(diffs)
    return mu, t_interval(mu, se, df), len(diffs)


def _talk_part(rows, ridge: float, s0: Slope) -> dict | None:
    """C5 at one ridge in the talk's setting. The unscaled pNTK has the effective ridge λ/O
    against Θ's λ, so where pNTK⊗I ≈ Θ the difference cannot fall below the floor
    f = ‖pred_Θ(λ/O) − pred_Θ(λ)‖/‖pred_Θ(λ)‖ (each run's own eNTK). "Will not hold" agrees
    when the difference stops converging: its slope over width is flatter than the
    ridgeless slope by more than the C1 tolerance (slope − slope₀ interval above 0.3), or
    the floor is within reach of these widths (f − d₀ above 0, d₀ the ridgeless difference
    the widest width leaves) and the difference sits on or above it (d − f not below 0). It
    does not agree when, with the floor within reach, the difference falls below it (d − f
    interval below 0) while converging as without ridge (slope interval below 0, slope −
    slope₀ below 0.3). A floor below d₀ is not reached by these widths: inconclusive."""
    tag = f"@{TALK_ARM}={ridge:g}"
    key, floor_key = "kr_pred_rel_diff" + tag, "kr_floor" + tag
    s = width_slope(rows, key)
    if not s.xs:
        return None
    d, se, df = s.minus(s0)
    flat_lo, flat_hi = t_interval(d, se, df)
    w, vals = at_widest(rows, key)
    _, floors = at_widest(rows, floor_key)
    _, vals0 = at_widest(rows, "kr_pred_rel_diff@ridge=0")
    above, above_iv, k = _paired_at_widest(rows, key, floor_key)
    reach, reach_iv, _ = _paired_at_widest(rows, floor_key, "kr_pred_rel_diff@ridge=0")
    flatter = math.isfinite(flat_lo) and flat_lo > SAME_SLOPE
    reached = math.isfinite(reach_iv[0]) and reach_iv[0] > 0
    on_floor = math.isfinite(above_iv[1]) and above_iv[1] >= 0
    below_floor = math.isfinite(above_iv[1]) and above_iv[1] < 0
    converging = falls(s) == AGREES and math.isfinite(flat_hi) and flat_hi < SAME_SLOPE
    if flatter or (reached and on_floor):
        verdict = AGREES
    elif reached and below_floor and converging:
        verdict = DISAGREES
    else:
        verdict = INCONCLUSIVE
    if flatter:
        why = "the difference flattens: slope − slope₀ above the C1 tolerance"
    elif reached and on_floor:
        why = "the difference sits on or above the floor it cannot go below"
    elif verdict == DISAGREES:
        why = "the difference falls below the floor while converging as without ridge"
    elif not reached:
        why = "the floor is below the ridgeless difference at the widest width: not reached"
    else:
        why = "the intervals straddle the boundaries"
    gap_v, gap = _gap_check(rows, tag)
    return part(
        f"the talk's setting, r = {ridge:g}",
        verdict,
        "agrees: slope − slope₀ interval above "
        f"{SAME_SLOPE} (C1 tolerance), or floor − d₀ interval above 0 and d − floor interval "
        "not below 0 (paired over seeds at the widest width, t with k − 1 df); does not "
        "agree: floor − d₀ above 0, d − floor interval below 0, slope interval below 0 and "
        f"slope − slope₀ interval below {SAME_SLOPE}; otherwise inconclusive",
        arm=TALK_ARM,
        ridge=ridge,
        why=why,
        **s.as_dict(),
        slope_minus_ridge0=rounded(d),
        slope_minus_ridge0_interval=[rounded(flat_lo), rounded(flat_hi)],
        width=w,
        value_at_widest=rounded(np.mean(vals) if vals else None),
        floor_at_widest=rounded(np.mean(floors) if floors else None),
        value_at_widest_ridge0=rounded(np.mean(vals0) if vals0 else None),
        value_minus_floor_interval=[rounded(v) for v in above_iv],
        floor_minus_ridge0_interval=[rounded(v) for v in reach_iv],
        n_seeds_at_widest=k,
        accuracy_gap=gap.get("gap"),
        accuracy_gap_within_noise=gap_v,
    )


def check_c5(rows, model, param) -> Claim:
    ridges = [r for r in ridges_of(rows) if r > 0]
    s0 = width_slope(rows, "kr_pred_rel_diff@ridge=0")
    _, v0 = at_widest(rows, "kr_pred_rel_diff@ridge=0")
    widest0 = float(np.mean(v0)) if v0 else None
    talk = [p for p in (_talk_part(rows, r, s0) for r in ridges) if p is not None]
    verdicts = [p["verdict"] for p in talk]
    if DISAGREES in verdicts:
        verdict = DISAGREES
    elif AGREES in verdicts:
        verdict = AGREES
    else:
        verdict = INCONCLUSIVE
    findings, finding_parts = {}, []
    for arm in FINDING_ARMS:
        findings[arm], arm_parts = _finding_arm(rows, arm, ridges, s0, widest0)
        finding_parts += arm_parts
    _, scale = at_widest(rows, "pntk_diag_scale")
    return Claim(
        "C5",
        model,
        "with a ridge the pNTK/eNTK agreement of kernel regression does not hold (the talk's "
        "setting: the pNTK of Σₒ fₒ unscaled, one ridge for both kernels)",
        {
            "value": [f"r = {p['ridge']:g}" for p in talk if p["verdict"] == AGREES],
            "ridges": ridges,
            "slope_ridge0": rounded(s0.slope),
            "value_at_widest_ridge0": rounded(widest0),
            "talk_arm": {
                f"{p['ridge']:g}": {
                    "slope": p["slope"],
                    "value_at_widest": p["value_at_widest"],
                    "floor_at_widest": p["floor_at_widest"],
                    "verdict": p["verdict"],
                }
                for p in talk
            },
            "finding": findings,
            "pntk_diag_scale_at_widest": rounded(np.mean(scale) if scale else None),
        },
        {
            "value": "in the talk's setting some ridge stops the convergence: the prediction "
            "difference flattens, or levels off at the floor ‖pred_Θ(λ/O) − pred_Θ(λ)‖ > 0",
            "source": TALK_C5 + ". Unscaled, the pNTK is O times ours, so one λ gives it the "
            "effective ridge λ/O (ridgeless regression does not see a kernel's scale)",
        },
        verdict,
        "the talk's setting decides (the talk: 'This approximation will not hold if there is "
        "any regularization (ridge) in the kernel regression!', beside 'Note that we are not "
        "scaling the function values anymore!'): any ridge does not agree: does not agree; "
        "otherwise any ridge agrees: agrees; otherwise inconclusive. "
        + _interval_rule("each slope")
        + ". The relative and scaled-absolute arms are our finding, reported beside it "
        "(not judged)",
        param,
        talk + finding_parts,
    )


def _ratios_to_init(rows) -> dict:
    """``{width: {epoch: [error / error at init, one per seed]}}`` of training runs."""
    runs: dict = defaultdict(dict)
    for r in rows:
        if r.get("relative_frobenius_error") is not None:
            runs[(r["width"], r.get("seed"))][r["epoch"]] = r["relative_frobenius_error"]
    ratios: dict = defaultdict(lambda: defaultdict(list))
    for (w, _), by_epoch in runs.items():
        if 0 in by_epoch:
            for e, v in by_epoch.items():
                ratios[w][e].append(v / by_epoch[0])
    return ratios


def _grows(width, ratios: dict, mu: float, se: float, df: int) -> dict:
    """C6 at one width: the last checkpoint's error ratio ``mu ± t(df)·se`` is above 1."""
    last = max(ratios)
    return part(
        f"width {width}: grows from init to epoch {last}",
        within(*t_interval(mu, se, df), (1.0, math.inf)),
        "ratio interval (t, k − 1 df over k seeds) above 1",
        ratio=rounded(mu),
        se=rounded(se),
        df=df,
        n_seeds=len(ratios[last]),
    )


def check_c6(rows, model, param) -> Claim:
    """From the training runs: the error at each checkpoint over the error at init."""
    ratios = _ratios_to_init(select(rows, model, param, epoch=None))
    widths = sorted(ratios)
    per_width = {
        str(w): {str(e): rounded(np.mean(v)) for e, v in sorted(ratios[w].items())} for w in widths
    }
    finals = {w: mean_se(ratios[w][max(ratios[w])]) for w in widths}
    parts = [_grows(w, ratios[w], *finals[w]) for w in widths]
    if len(widths) >= 2:
        (a, sa, da), (b, sb, db) = finals[widths[0]], finals[widths[-1]]
        d, se = a - b, math.hypot(sa, sb)
        parts.append(
            part(
                f"the growth is smaller at width {widths[-1]} than at {widths[0]}",
                within(*t_interval(d, se, min(da, db)), (0.0, math.inf)),
                "ratio(narrow) − ratio(wide) > 0 with its interval (t, the smaller df)",
                difference=rounded(d),
                se=rounded(se),
            )
        )
    grow = [p["verdict"] for p in parts if p["check"].startswith("width")]
    if not parts:
        verdict = INCONCLUSIVE
    elif grow and all(v == DISAGREES for v in grow):
        verdict = DISAGREES  # it never degrades
    else:
        verdict = combine([AGREES if AGREES in grow else INCONCLUSIVE] + [parts[-1]["verdict"]])
    return Claim(
        "C6",
        model,
        "during training the approximation may degrade (error at each checkpoint vs init)",
        {"value": {str(w): rounded(finals[w][0]) for w in widths}, "ratio_to_init": per_width},
        {
            "value": "ratio > 1 at some width, less at the largest width",
            "source": "paper ('may degrade'); NTK theory: wider networks move less (lazy)",
        },
        verdict,
        "it grows at some width and less at the widest: agrees; it falls at every width: does "
        "not agree; otherwise inconclusive",
        param,
        parts,
    )


def _cost_groups(rows) -> dict:
    """Timed rows by ``(depth, width, N)`` (N: the points timed, ``n_cost``), then by O: a
    group's rows differ only in O and seed, so runs at another N are never pooled."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("time_entk_s") and r.get("time_pntk_s") and r.get("num_outputs"):
            key = (r.get("depth"), r.get("width"), r.get("n_cost"))
            groups[key][int(r["num_outputs"])].append(r)
    return groups


def _cost_table(depth, width, n, by_o: dict) -> list[dict]:
    """Per O: median warm times and the eNTK/pNTK ratios of time, of the kernel arrays' bytes
    and of XLA's compiled memory."""
    table = []
    for o, rs in sorted(by_o.items()):
        tr = [r["time_entk_s"] / r["time_pntk_s"] for r in rs]
        ar = [
            r["array_bytes_entk"] / r["array_bytes_pntk"]
            for r in rs
            if r.get("array_bytes_entk") and r.get("array_bytes_pntk")
        ]
        mr = [
            r["kernel_bytes_entk"] / r["kernel_bytes_pntk"]
            for r in rs
            if r.get("kernel_bytes_entk") and r.get("kernel_bytes_pntk")
        ]
        table.append(
            {
                "depth": depth,
                "width": width,
                "N": n,
                "O": o,
                "time_entk_s": rounded(np.median([r["time_entk_s"] for r in rs])),
                "time_pntk_s": rounded(np.median([r["time_pntk_s"] for r in rs])),
                "time_ratio": rounded(np.median(tr)),
                "array_bytes_entk": rs[0].get("array_bytes_entk"),
                "array_bytes_pntk": rs[0].get("array_bytes_pntk"),
                "array_bytes_ratio": rounded(np.median(ar), 8) if ar else None,
                "compiled_memory_ratio": rounded(np.median(mr)) if mr else None,
                "implementation": rs[0].get("implementation_entk"),
            }
        )
    return table


def _memory_part(where: str, table: list[dict]) -> dict:
    """The kernels' memory, "O((NO)²)" against the pNTK's N²: the eNTK array's bytes over the
    pNTK array's must be O² exactly at every O (same dtype, [N, N, O, O] against [N, N])."""
    got = {str(t["O"]): t["array_bytes_ratio"] for t in table if t["array_bytes_ratio"]}
    if not got:
        verdict = INCONCLUSIVE
    else:
        exact = all(v == int(o) ** 2 for o, v in got.items())
        verdict = AGREES if exact else DISAGREES
    return part(
        f"{where}: memory, eNTK [N, N, O, O] over pNTK [N, N] bytes = O²",
        verdict,
        "the arrays' bytes: ratio = O² exactly at every O: agrees; otherwise does not agree",
        array_bytes_ratio=got,
        expected={str(t["O"]): t["O"] ** 2 for t in table},
        compiled_memory_ratio_not_judged={
            str(t["O"]): t["compiled_memory_ratio"] for t in table if t["compiled_memory_ratio"]
        },
    )


def _terabytes_part(table: list[dict]) -> dict:
    """The talk's "over 1.8 terabytes", recomputed: the eNTK's bytes per entry from the
    measured arrays (bytes / N²O² in their dtype), then N = 50,000, O = 10 in float64."""
    per_entry = {
        t["array_bytes_entk"] / (t["N"] ** 2 * t["O"] ** 2)
        for t in table
        if t.get("array_bytes_entk") and t.get("N")
    }
    rows_ = C7_CIFAR_N * C7_CIFAR_O
    total = rows_**2 * 8
    formula_holds = len(per_entry) == 1 and next(iter(per_entry)) in (2, 4, 8)
    if not per_entry:
        verdict = INCONCLUSIVE
    else:
        verdict = AGREES if formula_holds and total > C7_TALK_BYTES else DISAGREES
    arithmetic = (
        f"N·O = {C7_CIFAR_N:,} × {C7_CIFAR_O} = {rows_:,} rows; ({rows_:.1e})² = {rows_**2:.2e} "
        f"entries × 8 bytes (float64) = {total:.2e} bytes = {total / 1e12:.2f} TB = "
        f"{total / 2**40:.2f} TiB"
    )
    return part(
        "memory: ResNet-18's full eNTK on CIFAR-10, the talk's 'over 1.8 terabytes'",
        verdict,
        "bytes = N²O² × bytes per entry (the measured arrays hold exactly that) at N = 50,000, "
        "O = 10, float64; over 1.8e12 bytes: agrees",
        bytes_per_entry_measured=sorted(per_entry),
        arithmetic=arithmetic,
        bytes=total,
        tib=rounded(total / 2**40),
    )


def _solve_points(rows, kind: str) -> list[tuple]:
    """``(run, O', fastest repeat)`` of the timed solves (``solve_times_<kind>_s@O=o``): the
    fastest of the repeats, since timing noise only adds."""
    pts = []
    prefix = f"solve_times_{kind}_s@O="
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k.startswith(prefix) and v:
                pts.append((i, int(k[len(prefix) :]), float(min(v))))
    return pts


def _solve_part(rows) -> dict:
    """ "Up to O((NO)³) computation": the kernel-regression solve with the eNTK (NO × NO)
    grows like O³ at fixed N; the pNTK's (N × N) does not grow with O but through its O
    right-hand sides."""
    timed_rows = [r for r in rows if any(k.startswith("solve_times_entk_s@") for k in r)]
    pe, pp = _solve_points(timed_rows, "entk"), _solve_points(timed_rows, "pntk")
    if len({o for _, o, _ in pe}) < 3:
        return part(
            "downstream: the eNTK's kernel-regression solve grows like O³ at fixed N",
            INCONCLUSIVE,
            "needs solve timings at three O or more (kernel.solve_outputs)",
        )
    se, sp = fit_slope(pe), fit_slope(pp)
    ns = sorted({r.get("solve_n") for r in timed_rows})
    top = max(o for _, o, _ in pe)
    te = min(t for _, o, t in pe if o == top)
    tp = min((t for _, o, t in pp if o == top), default=None)
    return part(
        "downstream: the eNTK's kernel-regression solve grows like O³ at fixed N",
        slope_in_band(se, C7_SOLVE_EXPONENT),
        "exponent of the eNTK solve's time in O (fastest of the repeats per O, pooled "
        f"least-squares fit, t with n − 2 df) inside {list(C7_SOLVE_EXPONENT)}: agrees; "
        "disjoint: does not agree; otherwise inconclusive",
        N=ns[0] if len(ns) == 1 else ns,
        O=sorted({o for _, o, _ in pe}),
        exponent=rounded(se.slope),
        interval=[rounded(v) for v in se.interval],
        df=se.df,
        pntk_exponent_not_judged=rounded(sp.slope),
        time_entk_s_at_largest=rounded(te),
        time_pntk_s_at_largest=rounded(tp),
        ratio_at_largest=rounded(te / tp) if tp else None,
    )


def _kernel_time_parts(where: str, by_o: dict, table: list[dict]) -> list[dict]:
    """ "Less time": the pNTK is cheaper at every O (the repeats' ranges apart), and the
    eNTK/pNTK ratio grows with O; its exponent is reported beside the theory's [1, 2]."""
    faster, slower = [], []
    for _, rs in sorted(by_o.items()):
        e_lo = min(r.get("time_entk_s_min") or r["time_entk_s"] for r in rs)
        e_hi = max(r.get("time_entk_s_max") or r["time_entk_s"] for r in rs)
        p_lo = min(r.get("time_pntk_s_min") or r["time_pntk_s"] for r in rs)
        p_hi = max(r.get("time_pntk_s_max") or r["time_pntk_s"] for r in rs)
        faster.append(e_lo > p_hi)
        slower.append(e_hi < p_lo)
    if all(faster):
        cheaper = AGREES
    elif any(slower):
        cheaper = DISAGREES
    else:
        cheaper = INCONCLUSIVE
    out = [
        part(
            f"{where}: kernel computation, the pNTK is cheaper at every O",
            cheaper,
            "at every O the eNTK's fastest repeat is slower than the pNTK's slowest: agrees; "
            "at some O the eNTK's slowest is faster than the pNTK's fastest: does not agree; "
            "otherwise inconclusive",
            time_ratio={str(t["O"]): t["time_ratio"] for t in table},
        )
    ]
    pts = [
        (r.get("seed"), o, r["time_entk_s"] / r["time_pntk_s"])
        for o, rs in by_o.items()
        for r in rs
    ]
    if len(by_o) >= 2:
        st = fit_slope(pts)
        out.append(
            part(
                f"{where}: kernel computation, the eNTK/pNTK time ratio grows with O",
                within(*st.interval, (0.0, math.inf)),
                "exponent interval (t, n − 2 df) above 0: agrees; below 0: does not agree; "
                "otherwise inconclusive. The exponent is reported beside the theory's "
                f"{list(C7_EXPONENT)} (Jacobian phase O¹, contraction O²), not judged",
                **st.as_dict(),
                theory_exponent=list(C7_EXPONENT),
            )
        )
    return out


def _magnitude_part(model: str, table: list[dict]) -> dict:
    """C7's magnitude, the paper's ~10³× at O = 200: comparable only at the paper's N and
    hardware class, neither of which a CPU run has; always inconclusive here, with why."""
    top = max(table, key=lambda t: (t["O"], t["N"] or 0), default=None)
    device = jax.default_backend()
    reason = (
        f"the paper's ~{C7_PAPER_RATIO:g}× is for ResNets at O = {C7_PAPER_O} on V100 GPUs, at "
        "an N it does not report; the ratio moves from O¹ to O² as N grows and depends on "
        f"the hardware's FLOP rates, so it is comparable only at the same N and hardware. "
    )
    if top is not None:
        reason += (
            f"Here: {model} on {device.upper()}, largest timed O = {top['O']} at N = "
            f"{top['N']}, ratio {top['time_ratio']}"
        )
    return part(
        "magnitude: the paper's ~10³× at O = 200",
        INCONCLUSIVE,
        "not comparable on this hardware and N (see reason)",
        judged=False,
        reason=reason,
    )


def check_c7(rows, model, param) -> Claim:
    """From the cost runs, what the sources state: the kernels' memory (O² exactly, from the
    arrays, and the talk's 1.8 terabytes recomputed), the downstream solve (O³ at fixed N)
    and the kernel computation (cheaper at every O, more so as O grows). The magnitude
    against the paper's figure is reported beside them. How well the library's FLOP model
    predicts the times is not a claim of the paper: see
    :func:`ntk_repro.report.tables.cost_model`."""
    parts, table = [], []
    mine = select(rows, model, param)
    groups = _cost_groups(mine)
    for depth, width, n in sorted(groups, key=lambda k: tuple(v or 0 for v in k)):
        by_o = groups[depth, width, n]
        where = f"depth {depth}, width {width}, N = {n}"
        rows_o = _cost_table(depth, width, n, by_o)
        table += rows_o
        parts.append(_memory_part(where, rows_o))
        parts += _kernel_time_parts(where, by_o, rows_o)
    if table:
        parts.append(_terabytes_part(table))
    parts.append(_solve_part(mine))
    judged = [p["verdict"] for p in parts]
    if not any("grows with O" in p["check"] for p in parts):
        judged.append(INCONCLUSIVE)  # no O sweep: whether the saving grows is unknown
    verdict = combine(judged)
    parts.append(_magnitude_part(model, table))
    largest = max(table, key=lambda t: (t["O"], t["depth"] or 0), default=None)
    solve = next(p for p in parts if p["check"].startswith("downstream"))
    tb = next((p for p in parts if "terabytes" in p["check"]), {})
    return Claim(
        "C7",
        model,
        "the pNTK is far cheaper: O² less memory, an N×N instead of an NO×NO solve (O³), less "
        "kernel time",
        {
            "value": largest["time_ratio"] if largest else None,
            "at": largest,
            "memory_ratio_is_O2": all(
                p["verdict"] == AGREES for p in parts if p["check"].endswith("= O²")
            ),
            "terabytes_arithmetic": tb.get("arithmetic"),
            "solve_exponent": solve.get("exponent"),
            "solve_exponent_interval": solve.get("interval"),
            "magnitude": INCONCLUSIVE,
            "table": table,
        },
        {
            "value": "memory ratio O² exactly; the talk's ≥ 1.8 TB; solve exponent in O in "
            f"{list(C7_SOLVE_EXPONENT)}; the pNTK cheaper at every O, the ratio growing with O "
            f"(theory's exponent {list(C7_EXPONENT)}, reported); magnitude ~10³ at O = 200",
            "source": f"{ABSTRACT_C7}; {TALK_C7}; the paper's timing figure (ResNet-18…200, "
            "O = 200, GPUs) for the magnitude",
        },
        verdict,
        "every judged part agrees: agrees; any does not: does not agree; otherwise "
        "inconclusive. Parts: memory O² (the abstract's O((NO)²) memory), the 1.8 TB "
        "arithmetic (the talk), the solve's exponent (the abstract's 'up to O((NO)³) "
        "computation'), the kernel time (the talk's 'less time'). The magnitude part is "
        "reported beside them (inconclusive off the paper's N and hardware); the FLOP model "
        "is not part of any verdict",
        param,
        parts,
    )


WIDTH_CLAIMS = (check_c1, check_c2, check_c3, check_c4, check_c5)


def claim_checks(
    width_rows: Sequence[dict], training_rows: Sequence[dict], cost_rows: Sequence[dict]
) -> list[Claim]:
    """Every claim for every model found: C1–C5 from the width sweep at initialisation, C6
    from the training runs, C7 from the cost runs."""
    out = []
    models = arms([*width_rows, *training_rows, *cost_rows])
    for model, param in models:
        init = select(width_rows, model, param)
        if init:
            out += [check(init, model, param) for check in WIDTH_CLAIMS]
        if select(training_rows, model, param, epoch=None):
            out.append(check_c6(training_rows, model, param))
        if select(cost_rows, model, param):
            out.append(check_c7(cost_rows, model, param))
    for c in out:  # every rule names what it rests on
        if "'" not in c.rule:
            c.rule = f"{c.rule}. Rests on: {c.expected['source']}"
    return sorted(out, key=lambda c: (c.parameterization != "ntk", c.id, _model_order(c.model)))


def _model_order(m: str) -> int:
    return {"mlp": 0, "cnn": 1, "resnet18": 2}.get(m, 9)
