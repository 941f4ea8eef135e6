"""What ``auto`` knows about a model and how it chooses an implementation.

Facts about the model (forward FLOPs, per-example activations, custom_vjp calls, output
shape) come from one abstract trace per signature and are cached. The cost and memory
estimates of every registered implementation follow from them; :func:`choose_implementation`
picks the cheapest one that fits the memory budget.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk import checks
from ntk.kernels.implementations import (
    IMPLEMENTATIONS,
    jaxpr_activations,
    jaxpr_cost,
    sub_jaxprs,
)
from ntk.kernels.model import (
    Model,
    Signature,
    as_model,
    batch_len,
    cached_per_callable,
    merge_kwargs,
)

# --- facts about the model, from one abstract trace per signature ---------------------------


def _custom_vjp_in(jaxpr) -> bool:
    """Whether a ``custom_vjp`` call (no forward-mode rule) is reachable without passing
    through a ``custom_jvp`` call (whose own rule replaces its body under jvp)."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name.startswith("custom_vjp"):
            return True
        if not name.startswith("custom_jvp") and any(map(_custom_vjp_in, sub_jaxprs(eqn))):
            return True
    return False


@dataclass(frozen=True)
class Facts:
    """One example's forward pass: FLOPs (a lower bound when not ``exact``), custom_vjp."""

    flops: float
    exact: bool
    custom_vjp: bool
    activations: float = 0.0  # elements of the forward intermediates


@cached_per_callable
def _facts(sig: Signature) -> Facts:
    params, x, dynamic = sig.abstract_args()
    closed = jax.make_jaxpr(lambda p, a, d: sig.model(d)(p, a))(params, x, dynamic)
    flops, exact = jaxpr_cost(closed.jaxpr)
    p = sum(math.prod(s) for s, _ in sig.params[1])
    n_p, n_x = len(jax.tree_util.tree_leaves(params)), len(jax.tree_util.tree_leaves(x))
    n_d = len(closed.jaxpr.invars) - n_p - n_x
    acts = jaxpr_activations(closed.jaxpr, [False] * n_p + [True] * n_x + [False] * n_d)
    return Facts(max(flops, 2.0 * p), exact, _custom_vjp_in(closed.jaxpr), acts)


def model_facts(apply_fn, params, x) -> Facts:
    """:class:`Facts` of ``apply_fn`` (or a :class:`Model`) at these shapes; cached."""
    return _facts(Signature.of(as_model(apply_fn), params, x).per_example())


def forward_flops(apply_fn, params, x) -> float:
    """Estimated FLOPs of one per-example forward pass (counted on its jaxpr, at least 2P)."""
    return model_facts(apply_fn, params, x).flops


def forward_mode_error(apply_fn, params, x) -> str | None:
    """Why ``jax.jvp`` cannot go through ``apply_fn``, or None if it can."""
    if model_facts(apply_fn, params, x).custom_vjp:
        return "apply_fn calls a jax.custom_vjp function, which has no jvp rule"
    return None


@cached_per_callable
def _output_struct(sig: Signature):
    params, x, dynamic = sig.abstract_args()
    return jax.eval_shape(lambda p, a, d: sig.model(d)(p, a), params, x, dynamic)


def output_spec(apply_fn, params, x) -> tuple[int, Any]:
    """Checks ``apply_fn(params, x) -> [batch, O]`` (shapes only, cached) -> ``(O, dtype)``."""
    model = as_model(apply_fn)
    if not callable(model.apply_fn):
        raise TypeError(f"apply_fn: expected a callable, got {type(model.apply_fn).__name__}")
    out = _output_struct(Signature.of(model, params, x))
    n = batch_len(x)
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != n:
        got = shape if shape is not None else type(out).__name__
        raise ValueError(
            f"apply_fn: must return an array [batch, O]; on x with batch {n} "
            f"({checks.describe(x)}) it returned {got}. Wrap it so that it returns one row "
            "of outputs per example."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"apply_fn: output dtype must be floating, got {out.dtype}")
    if shape[1] == 0:
        raise ValueError(f"apply_fn: output has O=0 logits (shape {shape})")
    _check_per_example(model, params, x, n, shape[1])
    return int(shape[1]), out.dtype


def _check_per_example(model: Model, params, x, n: int, o: int) -> None:
    """One example must give ``[1, O]``: an ``apply_kwargs`` array with the batch axis (a
    mask passed as state) would otherwise be broadcast from a one-example batch, silently."""
    one = _output_struct(Signature.of(model, params, x).per_example())
    if tuple(getattr(one, "shape", ())) == (1, o):
        return
    leaves = jax.tree_util.tree_leaves_with_path(merge_kwargs(list(model.dynamic), model.static))
    batched = [
        f"apply_kwargs{jax.tree_util.keystr(p)}"
        for p, a in leaves
        if np.ndim(a) >= 1 and np.shape(a)[0] == n
    ]
    hint = (
        f"; {', '.join(batched)} has the batch axis ({n}): per-example inputs belong in x "
        "(x may be a pytree), state in apply_kwargs"
        if batched
        else ""
    )
    raise ValueError(
        f"apply_fn: on one example it returns {getattr(one, 'shape', one)}, not (1, {o}): "
        f"row n of the output must depend on example n only{hint}."
    )


_WARNED: set = set()


def warn_once(key: Any, message: str) -> None:
    """``warnings.warn(message)`` the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def default_memory_budget() -> float:
    """Bytes ``auto`` may plan for: ``$NTK_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix)
    if set, else 80% of the default device's memory limit (GPU/TPU) or 50% of the host's
    physical memory (CPU)."""
    env = os.environ.get("NTK_MEMORY_BUDGET")
    if env:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        text = env.strip().upper().removesuffix("B")
        mult = units.get(text[-1:], 1)
        return float(text[:-1] if mult > 1 else text) * mult
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory stats
        stats = {}
    if stats.get("bytes_limit"):
        return 0.8 * stats["bytes_limit"]
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return math.inf


def implementation_estimates(apply_fn, params, x1, x2, k: int, diag: bool) -> dict:
    """``{name: (FLOPs, peak bytes)}`` of every registered implementation (estimates)."""
    model = as_model(apply_fn)
    n1 = batch_len(x1)
    n2 = n1 if x2 is None else batch_len(x2)
    leaves = jax.tree_util.tree_leaves(params)
    p = sum(int(np.prod(np.shape(leaf))) for leaf in leaves)
    itemsize = max(np.dtype(leaf.dtype).itemsize for leaf in leaves)
    facts = model_facts(model, params, x1)
    ctx = dict(apply_fn=model, params=params, x1=x1, x2=x2)
    shape = dict(n1=n1, n2=n2, k=k, p=p, diag=diag)
    out = {}
    for name, impl in IMPLEMENTATIONS.items():
        flops = impl.cost(fp=facts.flops, **shape, **ctx)
        mem = 0.0
        if impl.memory is not None and flops < math.inf:
            mem = impl.memory(y=facts.activations, itemsize=itemsize, **shape, **ctx)
        out[name] = (flops, mem)
    return out


def choose_implementation(
    apply_fn, params, x1, x2, k: int, diag: bool, *, memory_budget: float | None = None
) -> str:
    """Name of the registered implementation with the lowest estimated FLOP count among
    those whose estimated peak memory fits ``memory_budget`` bytes (default
    :func:`default_memory_budget`); if none fits, the one with the least memory.

    Forward-mode implementations are skipped when ``jax.jvp`` cannot trace ``apply_fn``;
    implementations whose cost multiplies the forward pass by N1·N2 are skipped when the
    forward pass's FLOPs are only a lower bound (a ``while`` loop).
    """
    facts = model_facts(as_model(apply_fn), params, x1)
    est = implementation_estimates(apply_fn, params, x1, x2, k, diag)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    eligible = []
    for name in sorted(est, key=lambda n: est[n][0]):
        impl = IMPLEMENTATIONS[name]
        if impl.forward_mode and facts.custom_vjp:
            continue
        if impl.quadratic_in_forward and not facts.exact:
            continue
        if est[name][0] < math.inf:
            eligible.append(name)
    if not eligible:
        return "jacobian"
    fits = [name for name in eligible if est[name][1] <= budget]
    return fits[0] if fits else min(eligible, key=lambda n: est[n][1])
