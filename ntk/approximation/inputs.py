"""The report's inputs: checks of kinds, test points and options, labels as targets, the
in-memory mode's memory need, and :class:`Context`, the checked inputs every part reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ntk import checks
from ntk.checks import check_choice
from ntk.kernels.kinds import KINDS, check_kind_options
from ntk.kernels.model import Model

DEFAULT_KINDS = ("pntk", "trace", "diagonal", "single_logit", "random_projection")


@dataclass(frozen=True)
class Context:
    """The checked inputs of one report (``y``: training targets ``[N, O]`` float64)."""

    apply_fn: Any
    model: Model
    params: Any
    x: Any
    x_test: Any
    n: int
    m: int
    o: int
    kinds: tuple[str, ...]
    options: dict
    ridges: tuple[float, ...]
    y: np.ndarray | None
    n_params: int
    memory_budget: float | None
    repeats: int
    apply_kwargs: dict


def check_kinds(kinds: Any, kind_options: Any) -> tuple[tuple[str, ...], dict]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds: expected at least one approximation kind, got none")
    valid = {k: None for k in KINDS if k != "entk"}
    for k in kinds:
        if k == "entk":
            raise ValueError("kinds: 'entk' is the reference every kind is compared with")
        check_choice("kinds", k, valid)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: listed twice: {kinds}")
    options = dict(kind_options or {})
    unknown = sorted(set(options) - set(kinds))
    if unknown:
        raise ValueError(f"kind_options: {unknown} are not among kinds={list(kinds)}")
    out = {}
    for k in kinds:
        opts = dict(options.get(k, {}))
        check_kind_options(k, opts)
        if k == "random_projection":
            opts.setdefault("key", jax.random.key(0))
        out[k] = opts
    return kinds, out


def check_test_inputs(x: Any, x_test: Any) -> int:
    m = checks._check_one_input("x_test", x_test)
    l1, t1 = jax.tree_util.tree_flatten(x)
    l2, t2 = jax.tree_util.tree_flatten(x_test)
    same = t1 == t2 and all(
        tuple(a.shape[1:]) == tuple(b.shape[1:]) and a.dtype == b.dtype
        for a, b in zip(l1, l2, strict=True)
    )
    if not same:
        raise ValueError(
            f"x_test: per-example shapes and dtypes must match x: x_test "
            f"{checks.describe(x_test)} vs x {checks.describe(x)} (only the batch "
            "dimension may differ)"
        )
    return m


def targets(name: str, y: Any, n: int, o: int) -> np.ndarray:
    """``[n]`` int labels -> one-hot ``[n, O]``; ``[n, O]`` float targets as they are."""
    a = np.asarray(y)
    if a.ndim == 1 and np.issubdtype(a.dtype, np.integer) and a.shape[0] == n:
        if a.size and (a.min() < 0 or a.max() >= o):
            raise ValueError(f"{name}: labels must be in [0, O={o}), got [{a.min()}, {a.max()}]")
        return np.eye(o)[a]
    if a.ndim == 2 and a.shape == (n, o) and np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: contains NaN or Inf (shape {a.shape})")
        return a
    raise ValueError(
        f"{name}: expected {n} labels ([{n}] ints in [0, {o})) or targets [{n}, {o}], "
        f"got shape {a.shape} {a.dtype}"
    )


def memory_need(n: int, m: int, o: int, itemsize: int) -> float:
    """Bytes of the in-memory report: the kernel on Z = X ∪ X* in the model's dtype, its
    float64 host copy, and the eigen-decompositions of the NO × NO matrix (a copy, its
    eigenvectors and the block-diagonal embedding of the ``diagonal`` kind)."""
    return (n + m) ** 2 * o * o * (itemsize + 8) + 3 * (n * o) ** 2 * 8


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
