"""Query strategies of the active-learning study, by name (:data:`STRATEGIES`).

Each strategy scores the same random candidate subset of the pool and returns the indices
(into that subset) of the batch to label: look-ahead through the linearised network with the
pNTK or the eNTK (:func:`ntk.lookahead`), random, and the two myopic scores of the network's
current outputs, entropy (of their softmax) and margin (top-1 minus top-2 output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

import ntk


@dataclass(frozen=True)
class Query:
    """What a strategy sees in one round.

    Attributes:
      outputs: ``fn(x) -> [B, O]`` float64, the network's current outputs (eval mode).
      kernels: kernel functions by kind (``"pntk"``, ``"entk"``), built once per run.
      params, state: the network's parameters (the linearisation point) and its other
        collections (``apply_kwargs`` of the kernel functions).
      x_labelled, y_labelled: ``[N, ...]`` inputs and ``[N]`` int labels of L.
      x_candidates: ``[C, ...]`` the candidates scored this round.
      x_pool: ``[U, ...]`` the pool subset whose predicted classes the look-ahead counts.
      batch: how many candidates to pick.
      rng: the round's generator (random strategy).
      ridge, chunk_size: of the look-ahead.
    """

    outputs: Callable[[Any], np.ndarray]
    kernels: dict
    params: Any
    state: dict
    x_labelled: np.ndarray
    y_labelled: np.ndarray
    x_candidates: np.ndarray
    x_pool: np.ndarray
    batch: int
    rng: np.random.Generator
    ridge: float
    chunk_size: int


def _lookahead(kind: str) -> Callable[[Query], np.ndarray]:
    def pick(q: Query) -> np.ndarray:
        la = ntk.lookahead(
            q.kernels[kind],
            q.params,
            q.x_labelled,
            q.y_labelled,
            q.x_candidates,
            q.x_pool,
            ridge=q.ridge,
            chunk_size=q.chunk_size,
            **q.state,
        )
        return la.select(q.batch)

    pick.__doc__ = f"The candidates whose addition changes most predicted classes of U ({kind})."
    return pick


def _random(q: Query) -> np.ndarray:
    return q.rng.choice(len(q.x_candidates), q.batch, replace=False)


def _entropy(q: Query) -> np.ndarray:
    p_CO = softmax(q.outputs(q.x_candidates), axis=1)
    h_C = -np.sum(p_CO * np.log(np.clip(p_CO, 1e-300, None)), axis=1)
    return np.argsort(-h_C, kind="stable")[: q.batch]


def _margin(q: Query) -> np.ndarray:
    top_C2 = np.sort(q.outputs(q.x_candidates), axis=1)[:, -2:]
    return np.argsort(top_C2[:, 1] - top_C2[:, 0], kind="stable")[: q.batch]


# name -> fn(Query) -> [batch] indices into the candidates
STRATEGIES: dict[str, Callable[[Query], np.ndarray]] = {
    "lookahead_pntk": _lookahead("pntk"),
    "lookahead_entk": _lookahead("entk"),
    "random": _random,
    "entropy": _entropy,
    "margin": _margin,
}
# the kernel kinds of the look-ahead strategies
KERNELS = ("pntk", "entk")
