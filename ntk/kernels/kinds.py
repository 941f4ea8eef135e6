"""Kernel kinds: the eNTK, the pNTK and the other approximations.

Each kernel is the eNTK of a linear map ``M: [K, O]`` of the logits (see
:mod:`ntk.kernels.implementations`), full or diagonal, followed by a reduction:

=====================  ================================  ======  ====================
kind                   M                                 part    result
=====================  ================================  ======  ====================
``entk``               I_O                               full    [N1, N2, O, O]
``pntk``               1ᵀ/√O  (sum of logits)            —       [N1, N2]
``trace``              I_O                               diag    mean over o: [N1, N2]
``diagonal``           I_O                               diag    [N1, N2, O]
``single_logit``       e_logitᵀ                          —       [N1, N2]
``random_projection``  R: [k, O], R_ij ~ N(0, 1/O)       diag    mean over k: [N1, N2]
=====================  ================================  ======  ====================

Relations (Θ = eNTK block for one pair of inputs, O×O):

* ``pntk = (1/O) Σ_{o,o'} Θ[o, o']``: the NTK of ``g = (1/√O) Σ_o f_o``. With this 1/√O
  scaling the pNTK is O times the plain mean of the O² block entries, so that
  ``Θ ≈ pntk ⊗ I_O`` (at infinite width Θ = θ·I_O and pntk = θ).
* ``trace = mean(diag Θ)``. This is what neural-tangents' default ``trace_axes=(-1,)``
  returns; it is **not** the pNTK, and it costs O times more to compute.
* ``diagonal[..., o] = Θ[o, o]``; ``trace = mean(diagonal, -1)``.
* ``random_projection`` averages ``rᵀΘr`` over k random ``r`` with ``E[r rᵀ] = I/O``: an
  unbiased estimate of ``trace`` whose variance falls like 1/k. The pNTK is the same
  quadratic form at the fixed ``r = 1/√O``, so it also sees the off-diagonal entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ntk import checks
from ntk.kernels.implementations import IMPLEMENTATIONS


@dataclass(frozen=True)
class Kind:
    """A kernel kind: the output projection, full or diagonal, and the final reduction."""

    projection: Callable[..., jax.Array]  # (o, dtype, **opts) -> [K, O]
    diag: bool
    reduce: Callable[[jax.Array], jax.Array]
    doc: str
    options: tuple[str, ...] = ()  # keyword options of the projection


def _identity_proj(o, dtype):
    return jnp.eye(o, dtype=dtype)


def _sum_proj(o, dtype):
    return jnp.full((1, o), 1.0 / math.sqrt(o), dtype=dtype)


def _logit_proj(o, dtype, *, logit=0):
    if isinstance(logit, bool) or not isinstance(logit, int | np.integer) or not 0 <= logit < o:
        raise ValueError(f"logit: must be an int in [0, {o}), got {logit!r}")
    return jax.nn.one_hot(jnp.array([logit]), o, dtype=dtype)


def _random_proj(o, dtype, *, key=None, n_projections=1):
    if key is None:
        raise ValueError("key: the random_projection kernel needs a PRNG key (jax.random.key)")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int | np.integer):
        raise TypeError(f"n_projections: expected a positive int, got {n_projections!r}")
    if n_projections <= 0:
        raise ValueError(f"n_projections: must be positive, got {n_projections}")
    return jax.random.normal(key, (int(n_projections), o), dtype) / math.sqrt(o)


def _squeeze_last(k):
    return k[..., 0]


def _mean_last(k):
    return jnp.mean(k, axis=-1)


def _keep(k):
    return k


KINDS: dict[str, Kind] = {
    "entk": Kind(_identity_proj, False, _keep, "full eNTK [N1, N2, O, O]"),
    "pntk": Kind(_sum_proj, True, _squeeze_last, "sum-of-logits pNTK, (1/O)·block sum [N1, N2]"),
    "trace": Kind(_identity_proj, True, _mean_last, "mean of the block diagonal [N1, N2]"),
    "diagonal": Kind(_identity_proj, True, _keep, "diagonal of each block [N1, N2, O]"),
    "single_logit": Kind(_logit_proj, True, _squeeze_last, "NTK of one logit [N1, N2]", ("logit",)),
    "random_projection": Kind(
        _random_proj,
        True,
        _mean_last,
        "mean NTK of k random logit combinations [N1, N2]",
        ("key", "n_projections"),
    ),
}


def resolve_implementation(name):
    """The registered implementation called ``name``, or None for ``"auto"``."""
    if name == "auto":
        return None
    checks.check_choice("implementation", name, {**IMPLEMENTATIONS, "auto": None})
    return IMPLEMENTATIONS[name]


def check_kind_options(kind: str, options: dict) -> None:
    """Raises TypeError if ``options`` holds a keyword that ``kind``'s projection does not take."""
    allowed = KINDS[kind].options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"kind_options: {unknown} are not options of kind={kind!r}; "
            f"it takes {list(allowed) or 'none'}"
        )
