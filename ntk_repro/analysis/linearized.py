"""The linearised network: gradient descent on the MSE loss in closed form from the kernels
at init, against the trained network.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ntk.metrics import as_matrix
from ntk.regression import accuracy
from ntk_repro.analysis.calls import rel_diff


def linearized_gd(k_train, k_test_train, y_NO, f0_train_NO, f0_test_MO, *, lr, steps):
    """Test predictions ``[M, O]`` of the linearised network after ``steps`` full-batch
    gradient-descent steps on the loss ``mean_n ½‖f(x_n) − y_n‖²`` with learning rate ``lr``:

    ``f_t(X*) = f0(X*) + Θ(X*, X) Θ⁻¹ (I − (I − lr·Θ/N)^t) (Y − f0(X))``

    with ``Θ`` the eNTK ``[N, N, O, O]`` (an NO×NO system) or an ``[N, N]`` kernel used as
    ``K ⊗ I`` (the pNTK); computed in float64 through the eigenvalues of Θ (directions with
    λ → 0 contribute ``t·lr/N``, the t-step limit). Lee et al. (2019): a wide network trained
    so follows its linearisation.
    """
    y, f0, f0s = (np.asarray(a, np.float64) for a in (y_NO, f0_train_NO, f0_test_MO))
    n, o = y.shape
    if np.ndim(k_train) == 4:
        k, ks = as_matrix(k_train), as_matrix(k_test_train)
        resid = (y - f0).reshape(n * o, 1)
    else:
        k, ks = np.asarray(k_train, np.float64), np.asarray(k_test_train, np.float64)
        resid = y - f0
    lam, vecs = np.linalg.eigh(0.5 * (k + k.T))
    lam = np.maximum(lam, 0.0)
    a = lr * lam / n
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(
            a < 1.0, -np.expm1(steps * np.log1p(-np.minimum(a, 0.999999))), 1.0 - (1.0 - a) ** steps
        )
        coef = np.where(lam > lam.max() * 1e-14, shrink / lam, steps * lr / n)
    step = ks @ (vecs @ (coef[:, None] * (vecs.T @ resid)))
    return f0s + step.reshape(f0s.shape)


def linearized_vs_network(init: Mapping[str, np.ndarray], f_test_MO, y_test, *, lr, steps):
    """Scalars comparing the trained network's test outputs ``f_test_MO`` at ``steps`` with
    the linearised network from the init kernels (``init``: the arrays of
    :func:`ntk_repro.analysis.quality.kernel_metrics` at step 0: ``entk``, ``entk_test``,
    ``pntk``, ``pntk_test``, ``f_train``, ``f_test``, ``y_train``)."""
    o = init["entk"].shape[-1]
    y = np.eye(o)[np.asarray(init["y_train"])]
    args = (y, init["f_train"], init["f_test"])
    lin_e = linearized_gd(init["entk"], init["entk_test"], *args, lr=lr, steps=steps)
    lin_p = linearized_gd(init["pntk"], init["pntk_test"], *args, lr=lr, steps=steps)
    f = np.asarray(f_test_MO, np.float64)
    lam_max = float(np.linalg.eigvalsh(as_matrix(init["entk"]))[-1])
    return {
        "net_lin_rel_diff_entk": rel_diff(f, lin_e),
        "net_lin_rel_diff_pntk": rel_diff(f, lin_p),
        "lin_t_rel_diff": rel_diff(lin_p, lin_e),
        "net_acc": accuracy(f, y_test),
        "lin_t_acc_entk": accuracy(lin_e, y_test),
        "lin_t_acc_pntk": accuracy(lin_p, y_test),
        "lin_step_size": lr * lam_max / len(y),  # < 2 for the linear dynamics to be stable
    }
