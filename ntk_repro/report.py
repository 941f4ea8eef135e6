"""Gathers a sweep's runs into ``summary.json``, figures and ``report.md``.

A run directory is one written by ``experiments/train.py``: ``config.yaml``,
``metrics.jsonl`` (records with kernel metrics at checkpoints) and ``kernels/`` (spectra and
small kernels as ``.npz``). :func:`build_report` finds every run under a root directory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ntk_repro import plotting

SUMMARY_FIELDS = (
    "model", "width", "depth", "seed", "epoch", "n", "relative_frobenius_error",
    "lambda_max_rel_error", "lambda_min_rel_error", "cond_entk", "cond_pntk",
    "kr_pred_rel_diff", "kr_acc_entk", "kr_acc_pntk", "time_entk_s", "time_pntk_s",
)  # fmt: skip


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (those holding ``config.yaml`` and ``metrics.jsonl``)."""
    root = Path(root)
    runs = {p.parent for p in root.rglob("metrics.jsonl") if (p.parent / "config.yaml").exists()}
    return sorted(runs)


def _depth(model_cfg: dict) -> int | None:
    for key in ("depth", "num_layers", "blocks"):
        if key in model_cfg:
            return int(model_cfg[key])
    if "stage_sizes" in model_cfg:
        return int(sum(model_cfg["stage_sizes"])) * 2 + 2
    return None


def run_rows(run_dir: str | Path) -> list[dict]:
    """Summary rows (one per checkpoint with kernel metrics) of one run."""
    import yaml

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = dict(cfg.get("model", {}))
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "relative_frobenius_error" not in rec:
            continue
        rows.append(
            {
                "model": model.get("name"),
                "width": model.get("width"),
                "depth": _depth(model),
                "seed": cfg.get("seed"),
                "data": cfg.get("data", {}).get("name"),
                "experiment": cfg.get("experiment_name"),
                "run_dir": str(run_dir),
                **rec,
            }
        )
    return rows


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _spectra(rows: list[dict], max_panels: int = 3):
    """Spectra of the init checkpoints at the smallest and largest width of the first model."""
    init = [r for r in rows if r["epoch"] == 0]
    if not init:
        return [], None
    model = sorted({r["model"] for r in init})[0]
    widths = sorted({r["width"] for r in init if r["model"] == model})
    picks = sorted({widths[0], widths[len(widths) // 2], widths[-1]})[:max_panels]
    panels, heat = [], None
    for w in picks:
        r = next(r for r in init if r["model"] == model and r["width"] == w)
        npz = Path(r["run_dir"]) / "kernels" / f"epoch_{r['epoch']:04d}.npz"
        if not npz.exists():
            continue
        with np.load(npz, allow_pickle=False) as z:
            if "eig_entk" in z and "eig_pntk_kron_i" in z:
                panels.append((f"{model} width {w}", z["eig_entk"], z["eig_pntk_kron_i"]))
            if "entk" in z and "pntk" in z:
                heat = (z["entk"], z["pntk"], f"{model} width {w}")
    return panels, heat


def trend_checks(rows: list[dict]) -> list[dict]:
    """The literature's expectations (MISSION.md), tested on this run's numbers."""
    checks = []
    for m, (ws, mu, _) in plotting.by_width(rows, "relative_frobenius_error").items():
        if len(ws) < 2:
            continue
        slope = plotting.fit_loglog_slope(ws, mu)
        checks.append(
            {
                "trend": f"{m}: relative Frobenius error at init falls like width^-1/2",
                "measured": f"slope {slope:.2f} over widths {ws[0]}–{ws[-1]} "
                f"({mu[0]:.3f} → {mu[-1]:.3f})",
                "agrees": bool(-0.9 <= slope <= -0.2),
            }
        )
        _, lmax, _ = plotting.by_width(rows, "lambda_max_rel_error", model=m)[m]
        _, lmin, _ = plotting.by_width(rows, "lambda_min_rel_error", model=m).get(
            m, ([], [float("inf")], [])
        )
        checks.append(
            {
                "trend": f"{m}: λ_max is well approximated (error falls with width)",
                "measured": f"λ_max rel. error {lmax[0]:.3f} → {lmax[-1]:.3f}",
                "agrees": bool(lmax[-1] < lmax[0] and lmax[-1] < 0.2),
            }
        )
        checks.append(
            {
                "trend": f"{m}: λ_min (and the condition number) is the weak spot",
                "measured": f"λ_min rel. error {lmin[-1]:.3f} vs λ_max {lmax[-1]:.3f} "
                f"at width {ws[-1]}",
                "agrees": bool(lmin[-1] > lmax[-1]),
            }
        )
    trained = {}
    for r in rows:
        trained.setdefault((r["model"], r["width"], r["seed"]), []).append(r)
    deltas = []
    for (m, w, _), rs in trained.items():
        rs = sorted(rs, key=lambda r: r["epoch"])
        if len(rs) >= 2 and rs[0]["epoch"] == 0:
            deltas.append(
                (
                    m,
                    w,
                    rs[0]["relative_frobenius_error"],
                    rs[-1]["relative_frobenius_error"],
                    rs[-1]["epoch"],
                )
            )
    if deltas:
        worse = sum(d[3] > d[2] for d in deltas)
        checks.append(
            {
                "trend": "during training the approximation may degrade",
                "measured": f"error grew in {worse}/{len(deltas)} runs: "
                + "; ".join(
                    f"{m} w={w}: {a:.3f} → {b:.3f} (epoch {e})" for m, w, a, b, e in deltas[:6]
                ),
                "agrees": None,
            }
        )
    return checks


def _of(rows: list[dict], experiment: str) -> list[dict]:
    """The rows of one experiment preset, or all rows when no run used that preset."""
    picked = [r for r in rows if r.get("experiment") == experiment]
    return picked or rows


def _table(rows: list[dict], fields) -> str:
    head = "| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n"
    body = []
    for r in rows:
        cells = []
        for f in fields:
            v = r.get(f)
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        body.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(body) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_report(runs_root: str | Path, out_dir: str | Path, *, ridges=(0.0, 1e-3, 1e-1)) -> dict:
    """Writes ``summary.json``, the figures and ``report.md`` for every run under
    ``runs_root``; returns ``{"summary": rows, "figures": {...}, "checks": [...]}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for d in find_runs(runs_root) for r in run_rows(d)]
    if not rows:
        raise FileNotFoundError(f"runs_root: no runs with kernel metrics under {str(runs_root)!r}")
    rows.sort(key=lambda r: (str(r["model"]), r["width"] or 0, r["seed"] or 0, r["epoch"]))
    summary = [{k: _finite(v) for k, v in r.items()} for r in rows]
    _atomic_write(out / "summary.json", json.dumps(summary, indent=1))

    width_rows = _of(rows, "width_init")
    figs = {
        "frobenius_vs_width": plotting.frobenius_vs_width(
            width_rows, out / "fig_frobenius_width.png"
        ),
        "frobenius_vs_epoch": plotting.frobenius_vs_epoch(
            _of(rows, "training"), out / "fig_frobenius_epoch.png"
        ),
        "eigen_vs_width": plotting.eigen_vs_width(width_rows, out / "fig_eigen_width.png"),
        "regression_vs_width": plotting.regression_vs_width(
            _of(rows, "regression"), ridges, out / "fig_regression_width.png"
        ),
        "cost_vs_width": plotting.cost_vs_width(_of(rows, "cost"), out / "fig_cost_width.png"),
    }
    panels, heat = _spectra(_of(rows, "spectra"))
    figs["spectra"] = plotting.spectra_overlay(panels, out / "fig_spectra.png")
    if heat is not None:
        figs["heatmaps"] = plotting.heatmaps(heat[0], heat[1], out / "fig_heatmaps.png")
    checks = trend_checks(width_rows)
    checks += [
        c for c in trend_checks(_of(rows, "training")) if c["agrees"] is None and c not in checks
    ]

    init = [r for r in width_rows if r["epoch"] == 0]
    lines = [
        "# pNTK vs eNTK: reproduction report",
        "",
        f"{len(find_runs(runs_root))} runs, {len(rows)} checkpoints with kernels "
        f"(N = {rows[0].get('n')} kernel points, O = {rows[0].get('num_outputs')}).",
        "",
        "## Headline: at initialisation",
        "",
        _table(
            init,
            (
                "model",
                "width",
                "seed",
                "relative_frobenius_error",
                "lambda_max_rel_error",
                "lambda_min_rel_error",
                "cond_entk",
                "cond_pntk",
                "kr_pred_rel_diff",
                "kr_acc_entk",
                "kr_acc_pntk",
                "time_entk_s",
                "time_pntk_s",
            ),
        ),
        "## Does this run agree with the literature?",
        "",
        "| expected trend | measured | agrees |",
        "|---|---|---|",
        *[
            f"| {c['trend']} | {c['measured']} | "
            f"{'n/a' if c['agrees'] is None else ('yes' if c['agrees'] else 'no')} |"
            for c in checks
        ],
        "",
        "## Figures",
        "",
    ]
    for name, path in figs.items():
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({Path(path).name})", ""]
    _atomic_write(out / "report.md", "\n".join(lines))
    return {"summary": summary, "figures": figs, "checks": checks}
