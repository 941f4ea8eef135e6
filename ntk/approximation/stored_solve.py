"""The stored mode's per-kernel phases: each kernel's spectrum (:func:`spectrum`) and its
regressions (:func:`regression`), and :class:`StoredState`, what they share."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ntk.approximation.compare import diag_NO, nn_eig, nn_prediction, rank_zeros, singular_note
from ntk.approximation.inputs import Context
from ntk.approximation.result import ridge_key
from ntk.approximation.stores import StoredOperator, dense_nn, operator
from ntk.implicit import extreme_eigenvalues
from ntk.kernels.estimates import default_memory_budget
from ntk.regression import kernel_regression
from ntk.scale import cholesky


class StoredState:
    """What the spectrum and regression phases share: the inputs, ``root``, the settings,
    the opened stores (``train``, ``test``: by kernel name), ``tr Θ``, each kernel's count of
    zero eigenvalues by rank and, for the kernel at hand, its dense copy and its factors (kept
    between its phases, dropped by :meth:`release`)."""

    def __init__(self, ctx: Context, root: Path, settings: dict, progress: bool, callback,
                 train: dict, test: dict, trace: float):  # fmt: skip
        self.ctx, self.root, self.settings = ctx, root, settings
        self.progress, self.callback = progress, callback
        self.train, self.test, self.trace = train, test, trace
        self.budget = default_memory_budget() if ctx.memory_budget is None else ctx.memory_budget
        self.zeros = {
            n_: rank_zeros(n_, ctx.n, ctx.o, ctx.n_params, ctx.options.get(n_, {}))
            for n_ in ("entk", *ctx.kinds)
        }
        self._dense: dict[str, tuple] = {}
        self._factors: dict[tuple[str, float], Any] = {}

    def operator(self, kernel, phase: str) -> tuple[StoredOperator, Any]:
        return operator(kernel, phase, self.progress, self.callback)

    def read_whole(self, name: str) -> bool:
        """An N × N kind (or diagonal's O of them) within budget/4 is read whole."""
        kernel = self.train[name]
        return kernel.ndim != 4 and 4 * 8 * math.prod(kernel.shape) <= self.budget

    def dense(self, name: str) -> tuple:
        """``(diagonal [N, O] or None, eigenvalues, solver(s))`` of an N × N kind (or
        diagonal's O of them) read whole: LAPACK, exact, as in memory."""
        if name not in self._dense:
            k_tt = dense_nn(self.train[name])
            eig, solver = nn_eig(name, k_tt, self.ctx.o, self.ctx.y is not None, self.zeros[name])
            self._dense[name] = (diag_NO(k_tt), eig, solver)
        return self._dense[name]

    def factored(self, name: str, r: float) -> tuple[Any, str | None]:
        """``(Cholesky of K + r·mean(diag K)·I on disk, None)`` or ``(None, why)``."""
        if (name, r) not in self._factors:
            ctx, kernel = self.ctx, self.train[name]
            mean_diag = self.trace / (ctx.n * ctx.o) if name == "entk" else None
            if mean_diag is None:
                mean_diag = float(np.mean(kernel.diagonal()))
            dim = ctx.n * ctx.o if kernel.ndim == 4 else ctx.n
            try:
                self._factors[name, r] = (
                    cholesky.factor(
                        kernel,
                        self.root / "factors" / f"{name}_{ridge_key(r)}",
                        shift=r * mean_diag,
                        cache=8 * 4 * dim**2 <= self.budget,  # the panels, 4·D², within budget/8
                        progress=self.progress,
                        callback=self.callback,
                        desc=f"cholesky {name} ridge {r:g}",
                    ),
                    None,
                )
            except cholesky.NotPositiveDefinite as e:
                self._factors[name, r] = None, f"{name}, ridge {r:g}: {e}"
        return self._factors[name, r]

    def release(self, name: str) -> None:
        """Drop kernel ``name``'s dense copy and factors (the phases reading them are saved)."""
        self._dense.pop(name, None)
        for r in self.ctx.ridges:
            self._factors.pop((name, r), None)
        shutil.rmtree(self.root / "factors", ignore_errors=True)


def spectrum(state: StoredState, name: str) -> dict:
    """Phase "spectrum_NAME": ``{"lambda_max", "lambda_min", "note"}`` of kernel ``name``:
    exact when read whole; else λ_max by Lanczos and λ_min by Lanczos on its factor's solves
    (diagonal: Lanczos at both ends; 0 where it is 0 by rank)."""
    kernel, zeros = state.train[name], state.zeros[name]
    if state.read_whole(name):
        w = state.dense(name)[1]
        return {"lambda_max": float(w[-1]), "lambda_min": float(w[0]), "note": None}
    tol, note = state.settings["lanczos_tol"], None
    op, bar = state.operator(kernel, f"eigenvalues {name}")
    try:
        ends = "both" if kernel.ndim == 3 and not zeros else "largest"
        out = extreme_eigenvalues(op, k=1, tol=tol, ends=ends)
        lam_max, lam_min = out["lambda_max"], out["lambda_min"]  # diagonal: Lanczos both
        if zeros:
            lam_min = 0.0  # by rank; noted
        elif kernel.ndim != 3:  # the eNTK or an N × N kind: by its factor
            f, why = state.factored(name, 0.0)
            if f is None:
                lam_min, note = 0.0, f"{why}; λ_min reported as 0"
            else:
                low = cholesky.smallest_eigenvalues(f, tol=tol, tick=op.tick)
                lam_min = float(low["smallest"][0])
    except RuntimeError as e:
        return {"lambda_max": math.nan, "lambda_min": math.nan, "note": f"{name}: {e}"}
    finally:
        bar.close()
    return {"lambda_max": lam_max, "lambda_min": lam_min, "note": note}


def regression(state: StoredState, name: str, r: float) -> dict:
    """Phase "regression_NAME_ridge=R": ``{"pred": [M, O] list or None, "note"}``, kernel
    ``name``'s predictions on the test points with relative ridge ``r``."""
    if name == "entk":
        pred, note = _predict_entk(state, r)
    elif state.read_whole(name):
        pred, note = _predict_whole(state, name, r)
    else:
        pred, note = _predict_cg(state, name, r)
    return {"pred": None if pred is None else np.asarray(pred).tolist(), "note": note}


def _predict_entk(state: StoredState, r: float) -> tuple[np.ndarray | None, str | None]:
    """By the factor of ``Θ + r·mean(diag Θ)·I``: exact, no iteration count."""
    ctx = state.ctx
    if r == 0 and state.zeros["entk"]:
        return None, (
            "entk, ridge 0: Θ is rank-deficient (see above); the stored report has no "
            "minimum-norm least-squares solve, so only the ridge is compared"
        )
    f, why = state.factored("entk", r)
    if f is None:
        return None, why
    alpha = f.solve(ctx.y.reshape(-1)).reshape(ctx.n, ctx.o)
    op_st, bar = state.operator(state.test["entk"], f"predict entk ridge {r:g}")
    with bar:
        return op_st.matvec(alpha), None


def _predict_whole(state: StoredState, name: str, r: float) -> tuple[np.ndarray, str | None]:
    """As in memory, from the same ``eigh`` as the spectrum."""
    d_NO, _, solver = state.dense(name)
    k_st = np.asarray(state.test[name], np.float64)
    pred, singular = nn_prediction(solver, d_NO, k_st, state.ctx.y, r)
    return pred, (singular_note(name, r) if singular else None)


def _predict_cg(state: StoredState, name: str, r: float) -> tuple[np.ndarray | None, str | None]:
    """By conjugate gradients on the stored operator (an unconverged solve: None, a note)."""
    op_tt, bar = state.operator(state.train[name], f"cg {name} ridge {r:g}")
    op_st, _ = state.operator(state.test[name], f"cg {name} ridge {r:g}")
    s = state.settings
    try:
        pred = kernel_regression(
            op_tt, op_st, state.ctx.y, ridge=r, tol=s["cg_tol"], maxiter=s["cg_maxiter"]
        )
        return pred, None
    except RuntimeError as e:
        return None, f"{name}, ridge {r:g}: {e}"
    finally:
        bar.close()
