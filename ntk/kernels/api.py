"""Public kernel functions: the eNTK, the pNTK and the other approximations.

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
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk.kernels import _checks
from ntk.kernels.implementations import (
    IMPLEMENTATIONS,
    jaxpr_activations,
    jaxpr_cost,
    sub_jaxprs,
)
from ntk.kernels.model import (
    LIFETIMES,
    Model,
    Signature,
    as_model,
    batch_len,
    cached_per_callable,
    is_array,
    merge_kwargs,
    pad_rows,
    split_kwargs,
    take,
    tree_spec,
    weak_callable,
)


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


def _resolve(name):
    if name == "auto":
        return None
    _checks.check_choice("implementation", name, {**IMPLEMENTATIONS, "auto": None})
    return IMPLEMENTATIONS[name]


def _check_kind_options(kind: str, options: dict) -> None:
    allowed = KINDS[kind].options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"kind_options: {unknown} are not options of kind={kind!r}; "
            f"it takes {list(allowed) or 'none'}"
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
            f"({_checks.describe(x)}) it returned {got}. Wrap it so that it returns one row "
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


# --- the one preparation path ---------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """Everything a kernel call needs that depends on shapes only, decided once."""

    implementation: str  # resolved name
    kind: str
    proj_KO: jax.Array
    o: int
    dtype: Any

    @property
    def diag(self) -> bool:
        return KINDS[self.kind].diag


def _projection(kind: str, o: int, dtype, options: dict) -> jax.Array:
    with jax.ensure_compile_time_eval():  # concrete even inside the caller's jit
        return KINDS[kind].projection(o, dtype, **options)


def _options_token(options: dict):
    """A hashable summary of kind options (arrays by shape and dtype), or None."""
    token = tuple(
        sorted(
            (k, ("array", np.shape(v), str(v.dtype)) if is_array(v) else v)
            for k, v in options.items()
        )
    )
    try:
        hash(token)
    except TypeError:
        return None
    return token


def prepare(
    apply_fn, params, x1, x2=None, *, kind, implementation, kind_options, memory_budget=None
) -> Prepared:
    """Validates a kernel call and resolves its implementation: the checks and choices shared
    by :func:`kernel_fn`, :func:`ntk.stream_kernel`, :func:`ntk.sharded_kernel` and
    :mod:`ntk.implicit`. ``apply_fn`` may be a :class:`~ntk.kernels.model.Model`."""
    _checks.check_choice("kind", kind, KINDS)
    impl = _resolve(implementation)
    _check_kind_options(kind, kind_options)
    _checks.check_params(params)
    _checks.check_inputs(x1, x2)
    model = as_model(apply_fn)
    o, dtype = output_spec(model, params, x1)
    spec = KINDS[kind]
    proj_KO = _projection(kind, o, dtype, kind_options)
    if impl is None:
        name = choose_implementation(
            model, params, x1, x2, proj_KO.shape[0], spec.diag, memory_budget=memory_budget
        )
    else:
        name = implementation
        if impl.forward_mode and (why := forward_mode_error(model, params, x1)) is not None:
            raise TypeError(
                f"implementation={implementation!r} needs forward-mode autodiff (jax.jvp) through "
                f"apply_fn, which fails: {why}. Use implementation='jacobian' or 'structured'."
            )
    return Prepared(name, kind, proj_KO, o, dtype)


def block(model: Model, implementation: str, diag: bool, params, x1, x2, proj_KO):
    """One unreduced kernel block (pure; jit it). ``x2=None`` is the symmetric case, made
    exactly symmetric."""
    k = IMPLEMENTATIONS[implementation].fn(model, params, x1, x2, proj_KO, diag)
    if x2 is None:
        k = 0.5 * (k + (jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))))
    return k


def _transpose(k, diag):
    return jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))


def _blocked(compute, x1, x2, batch_size, diag):
    """Assembles the kernel from ``batch_size``-row blocks; same shapes compile once.

    Off-diagonal blocks of a symmetric kernel are computed once and mirrored, so the result
    is exactly symmetric; it equals the unblocked call up to float round-off."""
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2 = batch_len(x1), batch_len(xb)
    starts1 = list(range(0, n1, batch_size))
    starts2 = list(range(0, n2, batch_size))

    def rows(x, s):
        return pad_rows(take(x, s, s + batch_size), batch_size)

    blocks = {}
    for i, s1 in enumerate(starts1):
        for j, s2 in enumerate(starts2):
            if symmetric and j < i:
                blocks[i, j] = _transpose(blocks[j, i], diag)
            elif symmetric and i == j:
                blocks[i, j] = compute(rows(x1, s1), None)
            else:
                blocks[i, j] = compute(rows(x1, s1), rows(xb, s2))
    out = jnp.concatenate(
        [
            jnp.concatenate([blocks[i, j] for j in range(len(starts2))], 1)
            for i in range(len(starts1))
        ],
        0,
    )
    return out[:n1, :n2]


# --- build once, call many times ------------------------------------------------------------


class KernelFn:
    """``fn(params, x1, x2=None, **apply_kwargs)``: a kernel built once; see :func:`kernel_fn`."""

    def __init__(
        self,
        apply_fn,
        kind,
        implementation,
        batch_size,
        kind_options,
        memory_budget=None,
        *,
        weak=False,
    ):
        if not callable(apply_fn):
            raise TypeError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
        _checks.check_choice("kind", kind, KINDS)
        _resolve(implementation)
        _checks.check_batch_size(batch_size)
        _check_kind_options(kind, kind_options)
        # weak: held without keeping apply_fn alive (the cache behind ntk.kernel)
        self._apply_fn = weak_callable(apply_fn) if weak else (lambda: apply_fn)
        self.kind = kind
        self.implementation = implementation
        self.batch_size = batch_size
        self.kind_options = dict(kind_options)
        self.memory_budget = memory_budget
        self._prepared: dict = {}
        statics = ("implementation", "static", "reduce")
        self._jit = jax.jit(self._compute, static_argnames=statics)

    @property
    def apply_fn(self):
        return self._apply_fn()

    def __repr__(self) -> str:
        return (
            f"kernel_fn({getattr(self.apply_fn, '__name__', type(self.apply_fn).__name__)}, "
            f"kind={self.kind!r}, implementation={self.implementation!r}, "
            f"batch_size={self.batch_size})"
        )

    def _compute(self, params, x1, x2, dynamic, proj_KO, *, implementation, static, reduce):
        model = Model(self.apply_fn, static, tuple(dynamic))
        k = block(model, implementation, KINDS[self.kind].diag, params, x1, x2, proj_KO)
        return KINDS[self.kind].reduce(k) if reduce else k

    def __call__(self, params, x1, x2=None, **apply_kwargs) -> jax.Array:
        """The kernel of ``apply_fn(·, x, **apply_kwargs)`` w.r.t. ``params`` on x1 (and x2)."""
        return self.call(params, x1, x2, apply_kwargs, None)

    def prepared(self, params, x1, x2, apply_kwargs, kind_options=None):
        """``(Prepared, dynamic kwargs, Static)``; validation runs once per signature."""
        dynamic, static = split_kwargs(apply_kwargs)
        options = self.kind_options if kind_options is None else kind_options
        model = Model(self.apply_fn, static, tuple(dynamic))
        token = _options_token(options)
        key = None
        if token is not None:
            x2_spec = None if x2 is None else tree_spec(x2)
            sig = Signature.of(model, params, x1)  # its callable is not part of the key
            key = (sig.static, sig.params, sig.x, sig.dynamic, x2_spec, token)
            hit = self._prepared.get(key)
            if hit is not None:
                if any(is_array(v) for v in options.values()):  # a new key, same shapes
                    hit = replace(hit, proj_KO=_projection(hit.kind, hit.o, hit.dtype, options))
                return hit, dynamic, static
        prep = prepare(
            model,
            params,
            x1,
            x2,
            kind=self.kind,
            implementation=self.implementation,
            kind_options=options,
            memory_budget=self.memory_budget,
        )
        if key is not None and not _checks.is_traced(prep.proj_KO):
            self._prepared[key] = prep
        return prep, dynamic, static

    def lower(self, params, x1, x2=None, **apply_kwargs) -> jax.stages.Lowered:
        """The unblocked computation lowered for these arguments, e.g. for
        ``.compile().memory_analysis()`` or ``.cost_analysis()``."""
        prep, dynamic, static = self.prepared(params, x1, x2, apply_kwargs)
        return self._jit.lower(
            params,
            x1,
            x2,
            dynamic,
            prep.proj_KO,
            implementation=prep.implementation,
            static=static,
            reduce=True,
        )

    def call(self, params, x1, x2, apply_kwargs, kind_options):
        prep, dynamic, static = self.prepared(params, x1, x2, apply_kwargs, kind_options)
        statics = dict(implementation=prep.implementation, static=static)
        if self.batch_size is None:
            return self._jit(params, x1, x2, dynamic, prep.proj_KO, reduce=True, **statics)

        def compute(a, b):
            return self._jit(params, a, b, dynamic, prep.proj_KO, reduce=False, **statics)

        k = _blocked(compute, x1, x2, self.batch_size, prep.diag)
        return KINDS[self.kind].reduce(k)


def kernel_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    kind: str = "entk",
    implementation: str = "auto",
    batch_size: int | None = None,
    memory_budget: float | None = None,
    **kind_options: Any,
) -> KernelFn:
    """Builds ``fn(params, x1, x2=None, **apply_kwargs)``, a kernel you call many times.

    The kernel is taken with respect to ``params`` only. ``apply_kwargs`` go to
    ``apply_fn(params, x, **apply_kwargs)`` and are never differentiated: array leaves
    (BatchNorm statistics, PRNG keys) are traced, other leaves (``train=False``) are static
    and must be hashable. ``fn`` compiles once per (shapes, dtypes, static arguments): new
    parameter or state values never recompile. Validation (including a finiteness check of
    ``params`` and inputs on the first call) and the choice of implementation happen once
    per signature, so later calls never wait on the device.

    Args:
      apply_fn: ``apply_fn(params, x, **apply_kwargs) -> [batch, O]``; any callable (hashable
        or not: an Equinox module, a dataclass holding arrays). Row n of the output must
        depend on example n only (eval-mode BatchNorm, no batch-shaped noise).
      kind: one of :data:`KINDS`.
      implementation: one of :data:`IMPLEMENTATIONS` or ``"auto"`` (lowest estimated cost).
      batch_size: if set, compute in blocks of this many rows of x1 and x2 (one compile for
        all blocks); the blocks are assembled into one array.
      memory_budget: bytes that ``"auto"`` never plans to exceed when an implementation
        fits (default :func:`default_memory_budget`: ``$NTK_MEMORY_BUDGET`` or a share of the
        device's memory).
      **kind_options: ``logit`` for ``single_logit``; ``key`` and ``n_projections`` for
        ``random_projection``.

    Returns:
      ``fn(params, x1, x2=None, **apply_kwargs)``. ``x1: [N1, ...]`` and ``x2: [N2, ...]``
      may be pytrees whose leaves share the leading batch axis; ``x2=None`` means x1 (the
      work is shared and the result is exactly symmetric). The result's shape is given in
      :data:`KINDS`. ``fn`` also works inside the caller's ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp, ntk
      >>> f = lambda p, x, scale: jnp.tanh(scale * x @ p["w1"]) @ p["w2"]
      >>> fn = ntk.kernel_fn(f, kind="pntk")
      >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> fn(p, jnp.ones((5, 3)), scale=jnp.asarray(0.5)).shape
      (5, 5)
    """
    return KernelFn(apply_fn, kind, implementation, batch_size, kind_options, memory_budget)


def _shared_kernel_fn(apply_fn, kind, implementation, batch_size) -> KernelFn:
    """The kernel function ``ntk.kernel`` uses for ``apply_fn``: one per callable and
    settings, held only as long as ``apply_fn`` lives (it holds ``apply_fn`` weakly)."""
    store = LIFETIMES.of(apply_fn).setdefault("kernel_fn", {})
    key = (kind, implementation, batch_size)
    if key not in store:
        store[key] = KernelFn(apply_fn, kind, implementation, batch_size, {}, weak=True)
    return store[key]


def clear_caches() -> None:
    """Forgets every built kernel function, trace and structured plan of this module."""
    from ntk.kernels import structured

    LIFETIMES.clear()
    structured.clear_plans()


def kernel(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x1: Any,
    x2: Any | None = None,
    *,
    kind: str = "entk",
    implementation: str = "auto",
    batch_size: int | None = None,
    **kind_options: Any,
) -> jax.Array:
    """Any registered kernel kind (see :data:`KINDS`) with any implementation, in one call.

    A thin wrapper over :func:`kernel_fn`: the built function is cached per ``apply_fn``
    object, so calling again with the same ``apply_fn`` and shapes does not recompile. Build
    a :func:`kernel_fn` yourself to pass model state (``apply_kwargs``) or to reuse one
    compiled kernel across a new ``apply_fn`` closure.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on example n only.
      params: pytree of floating arrays; the kernel is taken with respect to all of them.
      x1: ``[N1, ...]`` inputs (an array or a pytree of arrays sharing the batch axis).
      x2: ``[N2, ...]`` inputs, or ``None`` for ``x2 = x1`` (work is shared and the result is
        exactly symmetric).
      kind: one of :data:`KINDS`.
      implementation: one of :data:`IMPLEMENTATIONS` or ``"auto"`` (lowest estimated cost).
      batch_size: if set, compute in blocks of this many rows of x1 and x2 (one compile for
        all blocks). The assembled kernel is held in memory; each block's intermediates
        (Jacobians, activations) are bounded by the block. Values equal the unblocked call up
        to float round-off.
      **kind_options: ``logit`` for ``single_logit``; ``key`` and ``n_projections`` for
        ``random_projection``.

    Returns:
      The kernel; its shape is given in :data:`KINDS`.
    """
    _checks.check_choice("kind", kind, KINDS)
    _resolve(implementation)
    _checks.check_batch_size(batch_size)
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    fn = _shared_kernel_fn(apply_fn, kind, implementation, batch_size)
    return fn.call(params, x1, x2, {}, kind_options)


def entk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None) -> jax.Array:
    """Empirical NTK ``Θ[n1, n2, o1, o2] = J(x1[n1])[o1] · J(x2[n2])[o2]``: ``[N1, N2, O, O]``.

    Example:
      >>> import jax, jax.numpy as jnp, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> ntk.entk(f, p, jnp.ones((5, 3))).shape
      (5, 5, 2, 2)

    See :func:`kernel` for the arguments.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="entk", implementation=implementation, batch_size=batch_size
    )


def pntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None) -> jax.Array:
    """Sum-of-logits pseudo-NTK (Mohamadi et al., 2023): ``[N1, N2]``.

    The NTK of ``g = (1/√O) Σ_o f_o``, computed from the summed output (never from the full
    eNTK). It equals ``(1/O) Σ_{o,o'} Θ[n1, n2, o, o']`` for the eNTK Θ of :func:`entk`, i.e.
    O times the plain mean of each O×O block, which is the scale at which ``Θ ≈ pntk ⊗ I_O``.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="pntk", implementation=implementation, batch_size=batch_size
    )


def trace_ntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None):
    """Mean of each block's diagonal, ``(1/O) Σ_o Θ[o, o]``: ``[N1, N2]``.

    neural-tangents' default ``trace_axes=(-1,)`` gives this kernel, not the pNTK.
    """
    return kernel(
        apply_fn, params, x1, x2, kind="trace", implementation=implementation, batch_size=batch_size
    )


def diagonal_ntk(apply_fn, params, x1, x2=None, *, implementation="auto", batch_size=None):
    """Diagonal of each block, ``Θ[n1, n2, o, o]``: ``[N1, N2, O]``."""
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="diagonal",
        implementation=implementation,
        batch_size=batch_size,
    )


def single_logit_ntk(
    apply_fn, params, x1, x2=None, *, logit=0, implementation="auto", batch_size=None
):
    """NTK of logit ``logit`` alone, ``Θ[n1, n2, logit, logit]``: ``[N1, N2]``."""
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="single_logit",
        implementation=implementation,
        batch_size=batch_size,
        logit=logit,
    )


def random_projection_ntk(
    apply_fn,
    params,
    x1,
    x2=None,
    *,
    key,
    n_projections=1,
    implementation="auto",
    batch_size=None,
):
    """Mean NTK of ``n_projections`` random logit combinations ``r·f``, ``r ~ N(0, I/O)``.

    An unbiased estimate of :func:`trace_ntk`: ``[N1, N2]``.
    """
    return kernel(
        apply_fn,
        params,
        x1,
        x2,
        kind="random_projection",
        implementation=implementation,
        batch_size=batch_size,
        key=key,
        n_projections=n_projections,
    )
