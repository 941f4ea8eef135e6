"""Public kernel functions: the eNTK, the pNTK and the other approximations.

:func:`kernel_fn` builds a kernel once and calls it many times; :func:`kernel` and the
per-kind wrappers (:func:`entk`, :func:`pntk`, ...) are one-call conveniences over it. The
kinds and their relations are described in :mod:`ntk.kernels.kinds`; the facts and estimates
behind ``implementation="auto"`` in :mod:`ntk.kernels.estimates`; validation and blocked
assembly in :mod:`ntk.kernels.preparation`. Those modules' names that callers import from
here are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax

from ntk import checks
from ntk.kernels.kinds import (
    KINDS,
    check_kind_options,
    resolve_implementation,
)
from ntk.kernels.model import (
    LIFETIMES,
    Model,
    Signature,
    is_array,
    split_kwargs,
    take,
    tree_spec,
    weak_callable,
)
from ntk.kernels.preparation import (
    block,
    blocked,
    options_token,
    prepare,
    projection,
)

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
        checks.check_choice("kind", kind, KINDS)
        resolve_implementation(implementation)
        checks.check_batch_size(batch_size)
        check_kind_options(kind, kind_options)
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
        token = options_token(options)
        key = None
        if token is not None:
            x2_spec = None if x2 is None else tree_spec(x2)
            sig = Signature.of(model, params, x1)  # its callable is not part of the key
            key = (sig.static, sig.params, sig.x, sig.dynamic, x2_spec, token)
            hit = self._prepared.get(key)
            if hit is not None:
                if any(is_array(v) for v in options.values()):  # a new key, same shapes
                    hit = replace(hit, proj_KO=projection(hit.kind, hit.o, hit.dtype, options))
                return hit, dynamic, static
        c1, c2 = x1, x2
        if self.batch_size is not None:  # computed in blocks: choose for a block's size
            c1 = take(x1, 0, self.batch_size)
            c2 = None if x2 is None else take(x2, 0, self.batch_size)
        prep = prepare(
            model,
            params,
            c1,
            c2,
            kind=self.kind,
            implementation=self.implementation,
            kind_options=options,
            memory_budget=self.memory_budget,
        )
        if key is not None and not checks.is_traced(prep.proj_KO):
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

        k = blocked(compute, x1, x2, self.batch_size, prep.diag)
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
    from ntk.kernels.structured import kernel as structured

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
    checks.check_choice("kind", kind, KINDS)
    resolve_implementation(implementation)
    checks.check_batch_size(batch_size)
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
