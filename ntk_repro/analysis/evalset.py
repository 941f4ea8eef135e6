"""The fixed kernel-evaluation points of a run: stratified, seed-deterministic train and test
points (:class:`EvalSet`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EvalSet:
    """Fixed kernel-evaluation points: ``x_train [N, ...]`` with labels ``y_train [N]`` and
    held-out ``x_test [M, ...]`` with ``y_test [M]`` (int labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def make_eval_set(
    dataset: Any, n_per_class: int | None, n_test_per_class: int, seed: int
) -> EvalSet:
    """Stratified, seed-deterministic evaluation points from a :class:`ntk_repro.data.Dataset`;
    ``n_per_class=None`` takes the whole training set as the kernel points (the network is
    then trained on exactly the kernel's X, as the linearised comparison needs)."""
    from ntk_repro.data import stratified_subset

    y_tr = _int_labels(dataset.y_train)
    y_te = _int_labels(dataset.y_test)
    if n_per_class is None:
        i_tr = np.arange(len(y_tr))
    else:
        i_tr = stratified_subset(y_tr, n_per_class, seed)
    i_te = stratified_subset(y_te, n_test_per_class, seed + 1)
    return EvalSet(
        dataset.x_train[i_tr], y_tr[i_tr], dataset.x_test[i_te], y_te[i_te], dataset.num_classes
    )


def _int_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return np.argmax(y, axis=1).astype(np.int32) if y.ndim == 2 else y.astype(np.int32)
