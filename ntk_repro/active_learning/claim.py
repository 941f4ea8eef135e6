"""C8, the talk's "main idea" as a checked claim: the linearised look-ahead approximates
retraining the network with the candidate added.

Measured (:func:`measure_c8`, per model and seed, at the network trained on the initial
labelled set L): for a random sample of candidates, the network is actually retrained from
its current weights on L ∪ {x} (x labelled with the class the network predicts, as the
look-ahead scores it), exactly as a round retrains, and on L alone (the control, same steps).
The measured change of the pool subset's outputs is ``f_{L+x}(U) − f_L(U)``; the predicted one
is :func:`ntk.lookahead`'s ``deltas`` with the pNTK and with the eNTK.

Judged (:func:`check_c8`, per model and kernel, over seeds): the correlation r of predicted
and measured changes (all candidates, points and outputs) and their relative error
``‖Δ_pred − Δ_meas‖ / ‖Δ_meas‖``, each as mean ± t(k − 1)·se over the k seeds (95 %).
"""

from __future__ import annotations

import math

import numpy as np

import ntk
from ntk_repro.active_learning.rounds import Setup, draw_round, retrain
from ntk_repro.active_learning.strategies import KERNELS
from ntk_repro.report.verdicts import Claim, combine, mean_se, part, rounded, t_interval, within

SENTENCE = (
    'the talk\'s "NTK Applications" slide: "Main idea: Approximate the behaviour of model '
    'after adding a new datapoint using a linear-ized version!"'
)
# The two bands come from what a prediction must beat, not from the data. A prediction of no
# change at all (Δ_pred = 0) has relative error exactly 1, so a look-ahead that approximates
# retraining has its relative error below 1 and one whose error is above 1 does worse than
# predicting nothing. A correlation of 0 is no linear association: an approximation has r > 0,
# and r ≤ 0 says the predicted changes do not follow the measured ones.
REL_ERROR_BAND = (-math.inf, 1.0)
CORRELATION_BAND = (0.0, math.inf)
RULE = (
    "both parts agree: agrees; either does not: does not agree; otherwise inconclusive "
    "(each part: mean ± t(k − 1)·se over k seeds, 95 %)"
)


def _compare(pred_CUO: np.ndarray, meas_CUO: np.ndarray) -> dict:
    p, m = pred_CUO.ravel(), meas_CUO.ravel()
    l2_p, l2_m = np.linalg.norm(pred_CUO, axis=(1, 2)), np.linalg.norm(meas_CUO, axis=(1, 2))
    return {
        "correlation": float(np.corrcoef(p, m)[0, 1]),
        "relative_error": float(np.linalg.norm(p - m) / np.linalg.norm(m)),
        "l2_rank_correlation": float(
            np.corrcoef(np.argsort(np.argsort(l2_p)), np.argsort(np.argsort(l2_m)))[0, 1]
        ),
        "scale": float(p @ m / (p @ p)),  # least-squares factor of Δ_meas on Δ_pred
    }


def measure_c8(setup: Setup, state, labelled: np.ndarray, seed: int) -> dict:
    """Predicted against measured pool changes for ``claim.n_candidates`` random candidates."""
    cfg, ds = setup.cfg, setup.ds
    candidates, pool = draw_round(len(ds.y_train), labelled, cfg, seed, 0)
    n = int(cfg["claim"]["n_candidates"])
    sample = candidates[
        np.random.default_rng([seed, 0, 3]).choice(len(candidates), n, replace=False)
    ]
    apply_fn, params, kw = setup.apply(state)
    kernels = setup.kernels(apply_fn)
    x_l, y_l, x_u = ds.x_train[labelled], ds.y_train[labelled], ds.x_train[pool]
    pred, labels = {}, None
    for kind in KERNELS:
        la = ntk.lookahead(
            kernels[kind], params, x_l, y_l, ds.x_train[sample], x_u, ridge=float(cfg["ridge"]),
            chunk_size=int(cfg["kernel_batch_size"]), return_deltas=True, **kw,
        )  # fmt: skip
        pred[kind] = la.deltas
        labels = np.argmax(la.candidate_targets, axis=1).astype(ds.y_train.dtype)
    steps = cfg["round_steps"]
    control, _ = retrain(setup, state, x_l, y_l, steps)
    f_ctrl = setup.outputs(control, x_u)
    meas = []
    for i, label in zip(sample, labels, strict=True):
        x = np.concatenate([x_l, ds.x_train[i : i + 1]])
        retrained, _ = retrain(setup, state, x, np.concatenate([y_l, [label]]), steps)
        meas.append(setup.outputs(retrained, x_u) - f_ctrl)
    meas_CUO = np.stack(meas)
    out = {kind: _compare(pred[kind], meas_CUO) for kind in KERNELS}
    out["pntk_vs_entk_relative_difference"] = float(
        np.linalg.norm(pred["pntk"] - pred["entk"]) / np.linalg.norm(pred["entk"])
    )
    out["measured_norm"] = float(np.linalg.norm(meas_CUO))
    out["n_candidates"], out["n_pool_subset"], out["n_labels"] = n, len(pool), len(labelled)
    return out


def _interval(values) -> dict:
    mean, se, df = mean_se(values)
    lo, hi = t_interval(mean, se, df)
    return {
        "mean": rounded(mean),
        "interval": [rounded(lo), rounded(hi)],
        "per_seed": [rounded(v) for v in values],
    }


def check_c8(per_seed: list[dict], model: str) -> list[Claim]:
    """One C8 claim per kernel for ``model`` from its seeds' :func:`measure_c8` results."""
    claims = []
    for kind in KERNELS:
        r = _interval([m[kind]["correlation"] for m in per_seed])
        e = _interval([m[kind]["relative_error"] for m in per_seed])
        ci = [float("nan") if v is None else v for v in r["interval"]]
        ei = [float("nan") if v is None else v for v in e["interval"]]
        parts = [
            part(
                "correlation",
                within(*ci, CORRELATION_BAND),
                "interval of r above 0: agrees; below 0: does not",
                **r,
            ),
            part(
                "relative error",
                within(*ei, REL_ERROR_BAND),
                "interval below 1 (= predicting no change): agrees; above 1: does not",
                **e,
            ),
        ]
        claims.append(
            Claim(
                id="C8",
                model=f"{model}, {kind}",
                claim="the linearised look-ahead approximates retraining with the candidate added",
                measured={
                    "correlation": r,
                    "relative_error": e,
                    "l2_rank_correlation": _interval(
                        [m[kind]["l2_rank_correlation"] for m in per_seed]
                    ),
                    "scale": _interval([m[kind]["scale"] for m in per_seed]),
                    "n_seeds": len(per_seed),
                },
                expected={"correlation": "> 0", "relative_error": "< 1", "source": SENTENCE},
                verdict=combine(p["verdict"] for p in parts),
                rule=RULE,
                parts=parts,
            )
        )
    return claims
