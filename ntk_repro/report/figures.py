"""Figures of the reproduction. Each function takes summary rows (dicts, one per run and
checkpoint, as in ``results/summary.json``) and writes one PNG, returning its path.

One message per figure; error bars are the standard deviation over seeds; slopes come from
:func:`ntk_repro.report.verdicts.fit_slope` (the same fit the claim checks use). A series with no
points raises ``ValueError``: a figure never silently drops data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ntk_repro.report.verdicts import cond_error, fit_slope, ridges_of

MODEL_LABELS = {"mlp": "MLP", "cnn": "CNN", "resnet18": "ResNet"}
PARAM_LABELS = {"ntk": "NTK param.", "standard": "standard param."}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arm_of(row: dict) -> tuple[str, str]:
    """``(model, parameterization)``: the series a row belongs to."""
    return row["model"], row.get("parameterization") or "ntk"


def arm_label(arm: tuple[str, str]) -> str:
    model, param = arm
    return f"{MODEL_LABELS.get(model, model)}, {PARAM_LABELS.get(param, param)}"


def by_width(rows, key, *, epoch=0, model=None):
    """``{model: (widths, mean over seeds, std over seeds)}`` of ``key`` at ``epoch`` (NTK
    parameterisation; :func:`by_arm` has every parameterisation)."""
    return {
        arm[0]: v[:3]
        for arm, v in by_arm(rows, key, epoch=epoch).items()
        if model in (None, arm[0]) and arm[1] == "ntk"
    }


def by_arm(rows, key: str | Callable, *, epoch=0, x="width") -> dict:
    """``{(model, parameterization): (xs, mean over seeds, std over seeds, points)}`` of
    ``key`` (a row key or a function of a row) at ``epoch``; ``points`` are ``(seed, x, y)``.
    """
    get = key if callable(key) else (lambda r: r.get(key))
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if epoch is not None and r.get("epoch") != epoch:
            continue
        v = get(r)
        if v is not None and np.isfinite(v):
            acc[arm_of(r)][r[x]].append((r.get("seed"), v))
    out = {}
    for arm, d in sorted(acc.items(), key=lambda kv: (kv[0][1] != "ntk", kv[0])):
        xs = sorted(d)
        vals = [[v for _, v in d[w]] for w in xs]
        pts = [(s, w, v) for w in xs for s, v in d[w]]
        out[arm] = (xs, [float(np.mean(v)) for v in vals], [float(np.std(v)) for v in vals], pts)
    return out


def slope_label(points) -> str:
    """The fitted log-log slope with its 95 % t interval, as every verdict uses it."""
    s = fit_slope(points)
    lo, hi = s.interval
    if not np.isfinite(lo):
        return f"slope {s.slope:.2f}"
    return f"slope {s.slope:.2f} [{lo:.2f}, {hi:.2f}]"


def _series(ax, xs, ys, yerr=None, **kw):
    """One plotted series; an empty one is an error, never a silently missing line."""
    if len(xs) == 0:
        raise ValueError(f"plot: the series {kw.get('label')!r} has no points")
    return ax.errorbar(xs, ys, yerr=yerr, capsize=3, marker=kw.pop("marker", "o"), **kw)[0]


def _style(arm):
    return {"ls": "-" if arm[1] == "ntk" else "--"}


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return str(path)


def _empty(path, message: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, path)


def _loglog(ax, xlabel, ylabel, title):
    """Log-log axes, called after plotting: x ticks at the plotted x values when there are
    few of them; y minor ticks at 2 and 5 only (every minor label overlaps its neighbours)."""
    from matplotlib import ticker

    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    xs = sorted({float(x) for line in ax.lines for x in line.get_xdata()})
    if 2 <= len(xs) <= 8:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xticks([], minor=True)
    ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    # labelled when the axis spans at most two decades, unlabelled beyond
    ax.yaxis.set_minor_formatter(
        ticker.LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 2))
    )
    ax.grid(True, which="both", alpha=0.3)


def frobenius_vs_width(rows, path) -> str:
    """C1: relative Frobenius error at init vs width (log-log) per architecture and
    parameterisation, mean ± std over seeds, with the fitted slope and a width^-1/2 guide."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    series = by_arm(rows, "relative_frobenius_error")
    if not series:
        raise ValueError("plot: no relative Frobenius errors at initialisation")
    for arm, (ws, mu, sd, pts) in series.items():
        _series(ax, ws, mu, sd, label=f"{arm_label(arm)}: {slope_label(pts)}", **_style(arm))
    all_w = [w for ws, *_ in series.values() for w in ws]
    all_y = [m for _, mu, *_ in series.values() for m in mu]
    w0, w1 = min(all_w), max(all_w)
    y0 = float(np.exp(np.mean(np.log(all_y))))
    wm = float(np.exp(np.mean(np.log(all_w))))
    ax.plot(
        [w0, w1],
        [y0 * (w0 / wm) ** -0.5, y0 * (w1 / wm) ** -0.5],
        color="gray",
        ls=":",
        label=r"width$^{-1/2}$ (theory)",
    )
    _loglog(
        ax,
        "width (hidden units / channels of the first stage)",
        r"$\|\Theta - \mathrm{pNTK}\otimes I\|_F\,/\,\|\Theta\|_F$",
        "C1: the pNTK approximation at initialisation improves with width",
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


def eigen_vs_width(rows, path) -> str:
    """C2/C3: relative errors of λ_max, λ_min and the condition number vs width."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
    panels = (
        ("lambda_max_rel_error", r"$|\Delta\lambda_{max}| / \lambda_{max}(\Theta)$", "C2: λ_max"),
        ("lambda_min_rel_error", r"$|\Delta\lambda_{min}| / \lambda_{min}(\Theta)$", "C3: λ_min"),
        (cond_error, r"$|\kappa_{pNTK} / \kappa_{eNTK} - 1|$", "C3: condition number"),
    )
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        for arm, (ws, mu, sd, pts) in by_arm(rows, key).items():
            _series(ax, ws, mu, sd, label=f"{arm_label(arm)}: {slope_label(pts)}", **_style(arm))
        _loglog(ax, "width", ylabel, f"{title} rel. error (slope, 95 % t interval)")
        ax.legend(fontsize=6)
    fig.suptitle("C2/C3: spectra of pNTK⊗I against Θ at initialisation, by width", y=1.0)
    return _save(fig, path)


def regression_vs_width(rows, ridges: Sequence[float] | None, path) -> str:
    """C4/C5: relative difference of eNTK and pNTK kernel-regression predictions vs width, one
    column per architecture, one colour per ridge the runs used (``ridges``: a subset of those
    to show; every one of them must be in the runs). Top row, C5's verdict: the talk's setting
    (the unscaled pNTK, one λ for both kernels), with the floor the theory predicts (dashed)
    where the runs have it. Bottom row, our finding: the ridge relative to each kernel's scale
    (solid) and the absolute ridge with our scaled pNTK (dotted). Ridge 0 (thick) in both."""
    used = ridges_of(rows)
    ridges = used if not ridges else [float(r) for r in ridges]
    missing = sorted(set(ridges) - set(used))
    if missing:
        raise ValueError(f"ridges: {missing} were not computed by the runs (they used {used})")
    if not ridges:
        raise ValueError("plot: the runs hold no kernel-regression results")
    plt = _plt()
    arms = list(by_arm(rows, "kr_pred_rel_diff@ridge=0"))
    if not arms:
        raise ValueError("plot: no ridge-0 kernel regression in the runs")
    talk = any(k.startswith("kr_pred_rel_diff@unscaled_ridge=") for r in rows for k in r)
    n_rows = 2 if talk else 1
    fig, axes = plt.subplots(
        n_rows, len(arms), figsize=(max(4.6 * len(arms), 7), 4.4 * n_rows), squeeze=False
    )
    cmap = plt.get_cmap("viridis")
    for col, arm in enumerate(arms):
        panels = [("finding", axes[-1][col])]
        if talk:
            panels.insert(0, ("talk", axes[0][col]))
        for what, ax in panels:
            for i, ridge in enumerate(ridges):
                color = cmap(i / max(len(ridges) - 1, 1))
                for name, key, style in _regression_lines(what, ridge):
                    series = by_arm(rows, key)
                    if arm not in series:
                        if name == "relative" or (ridge == 0 and name == "ridge"):
                            raise ValueError(
                                f"plot: ridge {ridge:g} has no points for {arm_label(arm)}"
                            )
                        continue
                    ws, mu, sd, pts = series[arm]
                    label = f"{name} {ridge:g}"
                    if name != "floor":
                        label += f": slope {fit_slope(pts).slope:.2f}"
                    _series(ax, ws, mu, sd, color=color, label=label, **style)
            title = (
                f"{arm_label(arm)}: the talk's setting (verdict)"
                if what == "talk"
                else f"{arm_label(arm)}: ridge matched to each kernel (finding)"
            )
            _loglog(ax, "width", "‖pred_pNTK − pred_eNTK‖ / ‖pred_eNTK‖", title)
            legend = (
                "unscaled pNTK, one λ (—); predicted floor (- -)"
                if what == "talk"
                else "ridge: relative (—), absolute (⋯)"
            )
            ax.legend(fontsize=6, title=legend, title_fontsize=7)
    fig.suptitle("C4/C5: kernel-regression predictions, pNTK vs eNTK, by ridge", y=1.0)
    return _save(fig, path)


def _regression_lines(what: str, ridge: float) -> list[tuple[str, str, dict]]:
    """``(label, row key, style)`` of one ridge's lines in a panel of
    :func:`regression_vs_width`."""
    if ridge == 0:
        return [("ridge", "kr_pred_rel_diff@ridge=0", {"lw": 2.5})]
    if what == "talk":
        tag = f"unscaled_ridge={ridge:g}"
        return [
            ("unscaled", f"kr_pred_rel_diff@{tag}", {"lw": 1.2}),
            ("floor", f"kr_floor@{tag}", {"lw": 1.0, "ls": "--", "marker": "_"}),
        ]
    return [
        ("relative", f"kr_pred_rel_diff@ridge={ridge:g}", {"lw": 1.2}),
        ("absolute", f"kr_pred_rel_diff@abs_ridge={ridge:g}", {"ls": ":", "marker": "x"}),
    ]


def frobenius_vs_epoch(rows, path) -> str:
    """C6: the relative Frobenius error at each checkpoint over its value at init, per
    architecture and width (mean ± std over seeds)."""
    runs: dict = defaultdict(dict)
    for r in rows:
        if r.get("relative_frobenius_error") is not None:
            runs[(arm_of(r), r["width"], r.get("seed"))][r["epoch"]] = r["relative_frobenius_error"]
    ratios: dict = defaultdict(lambda: defaultdict(list))
    for (arm, w, _), d in runs.items():
        if 0 in d and len(d) >= 2:
            for e, v in d.items():
                ratios[(arm, w)][e].append(v / d[0])
    if not ratios:
        return _empty(path, "no training runs with kernels at several checkpoints")
    plt = _plt()
    arms = sorted({a for a, _ in ratios}, key=lambda a: (a[1] != "ntk", a))
    fig, axes = plt.subplots(1, len(arms), figsize=(max(4.6 * len(arms), 7), 4.2), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        for (a, w), d in sorted(ratios.items(), key=lambda kv: kv[0][1]):
            if a != arm:
                continue
            es = sorted(d)
            _series(
                ax, es, [np.mean(d[e]) for e in es], [np.std(d[e]) for e in es], label=f"width {w}"
            )
        ax.axhline(1.0, color="gray", ls=":")
        ax.set(xlabel="epoch", ylabel="error / error at init", title=arm_label(arm))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("C6: how the pNTK approximation changes during training", y=1.0)
    return _save(fig, path)


def cost_vs_outputs(rows, path) -> str:
    """C7 against the number of outputs O, per architecture, depth, width and number of points
    timed: the eNTK/pNTK warm-time ratio with the O and O² guides of the theory; the memory
    ratio of the kernel arrays (O², exactly) and of XLA's compiled computations; and the
    kernel-regression solve's time with the eNTK (NO × NO) and the pNTK (N × N) with an O³
    guide, where the runs timed it."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("time_entk_s") and r.get("time_pntk_s") and r.get("num_outputs"):
            key = (r["model"], r.get("depth"), r.get("width"), r.get("n_cost"))
            groups[key][int(r["num_outputs"])].append(r)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return _empty(path, "no cost runs over several numbers of outputs")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = plt.get_cmap("tab10")
    for i, ((model, depth, width, n), by_o) in enumerate(
        sorted(groups.items(), key=lambda kv: str(kv[0]))
    ):
        os_ = sorted(by_o)
        label = f"{MODEL_LABELS.get(model, model)}-{depth}, width {width}, N = {n}"
        t = [[r["time_entk_s"] / r["time_pntk_s"] for r in by_o[o]] for o in os_]
        _series(
            axes[0],
            os_,
            [np.median(v) for v in t],
            [[np.median(v) - min(v) for v in t], [max(v) - np.median(v) for v in t]],
            label=label,
            color=colors(i),
        )
        for key, style, name in (
            ("array_bytes", {"ls": "none", "marker": "s", "ms": 7, "mfc": "none"}, "arrays"),
            ("kernel_bytes", {"marker": "o"}, "XLA compiled"),
        ):
            pts = [
                (o, np.median([r[f"{key}_entk"] / r[f"{key}_pntk"] for r in by_o[o]]))
                for o in os_
                if all(r.get(f"{key}_entk") and r.get(f"{key}_pntk") for r in by_o[o])
            ]
            if pts:
                _series(
                    axes[1],
                    *zip(*pts, strict=True),
                    color=colors(i),
                    label=f"{label}: {name}",
                    **style,
                )
        solve = _solve_series([r for o in os_ for r in by_o[o]])
        for kind, ls in (("entk", "-"), ("pntk", "--")):
            if solve[kind]:
                xs, ys = zip(*solve[kind], strict=True)
                name = f"{label}: {kind[0]}NTK solve ({'NO × NO' if kind == 'entk' else 'N × N'})"
                _series(axes[2], xs, ys, color=colors(i), ls=ls, label=name)
    o_all = sorted({o for by_o in groups.values() for o in by_o})
    for ax, what in zip(axes[:2], ("warm kernel time (compile excluded)", "memory"), strict=True):
        ax.plot(o_all, o_all, color="gray", ls=":", label="O (theory, Jacobian phase)")
        ax.plot(o_all, [o * o for o in o_all], color="gray", ls="--", label="O² (contraction)")
        _loglog(ax, "number of outputs O", "eNTK / pNTK", f"C7: {what}, eNTK over pNTK")
        ax.legend(fontsize=6)
    solve_x = sorted({float(x) for line in axes[2].lines for x in line.get_xdata()})
    if solve_x:
        top = max(float(y) for line in axes[2].lines for y in line.get_ydata())
        x1 = solve_x[-1]
        axes[2].plot(
            solve_x, [top * (x / x1) ** 3 for x in solve_x], color="gray", ls=":", label="O³"
        )
        _loglog(axes[2], "number of outputs O", "seconds (fastest repeat)", "")
        axes[2].set_title("C7: kernel-regression solve at fixed N", fontsize=10)
        axes[2].legend(fontsize=6)
    else:
        axes[2].text(0.5, 0.5, "no solve timings", ha="center", va="center")
        axes[2].set_axis_off()
    return _save(fig, path)


def _solve_series(rows) -> dict:
    """``{"entk": [(O', fastest seconds)], "pntk": [...]}`` from the rows' timed solves."""
    out: dict = {"entk": [], "pntk": []}
    for kind in out:
        prefix = f"solve_times_{kind}_s@O="
        best: dict = {}
        for r in rows:
            for k, v in r.items():
                if k.startswith(prefix) and v:
                    o = int(k[len(prefix) :])
                    best[o] = min(best.get(o, np.inf), min(v))
        out[kind] = sorted(best.items())
    return out


def cost_vs_width(rows, path) -> str:
    """C7: warm wall time and compiled memory of the eNTK (solid) and the pNTK (dashed) at
    init against width, one colour per architecture and depth (median over repeats)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    groups: dict = defaultdict(list)
    for r in rows:
        if r.get("epoch") == 0 and r.get("time_entk_s") is not None:
            groups[(r["model"], r.get("depth"), r.get("num_outputs"), r.get("n_cost"))].append(r)
    groups = {k: v for k, v in groups.items() if len({r["width"] for r in v}) >= 2}
    if not groups:
        return _empty(path, "no kernel timings over several widths")
    panels = (
        ("time_{}_s", 1.0, "seconds", "warm kernel time (compile excluded)"),
        ("kernel_bytes_{}", 2.0**-20, "MiB", "memory of the compiled kernel (XLA)"),
    )
    colors = plt.get_cmap("tab10")
    for ax, (key, scale, unit, title) in zip(axes, panels, strict=True):
        for i, ((model, depth, o, n), rs) in enumerate(sorted(groups.items(), key=str)):
            for kind, ls in (("entk", "-"), ("pntk", "--")):
                d: dict = defaultdict(list)
                for r in rs:
                    if r.get(key.format(kind)):
                        d[r["width"]].append(r[key.format(kind)] * scale)
                ws = sorted(d)
                name = f"{MODEL_LABELS.get(model, model)}-{depth}, O={o}, N={n}: {kind[0]}NTK"
                _series(ax, ws, [np.median(d[w]) for w in ws], ls=ls, color=colors(i), label=name)
        _loglog(ax, "width", unit, f"C7: {title}")
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
        ax.set(xlabel="eigenvalue index (descending)", ylabel="eigenvalue", title=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
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
        ax.set(xlabel="(input, output) index", ylabel="(input, output) index")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
