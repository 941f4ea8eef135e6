"""Kernels on several devices: the rows of x1 are sharded, params and x2 replicated.

:func:`sharded_kernel` builds a one-axis mesh ``("rows",)`` over the devices, pads x1 to a
multiple of the device count (repeating its last row; rows are independent and the padding
is cut off again), places x1 with ``NamedSharding(mesh, P("rows"))`` and params/x2 with
``P()`` (replicated), and runs the library's jitted block function on each device's rows with
``jax.shard_map``. No communication happens during the computation; each device computes the
same block function a single device would, so the result equals the one-device kernel to
float round-off. With ``x2=None`` each device computes its rows against all of x1, and the
result is made exactly symmetric afterwards (one transpose, which XLA runs as an all-to-all).

The same code runs on one host with several GPUs, on CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (how it is tested), and on several
hosts after ``jax.distributed.initialize()``: inputs are built with
``jax.make_array_from_callback`` from the host's copy of x1/x2, which must be the same on
every process. See ``docs/scale.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ntk import checks
from ntk.adapters import ApplyFn
from ntk.kernels.kinds import KINDS
from ntk.kernels.model import Model, batch_len, fn_key, from_key, pad_rows, take
from ntk.kernels.preparation import block, prepare

AXIS = "rows"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ``("rows",)`` mesh over ``devices`` (default: all devices, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: empty device list")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices: contains duplicates: {devices}")
    return Mesh(np.array(devices), (AXIS,))


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a host copy of ``x`` (works across hosts)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


@functools.lru_cache(maxsize=64)
def _rows_fn(fn, impl_name, diag, mesh):
    model = Model(from_key(fn))

    def local(params, x1_local, x2, proj_KO):
        return block(model, impl_name, diag, params, x1_local, x2, proj_KO)

    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(), P()),
        out_specs=P(AXIS),
        check_vma=False,
    )
    return jax.jit(mapped)


def _symmetrize_fn(diag, mesh):
    def sym(k):
        kt = jnp.swapaxes(k, 0, 1) if diag else jnp.transpose(k, (1, 0, 3, 2))
        return 0.5 * (k + kt)

    return jax.jit(sym, out_shardings=NamedSharding(mesh, P(AXIS)))


_symmetrize_cached = functools.lru_cache(maxsize=64)(_symmetrize_fn)


def _padded_rows(x1, n_dev: int) -> tuple[Any, int]:
    """x1 ``[N1, ...]`` padded to ``[N1_pad, ...]`` (a multiple of ``n_dev``), and N1_pad."""
    n1_pad = math.ceil(batch_len(x1) / n_dev) * n_dev
    return pad_rows(jax.tree_util.tree_map(jnp.asarray, x1), n1_pad), n1_pad


def _placed(mesh: Mesh, x1_pad, xb, params, proj_KO) -> tuple:
    """``(params, x1, xb, proj_KO)`` placed on ``mesh`` for :func:`_rows_fn`: x1 sharded by
    rows; xb, params and the projection replicated (in the symmetric case every device
    needs all of x1 as its columns, padded, so the padded kernel is square and symmetrises
    with the same row sharding)."""
    rows = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())
    x1_s = jax.tree_util.tree_map(lambda a: _place(a, rows), x1_pad)
    xb_s = jax.tree_util.tree_map(lambda a: _place(a, replicated), xb)
    params_s = jax.tree_util.tree_map(lambda a: _place(a, replicated), params)
    return params_s, x1_s, xb_s, _place(proj_KO, replicated)


def sharded_kernel(
    apply_fn: ApplyFn,
    params: Any,
    x1: Any,
    x2: Any | None = None,
    *,
    kind: str = "entk",
    implementation: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    **kind_options: Any,
) -> jax.Array:
    """:func:`ntk.kernel` with the rows of x1 sharded over ``devices``.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on ``x[n]`` only.
      params: pytree of floating arrays (replicated on every device).
      x1: ``[N1, ...]`` inputs, sharded by rows (padded to a multiple of the device count).
      x2: ``[N2, ...]`` inputs (replicated), or ``None`` for ``x2 = x1`` (exactly symmetric).
      kind: one of :data:`ntk.KINDS`.
      implementation: one of :data:`ntk.IMPLEMENTATIONS` or ``"auto"``.
      devices: devices to use; default ``jax.devices()`` (every device of every process).
      **kind_options: as for :func:`ntk.kernel`.

    Returns:
      The kernel, as :func:`ntk.kernel` (``[N1, N2, ...]``): a ``jax.Array`` sharded by rows
      when N1 is a multiple of the device count (otherwise trimming the padding leaves it
      replicated; pick N1, or the stream block size, as a multiple). On several hosts it is
      not fully addressable; gather it with
      ``jax.experimental.multihost_utils.process_allgather`` if one host needs all of it.
    """
    checks.check_inputs(x1, x2)
    mesh = make_mesh(devices)
    n_dev = mesh.devices.size
    n1 = batch_len(x1)
    x1_pad, n1_pad = _padded_rows(x1, n_dev)
    local = take(x1_pad, 0, n1_pad // n_dev)
    xb = x1_pad if x2 is None else x2
    # The per-device block decides the implementation: rows n1_pad / n_dev against all of xb.
    prep = prepare(
        apply_fn, params, local, xb, kind=kind, implementation=implementation,
        kind_options=kind_options,
    )  # fmt: skip
    spec = KINDS[kind]
    rows_fn = _rows_fn(fn_key(apply_fn), prep.implementation, spec.diag, mesh)
    k = rows_fn(*_placed(mesh, x1_pad, xb, params, prep.proj_KO))
    if x2 is None:
        k = _symmetrize_cached(spec.diag, mesh)(k)
    if n1_pad != n1:  # uneven shards do not exist: trimming the padding replicates the result
        k = k[:n1, :n1] if x2 is None else k[:n1]
    return spec.reduce(k)
