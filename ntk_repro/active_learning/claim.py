"""C8, the talk's "main idea" as a checked claim: the linearised look-ahead approximates
retraining the network with the candidate added.

Measured (:func:`measure_c8`, per model and seed, at the network trained on the initial
labelled set L): for a random sample of candidates, the network is actually retrained from
its current weights on L ∪ {x} (x labelled with the class the network predicts, as the
look-ahead scores it), exactly as a round retrains (``round_steps`` steps of momentum SGD),
and on L alone (the control, same steps). The measured change of the pool subset's outputs
is ``f_{L+x}(U) − f_L(U)``; the predicted one is the look-ahead's ``deltas``
(:func:`ntk.lookahead_from_kernels`: the linearised network trained *to convergence*) with
the pNTK and with the eNTK. A retrain of finitely many steps need not have converged, so
beside the verdict each seed records how far the retrains got (their training loss at the
last step over that at the first) and the linearised network after the *same* steps of the
same optimiser (:func:`linear_steps`, the function-space dynamics of momentum SGD on the
linearised network; only for constant-rate SGD without weight decay), compared with the
measured change in the same way.

Judged (:func:`check_c8`, per model and kernel, over seeds): the correlation r of the
converged look-ahead's and the measured changes (all candidates, points and outputs) and
their relative error ``‖Δ_pred − Δ_meas‖ / ‖Δ_meas‖``, each as mean ± t(k − 1)·se over the k
seeds (95 %). Agreement means the look-ahead predicts the change better than predicting no
change; it does not mean the prediction is accurate.
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
    "compared: the look-ahead's change of the pool outputs (the linearised network trained to "
    "convergence on L ∪ {x}, minus on L) against the measured one (the network after the "
    "round's momentum-SGD steps on L ∪ {x}, minus after the same steps on L); both parts "
    "agree: agrees; either does not: does not agree; otherwise inconclusive (each part: "
    "mean ± t(k − 1)·se over k seeds, 95 %). r > 0 and relative error < 1 mean the look-ahead "
    "is better than predicting no change, not that it is accurate; whether the retrains "
    "converged (last over first training loss) and the linearised network after the same "
    "steps are reported beside the verdict, not part of it"
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


def linear_steps(
    k_tt: np.ndarray, k_ut: np.ndarray, resid: np.ndarray, n_points: int, steps: int, opt: dict
) -> tuple[np.ndarray, float]:
    """The linearised network after ``steps`` steps of full-batch SGD with momentum (optax's:
    trace ← g + μ·trace, θ ← θ − lr·trace, from a fresh trace) on the mean over the
    ``n_points`` training points of ``½‖f − y‖²``, in function space: each step moves the
    outputs by ``−lr·K_{·T}·trace``, with trace ← ``K_{·T}(f_T − y_T)/n_points + μ·trace``.

    ``k_tt`` ``[Tq, Tq]``, ``k_ut`` ``[Uq, Tq]`` and ``resid`` ``[Tq, t]`` = f0(T) − y_T in
    the look-ahead's layout (q = 1, t = O for an N×N kernel used as K ⊗ I_O; q = O, t = 1
    for the eNTK); ``opt``: ``learning_rate`` and ``momentum``. Returns the change of the U
    outputs ``[Uq, t]`` and the training loss after the steps over that before them."""
    lr, mu = float(opt["learning_rate"]), float(opt.get("momentum") or 0.0)
    r = np.array(resid, np.float64)
    tr_t, tr_u = np.zeros_like(r), np.zeros((k_ut.shape[0], r.shape[1]))
    d_u = np.zeros_like(tr_u)
    start = float(np.sum(r**2))
    for _ in range(int(steps)):
        g = r / n_points
        tr_t = k_tt @ g + mu * tr_t
        tr_u = k_ut @ g + mu * tr_u
        r -= lr * tr_t
        d_u -= lr * tr_u
    return d_u, float(np.sum(r**2)) / start


def _same_steps_applies(opt: dict) -> bool:
    """:func:`linear_steps` models constant-rate SGD (with momentum) without weight decay."""
    return (
        opt.get("name") == "sgd"
        and opt.get("schedule", "constant") == "constant"
        and not opt.get("weight_decay")
        and not opt.get("nesterov")
    )


def _as_matrix(k: np.ndarray) -> np.ndarray:
    return k if k.ndim == 2 else ntk.as_matrix(k)


def _same_steps(k: dict, f0: dict, y_l, labels, steps: int, opt: dict) -> tuple[np.ndarray, list]:
    """The linearised network's change of U after ``steps`` steps on L ∪ {x} minus after the
    same steps on L, per candidate ``[C, U, O]``, and the loss ratios (control first)."""
    o = f0["l"].shape[1]
    q = o if k["ll"].ndim == 4 else 1
    n, u = len(y_l), f0["u"].shape[0]
    y_l = np.eye(o)[y_l]

    def run(k_tt, k_ut, resid, m):
        d, ratio = linear_steps(
            _as_matrix(k_tt), _as_matrix(k_ut), resid.reshape(m * q, o // q), m, steps, opt
        )
        return d.reshape(u, o), ratio

    ctrl, ratios = run(k["ll"], k["ul"], f0["l"] - y_l, n)
    ratios, out = [ratios], []
    for i, label in enumerate(labels):
        k_ls = k["ls"][:, i : i + 1]
        k_sl = k_ls.transpose(1, 0, 3, 2) if q > 1 else k_ls.T  # K(x, L) = K(L, x)ᵀ
        k_tt = np.concatenate(
            [
                np.concatenate([k["ll"], k_ls], axis=1),
                np.concatenate([k_sl, k["ss"][i : i + 1, i : i + 1]], axis=1),
            ]
        )
        k_ut = np.concatenate([k["ul"], k["us"][:, i : i + 1]], axis=1)
        resid = np.concatenate([f0["l"] - y_l, f0["s"][i : i + 1] - np.eye(o)[[label]]])
        d, ratio = run(k_tt, k_ut, resid, n + 1)
        out.append(d - ctrl)
        ratios.append(ratio)
    return np.stack(out), ratios


def measure_c8(setup: Setup, state, labelled: np.ndarray, seed: int) -> dict:
    """Predicted against measured pool changes for ``claim.n_candidates`` random candidates,
    with the retrains' losses and the linearised network after the same steps."""
    cfg, ds = setup.cfg, setup.ds
    candidates, pool = draw_round(len(ds.y_train), labelled, cfg, seed, 0)
    n = int(cfg["claim"]["n_candidates"])
    sample = candidates[
        np.random.default_rng([seed, 0, 3]).choice(len(candidates), n, replace=False)
    ]
    apply_fn, params, kw = setup.apply(state)
    kernels = setup.kernels(apply_fn)
    x_l, y_l, x_u, x_s = (
        ds.x_train[labelled],
        ds.y_train[labelled],
        ds.x_train[pool],
        ds.x_train[sample],
    )
    f0 = {
        "l": setup.outputs(state, x_l),
        "s": setup.outputs(state, x_s),
        "u": setup.outputs(state, x_u),
    }
    labels = np.argmax(f0["s"], axis=1).astype(ds.y_train.dtype)  # the look-ahead's default
    steps, opt = int(cfg["round_steps"]), dict(cfg["optimizer"])
    pred, lin, lin_ratios = {}, {}, {}
    for kind in KERNELS:
        fn = kernels[kind]
        k = {
            "ll": fn(params, x_l, **kw), "ls": fn(params, x_l, x_s, **kw),
            "ss": fn(params, x_s, **kw), "ul": fn(params, x_u, x_l, **kw),
            "us": fn(params, x_u, x_s, **kw),
        }  # fmt: skip
        k = {key: np.asarray(v, np.float64) for key, v in k.items()}
        la = ntk.lookahead_from_kernels(
            k["ll"], k["ls"], k["ss"], k["ul"], k["us"], y_l, f0["l"], f0["s"], f0["u"],
            candidate_labels=labels, ridge=float(cfg["ridge"]), return_deltas=True,
        )  # fmt: skip
        pred[kind] = la.deltas
        if _same_steps_applies(opt):
            lin[kind], lin_ratios[kind] = _same_steps(k, f0, y_l, labels, steps, opt)
    control, ctrl_loss = retrain(setup, state, x_l, y_l, steps)
    f_ctrl = setup.outputs(control, x_u)
    meas, losses = [], [ctrl_loss]
    for i, label in zip(sample, labels, strict=True):
        x = np.concatenate([x_l, ds.x_train[i : i + 1]])
        retrained, loss = retrain(setup, state, x, np.concatenate([y_l, [label]]), steps)
        meas.append(setup.outputs(retrained, x_u) - f_ctrl)
        losses.append(loss)
    meas_CUO = np.stack(meas)
    out = {kind: _compare(pred[kind], meas_CUO) for kind in KERNELS}
    for kind in lin:
        out[kind]["same_steps"] = _compare(lin[kind], meas_CUO)
        out[kind]["same_steps"]["loss_ratio_max"] = float(np.max(lin_ratios[kind]))
    out["retrain_loss_ratio_max"] = float(max(v["end"] / v["start"] for v in losses))
    out["retrain_losses"] = losses  # control first, then each candidate's
    out["pntk_vs_entk_relative_difference"] = float(
        np.linalg.norm(pred["pntk"] - pred["entk"]) / np.linalg.norm(pred["entk"])
    )
    out["measured_norm"] = float(np.linalg.norm(meas_CUO))
    out["n_candidates"], out["n_pool_subset"], out["n_labels"] = n, len(pool), len(labelled)
    out["steps"] = steps
    return out


def _interval(values) -> dict:
    mean, se, df = mean_se(values)
    lo, hi = t_interval(mean, se, df)
    return {
        "mean": rounded(mean),
        "interval": [rounded(lo), rounded(hi)],
        "per_seed": [rounded(v) for v in values],
    }


def _context(per_seed: list[dict], kind: str) -> dict:
    """Beside the verdict: how far the retrains got (max over a seed's retrains of the last
    step's training loss over the first's) and the linearised network after the same steps
    (r, relative error, its own loss ratio), where every seed measured them."""
    out = {}
    if all("retrain_loss_ratio_max" in m for m in per_seed):
        out["retrain_loss_ratio_max"] = _interval([m["retrain_loss_ratio_max"] for m in per_seed])
    if all("same_steps" in m[kind] for m in per_seed):
        out["same_steps"] = {
            key: _interval([m[kind]["same_steps"][key] for m in per_seed])
            for key in ("correlation", "relative_error", "loss_ratio_max")
        }
    return out


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
                    **_context(per_seed, kind),
                    "n_seeds": len(per_seed),
                },
                expected={"correlation": "> 0", "relative_error": "< 1", "source": SENTENCE},
                verdict=combine(p["verdict"] for p in parts),
                rule=RULE,
                parts=parts,
            )
        )
    return claims
