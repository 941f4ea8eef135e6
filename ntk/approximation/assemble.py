"""The report from either mode's raw numbers: condition numbers, errors relative to the eNTK,
the regressions' comparison, and the model facts."""

from __future__ import annotations

import math

import numpy as np

from ntk.approximation.inputs import Context
from ntk.approximation.model_facts import model_facts
from ntk.approximation.result import ApproximationReport, KindReport, ridge_key
from ntk.regression import accuracy


def _rel_err(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return abs(a - b) / abs(b) if b != 0 else math.inf


def _cond_of(lam_max: float, lam_min: float) -> float:
    if math.isnan(lam_max) or math.isnan(lam_min):
        return math.nan
    return lam_max / lam_min if lam_min > 0 else math.inf


def assemble(ctx: Context, raw: dict, y_te) -> ApproximationReport:
    """The report from ``raw`` (:func:`ntk.approximation.in_memory.in_memory` or
    :func:`ntk.approximation.stored.stored`) and the test targets ``y_te``.

    ``raw``: ``"entk"`` (``warm_seconds``, ``compiled_bytes``, ``implementation``, ``trace``,
    ``lambda_max``, ``lambda_min``), ``"kinds"`` (per kind the same but ``trace``, plus
    ``relative_frobenius_error`` and the kernel's ``ndim``), ``"preds"`` (``(name, ridge)`` ->
    predictions ``[M, O]`` or None), ``"spectra"`` (empty when stored), ``"notes"``,
    ``"cost_shape"``."""
    e = raw["entk"]
    kinds = {name: _kind(ctx, name, raw, y_te) for name in ctx.kinds}
    width, leaves, share = model_facts(ctx.model, ctx.params, ctx.x, e["trace"])
    return ApproximationReport(
        n=ctx.n,
        n_test=ctx.m,
        o=ctx.o,
        n_params=ctx.n_params,
        readout_width=width,
        readout_leaves=leaves,
        readout_share=share,
        mode="in memory" if raw["spectra"] else "stored",
        ridges=ctx.ridges,
        cost_shape=tuple(int(s) for s in raw["cost_shape"]),
        entk=_entk(ctx, e, raw["preds"], y_te),
        kinds=kinds,
        spectra=raw["spectra"],
        notes=tuple(raw["notes"]),
    )


def _entk(ctx: Context, e: dict, preds: dict, y_te) -> dict:
    """The report's ``entk`` entry from the eNTK's raw numbers ``e``."""
    entk_reg = {}
    for r in ctx.ridges:
        p = preds.get(("entk", r))
        acc = None if p is None or y_te is None else accuracy(p, y_te)
        entk_reg[ridge_key(r)] = {"accuracy": acc}
    return {
        "lambda_max": e["lambda_max"],
        "lambda_min": e["lambda_min"],
        "cond": _cond_of(e["lambda_max"], e["lambda_min"]),
        "warm_seconds": e["warm_seconds"],
        "compiled_bytes": e["compiled_bytes"],
        "implementation": e["implementation"],
        "regression": entk_reg if ctx.y is not None else {},
    }


def _kind(ctx: Context, name: str, raw: dict, y_te) -> KindReport:
    """Kind ``name``'s entry against the eNTK."""
    k, e = raw["kinds"][name], raw["entk"]
    reg = {}
    for r in ctx.ridges if ctx.y is not None else ():
        p, p_e = raw["preds"].get((name, r)), raw["preds"].get(("entk", r))
        reg[ridge_key(r)] = _regression(p, p_e, y_te)
    return KindReport(
        kind=name,
        compared_as="A⊗I_O" if k["ndim"] == 2 else "diag blocks",
        relative_frobenius_error=k["relative_frobenius_error"],
        lambda_max=k["lambda_max"],
        lambda_min=k["lambda_min"],
        lambda_max_rel_error=_rel_err(k["lambda_max"], e["lambda_max"]),
        lambda_min_rel_error=_rel_err(k["lambda_min"], e["lambda_min"]),
        cond=_cond_of(k["lambda_max"], k["lambda_min"]),
        warm_seconds=k["warm_seconds"],
        compiled_bytes=k["compiled_bytes"],
        implementation=k["implementation"],
        regression=reg,
    )


def _regression(p: np.ndarray | None, p_e: np.ndarray | None, y_te) -> dict:
    """A kind's predictions ``p`` against the eNTK's ``p_e`` (None where either is missing)."""
    if p is None or p_e is None:
        return {"pred_rel_diff": None, "accuracy": None, "argmax_agreement": None}
    norm = np.linalg.norm(p_e)
    return {
        "pred_rel_diff": float(np.linalg.norm(p - p_e) / norm) if norm else math.inf,
        "accuracy": None if y_te is None else accuracy(p, y_te),
        "argmax_agreement": float(np.mean(np.argmax(p, 1) == np.argmax(p_e, 1))),
    }
