"""Figures of the reproduction. Each function takes summary rows (dicts, one per run and
checkpoint, as in ``results/summary.json``) and writes one PNG, returning its path."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` (nan with fewer than two points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    if ok.sum() < 2 or len(set(x[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def by_width(rows, key, *, epoch=0, model=None):
    """``{model: (widths, mean over seeds, std over seeds)}`` of ``key`` at ``epoch``."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("epoch") != epoch or key not in r or (model and r["model"] != model):
            continue
        v = r[key]
        if v is not None and np.isfinite(v):
            acc[r["model"]][r["width"]].append(v)
    out = {}
    for m, d in sorted(acc.items()):
        ws = sorted(d)
        out[m] = (ws, [float(np.mean(d[w])) for w in ws], [float(np.std(d[w])) for w in ws])
    return out


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return str(path)


def frobenius_vs_width(rows, path) -> str:
    """Relative Frobenius error at init vs width (log-log), fitted slope per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, (ws, mu, sd) in by_width(rows, "relative_frobenius_error").items():
        slope = fit_loglog_slope(ws, mu)
        ax.errorbar(ws, mu, yerr=sd, marker="o", capsize=3, label=f"{m} (slope {slope:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|\Theta - \mathrm{pNTK}\otimes I\|_F / \|\Theta\|_F$")
    ax.set_title("pNTK approximation at initialisation")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def frobenius_vs_epoch(rows, path) -> str:
    """Relative Frobenius error over training, one line per (model, width)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "relative_frobenius_error" in r:
            series[(r["model"], r["width"])][r["epoch"]].append(r["relative_frobenius_error"])
    for (m, w), d in sorted(series.items()):
        if len(d) < 2:
            continue
        es = sorted(d)
        ax.plot(es, [np.mean(d[e]) for e in es], marker="o", label=f"{m} w={w}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title("pNTK approximation during training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def eigen_vs_width(rows, path) -> str:
    """λ_max and λ_min relative errors and both condition numbers vs width."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, ax, title in (
        ("lambda_max_rel_error", axes[0], r"$\lambda_{max}$ relative error"),
        ("lambda_min_rel_error", axes[1], r"$\lambda_{min}$ relative error"),
    ):
        for m, (ws, mu, _) in by_width(rows, key).items():
            ax.plot(ws, mu, marker="o", label=f"{m} (slope {fit_loglog_slope(ws, mu):.2f})")
        ax.set(xscale="log", yscale="log", xlabel="width", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for m, (ws, mu, _) in by_width(rows, "cond_entk").items():
        line = ax.plot(ws, mu, marker="o", label=f"{m} eNTK")[0]
        ws_p, mu_p, _ = by_width(rows, "cond_pntk", model=m).get(m, ([], [], []))
        ax.plot(ws_p, mu_p, marker="s", ls="--", color=line.get_color(), label=f"{m} pNTK")
    ax.set(xscale="log", yscale="log", xlabel="width", title="condition number")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def spectra_overlay(spectra: Sequence[tuple[str, np.ndarray, np.ndarray]], path) -> str:
    """Sorted eigenvalues of Θ and of pNTK⊗I, one panel per ``(label, eig_entk, eig_pntk)``."""
    plt = _plt()
    n = max(len(spectra), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    for ax, (label, e, p) in zip(axes[0], spectra, strict=False):
        idx = np.arange(1, len(e) + 1)
        ax.loglog(idx, np.sort(e)[::-1], label="eNTK Θ")
        ax.loglog(idx, np.sort(p)[::-1], ls="--", label="pNTK ⊗ I")
        ax.set(xlabel="index", ylabel="eigenvalue", title=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def regression_vs_width(rows, ridges: Sequence[float], path) -> str:
    """Kernel-regression test accuracy (eNTK vs pNTK) and prediction difference vs width."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ridge, ls in zip(ridges, ("-", "--", ":", "-."), strict=False):
        tag = f"@ridge={ridge:g}"
        for m, (ws, mu, _) in by_width(rows, "kr_pred_rel_diff" + tag).items():
            axes[1].plot(ws, mu, marker="o", ls=ls, label=f"{m} ridge={ridge:g}")
        for m, (ws, mu, _) in by_width(rows, "kr_acc_entk" + tag).items():
            line = axes[0].plot(ws, mu, marker="o", ls=ls, label=f"{m} eNTK ridge={ridge:g}")[0]
            ws_p, mu_p, _ = by_width(rows, "kr_acc_pntk" + tag, model=m).get(m, ([], [], []))
            axes[0].plot(ws_p, mu_p, marker="x", ls=ls, color=line.get_color(), alpha=0.6)
    axes[0].set(
        xscale="log",
        xlabel="width",
        ylabel="test accuracy",
        title="kernel regression accuracy (o eNTK, x pNTK)",
    )
    axes[1].set(
        xscale="log", yscale="log", xlabel="width", title="‖pred_eNTK − pred_pNTK‖ / ‖pred_eNTK‖"
    )
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


def cost_vs_width(rows, path) -> str:
    """Warm wall time and compiled memory of the eNTK vs the pNTK (at init) against width."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("time_{}_s", 1.0), ("kernel_bytes_{}", 2.0**-20))
    for ax, (key, scale) in zip(axes, panels, strict=True):
        for m, (ws, mu, _) in by_width(rows, key.format("entk")).items():
            line = ax.plot(ws, np.asarray(mu) * scale, marker="o", label=f"{m} eNTK")[0]
            ws_p, mu_p, _ = by_width(rows, key.format("pntk"), model=m).get(m, ([], [], []))
            ax.plot(
                ws_p,
                np.asarray(mu_p) * scale,
                marker="s",
                ls="--",
                color=line.get_color(),
                label=f"{m} pNTK",
            )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="width",
        ylabel="seconds",
        title="kernel time (warm call, compile excluded)",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="width",
        ylabel="MiB",
        title="memory of the compiled kernel (XLA temporaries + output)",
    )
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def heatmaps(entk_NNOO: np.ndarray, pntk_NN: np.ndarray, path, n_points: int = 4) -> str:
    """Θ against pNTK⊗I on the first ``n_points`` inputs (an ``n·O × n·O`` picture each)."""
    from ntk.metrics import as_matrix, kron_identity

    plt = _plt()
    e = as_matrix(entk_NNOO[:n_points, :n_points])
    p = kron_identity(pntk_NN[:n_points, :n_points], entk_NNOO.shape[-1])
    lim = np.max(np.abs(e))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, mat, title in (
        (axes[0], e, "eNTK Θ"),
        (axes[1], p, "pNTK ⊗ I"),
        (axes[2], e - p, "difference"),
    ):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
