"""The active-learning study's own report: ``summary.json``, ``report.md`` and
``fig_active_learning.png`` in its output directory. Accuracy curves and selection times are
measurements (mean and 95 % t interval over seeds); C8 carries a verdict."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ntk import atomic  # noqa: E402
from ntk_repro.report.verdicts import mean_se, rounded, t_interval  # noqa: E402

FIGURE = "fig_active_learning.png"


def curves(runs: list[dict]) -> dict:
    """``{model: {strategy: [{n_labels, mean, interval, seeds}]}}`` of test accuracy."""
    acc = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        for rec in run["records"]:
            acc[run["model"]][run["strategy"]][rec["n_labels"]].append(rec["test_acc"])
    out = {}
    for model, by_s in acc.items():
        out[model] = {}
        for strategy, by_n in by_s.items():
            rows = []
            for n in sorted(by_n):
                mean, se, df = mean_se(by_n[n])
                lo, hi = t_interval(mean, se, df)
                rows.append(
                    {
                        "n_labels": n,
                        "mean": rounded(mean),
                        "interval": [rounded(lo), rounded(hi)],
                        "seeds": len(by_n[n]),
                    }
                )
            out[model][strategy] = rows
    return out


def paired_gain(runs: list[dict], baseline: str = "random") -> dict:
    """Per model and strategy: test accuracy minus ``baseline``'s at the last round, paired
    by seed (the same initial labels and network), mean and 95 % t interval over seeds."""
    last = {(r["model"], r["seed"], r["strategy"]): r["records"][-1]["test_acc"] for r in runs}
    diffs = defaultdict(lambda: defaultdict(list))
    for (model, seed, strategy), acc in last.items():
        if strategy != baseline and (model, seed, baseline) in last:
            diffs[model][strategy].append(acc - last[model, seed, baseline])
    out = {}
    for model, by_s in diffs.items():
        out[model] = {}
        for strategy, d in sorted(by_s.items()):
            mean, se, df = mean_se(d)
            lo, hi = t_interval(mean, se, df)
            out[model][strategy] = {"mean": rounded(mean), "interval": [rounded(lo), rounded(hi)]}
    return out


def selection_times(runs: list[dict]) -> dict:
    """Per model and strategy: the median selection time over rounds after the first (warm;
    the first includes compilation) and the first round's."""
    times = defaultdict(lambda: defaultdict(lambda: {"warm": [], "first": []}))
    for run in runs:
        recs = [r for r in run["records"] if "select_seconds" in r]
        if recs:
            t = times[run["model"]][run["strategy"]]
            t["first"].append(recs[0]["select_seconds"])
            t["warm"].extend(r["select_seconds"] for r in recs[1:])
    out = {}
    for model, by_s in times.items():
        out[model] = {
            s: {
                "median_warm_seconds": rounded(float(np.median(t["warm"]))) if t["warm"] else None,
                "median_first_seconds": rounded(float(np.median(t["first"]))),
            }
            for s, t in by_s.items()
        }
        p, e = out[model].get("lookahead_pntk"), out[model].get("lookahead_entk")
        if p and e and p["median_warm_seconds"] and e["median_warm_seconds"]:
            out[model]["entk_over_pntk"] = rounded(
                e["median_warm_seconds"] / p["median_warm_seconds"]
            )
    return out


def figure(acc: dict, path: Path) -> None:
    models = sorted(acc)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for strategy, rows in sorted(acc[model].items()):
            n = [r["n_labels"] for r in rows]
            mean = np.array([r["mean"] for r in rows], float)
            lo = np.array([np.nan if r["interval"][0] is None else r["interval"][0] for r in rows])
            hi = np.array([np.nan if r["interval"][1] is None else r["interval"][1] for r in rows])
            (line,) = ax.plot(n, mean, "o-", ms=3, label=strategy)
            ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(model)
        ax.set_xlabel("labelled points")
        ax.set_ylabel("test accuracy (mean, 95 % t interval over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3g}"


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _iv(d: dict) -> str:
    return f"{_fmt(d['mean'])} [{_fmt(d['interval'][0])}, {_fmt(d['interval'][1])}]"


def _settings(cfg: dict) -> str:
    models = ", ".join(f"{m['name']} width {m['width']}" for m in cfg["models"])
    return (
        f"Data {cfg['data']['name']}; models {models}; seeds {cfg['seeds']}; "
        f"{cfg['n_initial']} random initial labels, {cfg['rounds']} rounds of {cfg['batch']} "
        f"queries; each round scores {cfg['n_candidates']} random candidates against a "
        f"{cfg['n_pool_subset']}-point pool subset (every strategy picks from the same "
        f"candidates); retrain: {cfg['round_steps']} full-batch SGD steps from the last weights "
        f"({cfg['initial_steps']} from initialisation), squared loss on one-hot targets; "
        f"look-ahead ridge {cfg['ridge']} (relative to mean diag K_LL)."
    )


def _c8_context(claims: list[dict], cfg: dict) -> list[str]:
    """The table beside C8's verdict: did the retrains converge, and how close is the
    linearised network after the same steps (the look-ahead is its limit)."""
    rows = [c for c in claims if "retrain_loss_ratio_max" in c["measured"]]
    if not rows:
        return []
    lines = [
        "",
        f"Beside the verdict (not part of it): the retrains' convergence after "
        f"{cfg['round_steps']} steps (the largest over a seed's retrains of the last step's "
        "training loss over the first step's) and the linearised network after the same "
        "steps of the same optimiser, compared with the measured change like the look-ahead "
        "(its own loss ratio beside it; – where the optimiser is not constant-rate SGD).",
        "",
        _row("model, kernel", "retrain loss last/first", "same steps: r", "relative error",
             "linearised loss last/first"),
        _row(*["---"] * 5),
    ]  # fmt: skip
    none = {"mean": None, "interval": [None, None]}
    for c in rows:
        m = c["measured"]
        same = m.get("same_steps", {})
        cells = [same.get(k, none) for k in ("correlation", "relative_error", "loss_ratio_max")]
        lines.append(_row(c["model"], _iv(m["retrain_loss_ratio_max"]), *map(_iv, cells)))
    return lines


def _c8_section(claims: list[dict], cfg: dict) -> list[str]:
    """C8's verdicts, what lies beside them, its source, rule and measurement."""
    lines = [
        "",
        "## C8: the linearised look-ahead approximates retraining",
        "",
        _row("model, kernel", "r", "relative error", "L2 rank corr.", "scale", "verdict"),
        _row(*["---"] * 6),
    ]
    for c in claims:
        m = c["measured"]
        cells = (m["correlation"], m["relative_error"], m["l2_rank_correlation"], m["scale"])
        lines.append(_row(c["model"], *map(_iv, cells), f"**{c['verdict']}**"))
    lines += _c8_context(claims, cfg)
    if claims:
        c = claims[0]
        rules = "; ".join(f"{p['check']}: {p['rule']}" for p in c["parts"])
        lines += [
            "",
            f"Source: {c['expected']['source']}",
            "",
            f"Rule: {c['rule']}. Parts: {rules}.",
            "",
            f"Measured: {cfg['claim']['n_candidates']} random candidates per seed at the "
            "network trained on the initial labels, each retrained in with its predicted "
            "class as label by the round's own retrain "
            f"({cfg['round_steps']} {cfg['optimizer']['name']} steps), "
            "beside a control retrain without it; the look-ahead is the linearised "
            "network trained to convergence; "
            "Δ_meas = f_{L+x}(U) − f_L(U) against the look-ahead's Δ_pred (r and the relative "
            "error over all candidates, points and outputs; the rank correlation of the "
            "per-candidate ‖Δ‖; scale: the least-squares factor of Δ_meas on Δ_pred).",
        ]
    return lines


def markdown(summary: dict) -> str:
    cfg = summary["config"]
    lines = [
        "# Look-ahead active learning (C8 and acquisition curves)",
        "",
        f"`make active-learning`: {summary['wall_seconds'] / 60:.1f} min on "
        f"{summary['cores']} cores (load average {summary['load_average']} at the end), "
        f"{summary['date']}.",
        "",
        _settings(cfg),
        "",
        f"![test accuracy against labels]({FIGURE})",
        "",
        "## Test accuracy at the last round (mean, 95 % t interval over seeds)",
        "",
        _row("model", "strategy", "labels", "accuracy"),
        _row(*["---"] * 4),
    ]
    for model, by_s in summary["curves"].items():
        for strategy, rows in sorted(by_s.items()):
            lines.append(_row(model, strategy, rows[-1]["n_labels"], _iv(rows[-1])))
    lines += [
        "",
        "## Gain over random at the last round (paired by seed: same start; mean, 95 % t)",
        "",
        _row("model", "strategy", "accuracy − random's"),
        _row(*["---"] * 3),
    ]
    for model, by_s in summary.get("gain_over_random", {}).items():
        for strategy, g in by_s.items():
            lines.append(_row(model, strategy, _iv(g)))
    lines += [
        "",
        "## Selection time per round (seconds; warm: median over rounds after the first)",
        "",
        _row("model", "strategy", "warm", "first round"),
        _row(*["---"] * 4),
    ]
    for model, by_s in summary["selection_times"].items():
        for strategy, t in sorted(by_s.items()):
            if isinstance(t, dict):
                warm, first = t["median_warm_seconds"], t["median_first_seconds"]
                lines.append(_row(model, strategy, _fmt(warm), _fmt(first)))
        if "entk_over_pntk" in by_s:
            lines.append(
                _row(model, "eNTK / pNTK look-ahead", f"{_fmt(by_s['entk_over_pntk'])}×", "")
            )
    lines += _c8_section(summary["claims"], cfg)
    return "\n".join(lines) + "\n"


def write(out: Path, summary: dict) -> None:
    figure(summary["curves"], out / FIGURE)
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic.write_text(out / "report.md", markdown(summary))
