"""The report's aggregate tables: per-run rows averaged over seeds, and the float32,
linearised-network and layer-share tables built from them (plain lists of dicts)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# The kernel metrics of the headline table (means over seeds at initialisation).
HEADLINE = (
    "relative_frobenius_error",
    "lambda_max_rel_error",
    "lambda_min_rel_error",
    "cond_entk",
    "cond_pntk",
    "kr_pred_rel_diff",
    "kr_acc_entk",
    "kr_acc_pntk",
    "lin_acc_entk",
    "lin_acc_pntk",
    "time_entk_s",
    "time_pntk_s",
)


def mean_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Rows averaged over seeds, per (model, parameterization, width)."""
    acc: dict = defaultdict(list)
    for r in rows:
        acc[(r["model"], r.get("parameterization") or "ntk", r["width"])].append(r)
    out = []
    order = {"mlp": 0, "cnn": 1, "resnet18": 2}
    for (m, p, w), rs in sorted(
        acc.items(), key=lambda kv: (kv[0][1] != "ntk", order.get(kv[0][0], 9), kv[0][2])
    ):
        rec = {"model": m, "parameterization": p, "width": w, "seeds": len(rs)}
        for k in keys:
            vals = [r[k] for r in rs if r.get(k) is not None]
            rec[k] = float(np.mean(vals)) if vals else None
        out.append(rec)
    return out


F32_KEYS = ("lambda_min_rel_error", "cond_entk", "kr_pred_rel_diff", "kr_acc_entk")


def float32_effect(rows: list[dict]) -> list[dict]:
    """What float32 kernels change against float64 (runs with ``kernel.compare_float32``)."""
    keys = tuple(k for k in F32_KEYS) + tuple(f"{k}_f32" for k in F32_KEYS)
    keys += ("f32_entk_rel_diff", "f32_pntk_rel_diff")
    picked = [r for r in rows if r.get("f32_entk_rel_diff") is not None]
    return mean_rows(picked, keys)


def linearized_table(rows: list[dict]) -> list[dict]:
    """The MSE-trained arm: the network's test predictions after training against the
    linearised network's (eNTK and pNTK⊗I from init, same steps)."""
    keys = (
        "net_lin_rel_diff_entk",
        "net_lin_rel_diff_pntk",
        "net_acc",
        "lin_t_acc_entk",
        "lin_t_acc_pntk",
        "lin_t_rel_diff",
    )
    last: dict = {}
    for r in rows:
        if r.get("net_lin_rel_diff_entk") is None:
            continue
        k = (r["model"], r.get("parameterization"), r["width"], r.get("seed"))
        if k not in last or r["epoch"] > last[k]["epoch"]:
            last[k] = r
    out = mean_rows(list(last.values()), (*keys, "epoch"))
    return out


def layer_share_table(rows: list[dict]) -> list[dict]:
    """Per model, at the widest width with a layer diagnosis (``kernel.layer_shares``), each
    parameter group's share of Θ and of Θ − pNTK⊗I (mean over seeds), largest error first."""
    out = []
    by_arm: dict = defaultdict(list)
    for r in rows:
        if any(k.startswith("error_share_") for k in r):
            by_arm[(r["model"], r.get("parameterization") or "ntk")].append(r)
    for (model, param), rs in sorted(by_arm.items()):
        w = max(r["width"] for r in rs)
        wide = [r for r in rs if r["width"] == w]
        groups = sorted(
            {k[len("error_share_") :] for r in wide for k in r if k.startswith("error_share_")}
        )
        for g in groups:
            out.append(
                {
                    "model": model,
                    "parameterization": param,
                    "width": w,
                    "group": g,
                    "kernel_share": float(np.mean([r.get(f"kernel_share_{g}", 0.0) for r in wide])),
                    "error_share": float(np.mean([r.get(f"error_share_{g}", 0.0) for r in wide])),
                }
            )
    return sorted(out, key=lambda d: (d["model"], -d["error_share"]))


# The library's cost model against the measured times: a miss is a measured eNTK/pNTK time
# ratio more than this factor from the ratio of the FLOPs the model predicts (FLOP rates
# differ between the two programs: GEMM sizes, memory traffic). A property of the library,
# not a claim of the paper: no verdict uses it.
COST_MODEL_FACTOR = 2.0


def cost_model(rows: list[dict]) -> dict:
    """The library's FLOP model (:mod:`ntk.kernels.estimates`, the implementation that ran)
    against the measured warm times of the cost runs.

    Returns ``{"rows": [...], "misses": [...], "factor": 2.0}``: one row per model, depth,
    width, N, O and kind (``time_s`` median over runs, ``flops`` predicted, ``gflops_per_s``
    achieved), plus per (model, depth, width, N, O) the measured and predicted eNTK/pNTK
    ratios and measured/predicted; ``misses`` names each (model, depth, width, N, O) whose
    measured/predicted is outside [1/factor, factor]."""
    groups: dict = defaultdict(list)
    for r in rows:
        if r.get("time_entk_s") and r.get("time_pntk_s") and r.get("flops_entk"):
            key = (r["model"], r.get("depth"), r.get("width"), r.get("n_cost"), r["num_outputs"])
            groups[key].append(r)
    order = {"mlp": 0, "cnn": 1, "resnet18": 2}
    out, misses = [], []
    for key in sorted(groups, key=lambda k: (order.get(k[0], 9), *(v or 0 for v in k[1:]))):
        model, depth, width, n, o = key
        rs = groups[key]
        ratio = {}
        for kind in ("entk", "pntk"):
            t = float(np.median([r[f"time_{kind}_s"] for r in rs]))
            f = float(np.median([r[f"flops_{kind}"] for r in rs if r.get(f"flops_{kind}")]))
            ratio[kind] = (t, f)
            out.append(
                {
                    "model": model,
                    "depth": depth,
                    "width": width,
                    "N": n,
                    "O": o,
                    "kind": kind,
                    "implementation": rs[0].get(f"implementation_{kind}"),
                    "time_s": t,
                    "flops": f,
                    "gflops_per_s": f / t / 1e9,
                }
            )
        measured = ratio["entk"][0] / ratio["pntk"][0]
        predicted = ratio["entk"][1] / ratio["pntk"][1]
        factor = measured / predicted
        out[-1].update(measured_ratio=measured, predicted_ratio=predicted, factor=factor)
        out[-2].update(measured_ratio=measured, predicted_ratio=predicted, factor=factor)
        if not 1 / COST_MODEL_FACTOR <= factor <= COST_MODEL_FACTOR:
            misses.append(
                f"{model}-{depth} width {width}, N = {n}, O = {o}: measured eNTK/pNTK "
                f"{measured:.3g}× against the model's {predicted:.3g}× ({factor:.2f}×)"
            )
    return {"rows": out, "misses": misses, "factor": COST_MODEL_FACTOR}
