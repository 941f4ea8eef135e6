"""The report's Markdown: each claim's measured and expected text, tables, and the
sections of ``report.md``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ntk_repro.report import figures as plotting
from ntk_repro.report.tables import HEADLINE, mean_rows
from ntk_repro.report.verdicts import AGREES, DISAGREES, NOT_JUDGED, Claim


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _slope_text(d: dict) -> str:
    if d.get("slope") is None:
        return "slope n/a (fewer than two widths)"
    x = d.get("x") or []
    span = f", x {x[0]}–{x[-1]}" if x else ""
    lo, hi = d.get("interval") or (None, None)
    return (
        f"slope {_fmt(d['slope'])}, 95 % [{_fmt(lo)}, {_fmt(hi)}] ({d.get('n_seeds')} seeds{span})"
    )


def measured_text(c: Claim) -> str:
    """One line with the measured numbers of a claim check."""
    m = c.measured
    if c.id == "C1":
        lo, hi = m.get("theory_local_slope_narrowest_widest") or (None, None)
        return (
            f"{_slope_text(m)}; {_fmt(m.get('error_at_widest'))} at the widest; theory's local "
            f"slope at the measured errors {_fmt(lo)} (narrowest) to {_fmt(hi)} (widest)"
        )
    if c.id == "C2":
        return f"{_slope_text(m)}; {_fmt(m.get('lambda_max_rel_error_at_widest'))} at the widest"
    if c.id == "C3":
        return (
            f"λ_min: {_slope_text(m['slope_lambda_min'])}; κ: "
            f"{_slope_text(m['slope_cond'])}; λ_max slope {_fmt(m['slope_lambda_max'])} "
            f"(λ_min's rate / λ_max's {_fmt(m.get('rate_vs_lambda_max'))}, not judged)"
        )
    if c.id == "C4":
        return (
            f"{_slope_text(m)}; accuracy gap at the widest {_fmt(m['accuracy_gap_at_widest'])};"
            f" linearised-prediction slope {_fmt(m['slope_linearized'])}"
        )
    if c.id == "C5":
        talk = [p for p in c.parts if p.get("arm") == "unscaled_ridge"]
        arms = "; ".join(
            f"r {_fmt(p['ridge'])}: slope {_fmt(p['slope'])}, {_fmt(p['value_at_widest'])} at "
            f"the widest against the floor {_fmt(p['floor_at_widest'])} ({p['verdict']}"
            f"{'' if p.get('informative', True) else '; floor out of reach: not deciding'})"
            for p in talk
        )
        finding = m.get("finding") or {}
        return (
            f"ridge 0: slope {_fmt(m['slope_ridge0'])}, {_fmt(m.get('value_at_widest_ridge0'))} "
            f"at the widest; the talk's setting (unscaled pNTK, one λ): {arms or 'no runs'}. "
            f"Our finding (not judged), a ridge matched to each kernel's scale: relative: "
            f"{finding.get('ridge')}; absolute with the scaled pNTK: {finding.get('abs_ridge')}"
        )
    if c.id == "C6":
        return "error at the last checkpoint / at init: " + ", ".join(
            f"width {w}: {_fmt(v)}" for w, v in m["value"].items()
        )
    if c.id == "C7":
        at = m.get("at")
        if not at:
            return "no cost runs"
        mem = "O² exactly" if m.get("memory_ratio_is_O2") else "not O² at every O"
        grows = [p for p in c.parts if p["check"].endswith("grows with O")]
        kern = "; ".join(
            f"exponent {_fmt(p['slope'])}, 95 % [{_fmt(p['interval'][0])}, "
            f"{_fmt(p['interval'][1])}] ({p['verdict']})"
            for p in grows
        )
        lo, hi = m.get("solve_exponent_interval") or (None, None)
        solves = [p for p in c.parts if p["check"].startswith("downstream")]
        solve = max(solves, key=lambda p: p.get("N") or 0)["verdict"] if solves else None
        return (
            f"memory eNTK/pNTK {mem} (arrays' bytes; {_fmt(at.get('array_bytes_ratio'))} at "
            f"O = {at['O']}); ResNet-18 on CIFAR-10 ({NOT_JUDGED}): "
            f"{m.get('terabytes_arithmetic')}; solve "
            f"exponent in O {_fmt(m.get('solve_exponent'))}, 95 % [{_fmt(lo)}, {_fmt(hi)}] "
            f"({solve}); kernel time ratio {_fmt(at['time_ratio'])}× at O = {at['O']} (depth "
            f"{at['depth']}, width {at['width']}, N = {at.get('N')}), {kern or 'one O'}; "
            f"magnitude: {m.get('magnitude')}"
        )
    return json.dumps(m)


def expected_text(c: Claim) -> str:
    e = c.expected
    return f"{e.get('value')} ({e.get('source')})"


def _claims_table(claims: list[Claim]) -> list[str]:
    lines = [
        "| claim | model | measured | expected (source) | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        model = plotting.arm_label((c.model, c.parameterization))
        cells = (f"**{c.id}** {c.claim}", model, measured_text(c), expected_text(c))
        lines.append("| " + " | ".join(cell(x) for x in cells) + f" | **{c.verdict}** |")
    return lines


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _claim_details(claims: list[Claim]) -> list[str]:
    lines = []
    for c in claims:
        if not c.parts:
            lines.append(
                f"- **{c.id} {c.model} ({c.parameterization})**: {c.verdict}. Rule: {c.rule}."
            )
            continue
        lines.append(f"- **{c.id} {c.model} ({c.parameterization})**: {c.verdict}. Rule: {c.rule}.")
        for p in c.parts:
            nums = ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in p.items()
                if k not in ("check", "verdict", "rule", "per_seed", "x", "interval")
            )
            lines.append(f"  - {p['check']}: **{p['verdict']}** ({p['rule']}; {nums})")
    return lines


def table(rows: list[dict], fields, headers=None) -> list[str]:
    headers = headers or fields
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(fields)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(f)) for f in fields) + " |")
    return lines


CAPTIONS = {
    "frobenius_vs_width": "C1. Relative Frobenius error at initialisation against width, mean "
    "± std over seeds; legend: fitted log-log slope and its 95 % t interval (the one the "
    "verdicts use); dotted: width^-1/2.",
    "eigen_vs_width": "C2/C3. Relative errors of λ_max, λ_min and the condition number of "
    "pNTK⊗I against Θ; legend: fitted slope and its 95 % t interval.",
    "regression_vs_width": "C4/C5. Relative difference of the kernel-regression predictions on "
    "held-out points against width, one colour per ridge the runs used. Top: the talk's "
    "setting (C5's verdict): the pNTK of Σₒ fₒ without 1/√O and one ridge λ for both kernels; "
    "dashed: the floor ‖pred_Θ(λ/O) − pred_Θ(λ)‖/‖pred_Θ(λ)‖ the theory predicts from each "
    "run's eNTK. Bottom: our finding, a ridge matched to each kernel's scale (solid: "
    "relative; dotted: absolute with our scaled pNTK).",
    "regression_large_n": "C4/C5 with more kernel points (the regression preset).",
    "frobenius_vs_epoch": "C6. Error at each checkpoint over the error at initialisation.",
    "cost_vs_outputs": "C7. eNTK/pNTK warm time, the kernel arrays' bytes (O², exactly) and "
    "XLA's compiled memory against the number of outputs O (a wider readout on the same "
    "inputs), and the kernel-regression solve's time with each kernel (NO × NO against "
    "N × N); bars: min–max over repeats.",
    "cost_vs_width": "C7. Warm time and compiled memory of each kernel against width.",
    "spectra": "Eigenvalues of Θ and pNTK⊗I at initialisation.",
    "heatmaps": "Θ, pNTK⊗I and their difference on four inputs.",
}


# (field, header) of the report's tables
SHARE_COLUMNS = (
    ("model", "model"),
    ("width", "width"),
    ("group", "parameter group"),
    ("kernel_share", "share of Θ"),
    ("error_share", "share of the error"),
)
F32_COLUMNS = (
    ("model", "model"),
    ("parameterization", "param."),
    ("width", "width"),
    ("f32_entk_rel_diff", "‖K32−K64‖/‖K64‖"),
    ("lambda_min_rel_error", "λ_min err f64"),
    ("lambda_min_rel_error_f32", "λ_min err f32"),
    ("cond_entk", "κ(Θ) f64"),
    ("cond_entk_f32", "κ(Θ) f32"),
    ("kr_pred_rel_diff", "KR diff f64"),
    ("kr_pred_rel_diff_f32", "KR diff f32"),
    ("kr_acc_entk", "KR acc f64"),
    ("kr_acc_entk_f32", "KR acc f32"),
)
LINEARIZED_COLUMNS = (
    ("model", "model"),
    ("parameterization", "param."),
    ("width", "width"),
    ("epoch", "steps"),
    ("net_lin_rel_diff_entk", "‖f − f_lin,eNTK‖/‖f_lin‖"),
    ("net_lin_rel_diff_pntk", "‖f − f_lin,pNTK‖/‖f_lin‖"),
    ("lin_t_rel_diff", "‖f_lin,pNTK − f_lin,eNTK‖/‖·‖"),
    ("net_acc", "net acc"),
    ("lin_t_acc_entk", "lin eNTK acc"),
    ("lin_t_acc_pntk", "lin pNTK acc"),
)
README_COLUMNS = (
    ("model", "model"),
    ("parameterization", "param."),
    ("width", "width"),
    ("seeds", "seeds"),
    ("relative_frobenius_error", "rel. Frobenius error"),
    ("lambda_max_rel_error", "λ_max rel. error"),
    ("lambda_min_rel_error", "λ_min rel. error"),
    ("kr_acc_entk", "KR acc eNTK (ridge 0)"),
    ("kr_acc_pntk", "KR acc pNTK (ridge 0)"),
)


def columns_table(rows: list[dict], columns) -> list[str]:
    """:func:`table` from ``(field, header)`` pairs."""
    return table(rows, [f for f, _ in columns], [h for _, h in columns])


def _section(title: str, intro: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", intro, "", *body, ""]


def _head(rows, runs, claims, width_rows) -> list[str]:
    init = [r for r in width_rows if r["epoch"] == 0]
    counts = defaultdict(int)
    for c in claims:
        counts[c.verdict] += 1
    ns = sorted(
        {(r["model"], r.get("n"), r.get("num_outputs"), r.get("kernel_dtype")) for r in init}
    )
    points = "; ".join(f"{m} N={n} O={o} {d}" for m, n, o, d in ns)
    return [
        "# pNTK vs eNTK: reproduction report",
        "",
        f"{len(runs)} runs, {len(rows)} checkpoints with kernels. Kernel points per model "
        f"(model, N, O, dtype): {points}.",
        "",
        f"Verdicts: {counts[AGREES]} agree, {counts[DISAGREES]} do not agree, "
        f"{counts['inconclusive']} inconclusive.",
        "",
        "## The paper's claims, checked",
        "",
        *_claims_table(claims),
        "",
        "### How each verdict was reached",
        "",
        *_claim_details(claims),
        "",
    ]


def _figures_md(figs: dict) -> list[str]:
    lines = ["## Figures", ""]
    for name, path in figs.items():
        title = name.replace("_", " ")
        lines += [
            f"### {title}",
            "",
            CAPTIONS.get(name, ""),
            "",
            f"![{name}]({Path(path).name})",
            "",
        ]
    return lines


SHARES_INTRO = (
    "At initialisation, on the kernel points: each parameter group's share of the eNTK, "
    "⟨Θ_g, Θ⟩/‖Θ‖², and of the error, ⟨D_g, D⟩/‖D‖² with D = Θ − pNTK⊗I (each column "
    "sums to 1). The theory's width^-1/2 comes from the readout's exactly block-diagonal "
    "term (h·h'/n)⊗I outweighing the lower layers' off-diagonal blocks; a readout with a "
    "small share of Θ leaves the rate to the lower layers."
)
F32_INTRO = (
    "Kernels are computed in float64 from the trained float32 parameters "
    "(`kernel.dtype`); runs with `kernel.compare_float32=true` also computed them in "
    "float32. Mean over seeds:"
)
LINEARIZED_INTRO = (
    "Networks trained with MSE by full-batch gradient descent on the kernel points; the "
    "linearised network f_lin,t = f0 + Θ*Θ⁻¹(I − (I − ηΘ/N)^t)(Y − f0) with the init "
    "eNTK (or pNTK⊗I), the same learning rate η and steps t. At the last checkpoint:"
)
HEADLINE_INTRO = (
    "`lin_*`: the linearised network f0 + Θ*Θ⁻¹(Y − f0) (converged gradient flow on the "
    "kernel points); times: warm calls, compile excluded."
)


COST_MODEL_COLUMNS = (
    ("model", "model"),
    ("depth", "depth"),
    ("width", "width"),
    ("N", "N"),
    ("O", "O"),
    ("kind", "kind"),
    ("implementation", "implementation"),
    ("time_s", "warm time (s)"),
    ("flops", "FLOPs (model)"),
    ("gflops_per_s", "GFLOP/s"),
    ("measured_ratio", "eNTK/pNTK measured"),
    ("predicted_ratio", "eNTK/pNTK model"),
    ("factor", "measured / model"),
)


def cost_model_section(cm: dict) -> list[str]:
    """The library's cost model against the measured times: not a claim of the paper."""
    if not cm or not cm.get("rows"):
        return []
    factor = cm["factor"]
    intro = (
        "How well the library's FLOP model (`ntk.kernels.estimates`, for the implementation "
        "that ran) predicts the cost runs' warm times. A property of the library, not a claim "
        f"of the paper: no verdict uses it. A miss: the measured eNTK/pNTK time ratio more "
        f"than {factor:g}× from the model's (FLOP rates differ between the two programs)."
    )
    misses = cm.get("misses") or []
    body = columns_table(cm["rows"], COST_MODEL_COLUMNS) + [""]
    body += (
        [f"Misses ({len(misses)}):", ""] + [f"- {m}" for m in misses]
        if misses
        else ["Misses: none."]
    )
    return _section("The library's cost model", intro, body)


def report_md(rows, runs, claims, figs, f32, lin, shares, width_rows, cost_model=None) -> str:
    """``report.md``: the claims with their verdicts, figures, the layer diagnosis, the
    float32 and linearised-network tables (when the runs have them), the library's cost
    model against the measured times and the headline table."""
    lines = _head(rows, runs, claims, width_rows) + _figures_md(figs)
    lines += cost_model_section(cost_model or {})
    if shares:
        title = "Diagnosis: which layers make Θ and its departure from pNTK⊗I"
        lines += _section(title, SHARES_INTRO, columns_table(shares, SHARE_COLUMNS))
    if f32:
        title = "float64 against float32 kernels"
        lines += _section(title, F32_INTRO, columns_table(f32, F32_COLUMNS))
    if lin:
        title = "The linearised network against the trained network (MSE arm)"
        lines += _section(title, LINEARIZED_INTRO, columns_table(lin, LINEARIZED_COLUMNS))
    init = [r for r in width_rows if r["epoch"] == 0]
    fields = ("model", "parameterization", "width", "seeds", *HEADLINE)
    body = table(mean_rows(init, HEADLINE), fields)
    lines += _section("At initialisation, mean over seeds", HEADLINE_INTRO, body)
    return "\n".join(lines)
