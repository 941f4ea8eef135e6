"""Tables and plots of the benchmark suite (:mod:`benchmarks.suite`): Markdown for the
README and PNG figures of the scaling sweeps and the implementation comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _header(m: dict) -> list[str]:
    return [
        f"Measured on {m['description']} ({m['platform']}, {m['device']}), jax {m['jax']}, "
        f"float32, jit; warm: median (and min) over up to {m['rounds']} interleaved rounds, "
        "every implementation of a case in turn in one process; ratios (vs jacobian) from the "
        "minima; GFLOP/s = nominal FLOPs of the "
        "algorithm (the cost model of `auto`) / warm time; measured GEMM rate "
        f"{m['gemm']['jax_gflops']:.0f} GFLOP/s (jax), {m['gemm']['numpy_gflops']:.0f} (numpy).",
    ]


def _case_table(rows: list[dict], gemm: float) -> list[str]:
    """Anchor and model rows, with the speed-up over Jacobian contraction."""
    lines = [
        "",
        "| model | N | kind | implementation | warm | compile | GFLOP/s (% GEMM) "
        "| peak RSS | XLA temp | vs jacobian |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in rows if r.get("section") in ("anchor", "models")]
    base = {
        (r["model"], r["kind"]): r["warm_min_s"]
        for r in rows
        if r["implementation"] == "jacobian" and "warm_min_s" in r
    }
    for r in rows:
        head = f"| {r['model']} | {r['n']} | {r['kind']} "
        if "warm_median_s" not in r:
            why = r.get("skipped") or r.get("error")
            lines.append(f"{head}| {r['implementation']} | {why} | | | | | |")
            continue
        ratio = base.get((r["model"], r["kind"]))
        pct = 100 * r["gflops_per_s"] / gemm
        impl = r["implementation"] + (f" ({r['chosen']})" if r["implementation"] == "auto" else "")
        speedup = f"{ratio / r['warm_min_s']:.0f}x" if ratio else ""  # ratios: minima
        lines.append(
            f"{head}| {impl} | {_fmt_s(r['warm_median_s'])} "
            f"| {_fmt_s(r['compile_s'])} | {r['gflops_per_s']:.1f} ({pct:.0f}%) "
            f"| {r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['xla_temp_bytes'] / 2**20:.0f} MiB "
            f"| {speedup} |"
        )
    return lines


def _overhead_table(rows: list[dict]) -> list[str]:
    """kernel_fn and ntk.kernel against the same kernel inside the caller's jit."""
    over = [r for r in rows if r.get("section") == "overhead" and "kernel_fn_s" in r]
    if not over:
        return []
    lines = [
        "",
        "Per-call overhead of the API: `ntk.kernel_fn` and the one-shot `ntk.kernel` against "
        "the same kernel inside the caller's `jax.jit` (interleaved, warm, median of "
        f"{over[0]['calls']} calls; goal: kernel_fn ≤ 1.10 × caller jit + 0.2 ms):",
        "",
        "| model | N | kind | implementation | caller jit | kernel_fn | ratio | extra "
        "| ntk.kernel | meets goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in over:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['kind']} | {r['implementation']} "
            f"| {_fmt_s(r['caller_jit_s'])} | {_fmt_s(r['kernel_fn_s'])} "
            f"| {r['kernel_fn_ratio']:.3f} | {r['kernel_fn_extra_s'] * 1e3:.3f} ms "
            f"| {_fmt_s(r['kernel_s'])} | {'yes' if r['meets_goal'] else 'no'} |"
        )
    return lines


def _slopes_table(slopes: dict) -> list[str]:
    if not slopes:
        return []
    lines = [
        "",
        "Fitted time exponents (log-log slope; top half = the larger sizes):",
        "",
        "| implementation | variable | slope | top half | theory |",
        "|---|---|---|---|---|",
    ]
    for impl, d in slopes.items():
        for var, s in d.items():
            top = f"{s['slope_top_half']:.2f}" if s["slope_top_half"] is not None else ""
            lines.append(f"| {impl} | {var} | {s['slope']:.2f} | {top} | {s['theory']} |")
    return lines


def markdown(result: dict) -> str:
    """The README table: anchor and model rows, the API overhead, the fitted exponents."""
    m = result["machine"]
    lines = _header(m) + _case_table(result["rows"], m["gemm"]["jax_gflops"])
    lines += _overhead_table(result["rows"]) + _slopes_table(result.get("slopes"))
    return "\n".join(lines) + "\n"


SWEEPS = (("scale_n", "n"), ("scale_width", "width"), ("scale_o", "o"))
PLOTTED = ("jacobian", "ntk_vp", "structured")


def _warm_points(rows: list[dict], section: str, var: str, impl: str) -> list[tuple]:
    return sorted(
        (r[var], r["warm_median_s"])
        for r in rows
        if r.get("section") == section and r["implementation"] == impl and "warm_median_s" in r
    )


def _scaling_figure(plt, result: dict):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (section, var) in zip(axes, SWEEPS, strict=True):
        for impl in PLOTTED:
            pts = _warm_points(result["rows"], section, var, impl)
            if len(pts) >= 2:
                slope = result["slopes"].get(impl, {}).get(var, {}).get("slope", float("nan"))
                ax.loglog(*zip(*pts, strict=True), "o-", label=f"{impl} (slope {slope:.2f})")
        sizes = sorted(
            {x for impl in PLOTTED for x, _ in _warm_points(result["rows"], section, var, impl)}
        )
        ax.set_xticks(sizes, [str(x) for x in sizes], minor=False)
        ax.set_xticks([], minor=True)  # the measured sizes only: log minor labels overlap
        ax.set(xlabel=var, ylabel="warm time [s]", title=f"full eNTK, MLP: time vs {var}")
        if ax.get_legend_handles_labels()[0]:  # a sweep with no timed rows has no series
            ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    return fig


def _implementations_figure(plt, result: dict):
    rows = [
        r
        for r in result["rows"]
        if r.get("section") in ("anchor", "models")
        and "warm_median_s" in r
        and r["implementation"] != "auto"
    ]
    groups = sorted({(r["model"], r["kind"]) for r in rows})
    warm = {(r["model"], r["kind"], r["implementation"]): r["warm_median_s"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 1.1), 4))
    width = 0.8 / len(PLOTTED)
    for i, impl in enumerate(PLOTTED):
        vals = [warm.get((*g, impl), np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, vals, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(groups)) + width, [f"{m}\n{k}" for m, k in groups], fontsize=8)
    ax.set_ylabel("warm time [s]")
    ax.legend()
    return fig


def plot(result: dict, out_dir: Path) -> list[str]:
    """``scaling.png`` (time vs N, width, O; only when the scaling sweeps ran, not with
    ``quick``) and ``implementations.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [("implementations", _implementations_figure)]
    if any(str(r.get("section", "")).startswith("scale_") for r in result["rows"]):
        figures.insert(0, ("scaling", _scaling_figure))
    files = []
    for name, make in figures:
        fig = make(plt, result)
        fig.tight_layout()
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files
