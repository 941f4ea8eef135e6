"""The one preparation path shared by every kernel entry point, and blocked assembly.

:func:`prepare` validates a call and resolves its implementation once per signature;
:func:`block` computes one unreduced kernel block; :func:`blocked` assembles a kernel from
fixed-size blocks so that every block has the same shapes (one compile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk import checks
from ntk.kernels.estimates import choose_implementation, forward_mode_error, output_spec
from ntk.kernels.implementations import IMPLEMENTATIONS
from ntk.kernels.kinds import KINDS, check_kind_options, resolve_implementation
from ntk.kernels.model import Model, as_model, batch_len, is_array, pad_rows, take


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


def projection(kind: str, o: int, dtype, options: dict) -> jax.Array:
    """The projection ``M: [K, O]`` of ``kind`` for O outputs of this dtype."""
    with jax.ensure_compile_time_eval():  # concrete even inside the caller's jit
        return KINDS[kind].projection(o, dtype, **options)


def options_token(options: dict):
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
    checks.check_choice("kind", kind, KINDS)
    impl = resolve_implementation(implementation)
    check_kind_options(kind, kind_options)
    checks.check_params(params)
    checks.check_inputs(x1, x2)
    model = as_model(apply_fn)
    o, dtype = output_spec(model, params, x1)
    spec = KINDS[kind]
    proj_KO = projection(kind, o, dtype, kind_options)
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
        k = 0.5 * (k + _transpose(k, diag))
    return k


def _transpose(k, diag):
    """Swaps the two example axes: [N1, N2, ...] -> [N2, N1, ...], O axes too if full."""
    return jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))


def blocked(compute, x1, x2, batch_size, diag):
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
