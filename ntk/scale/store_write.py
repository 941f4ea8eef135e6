"""A kernel in a chunked zarr store (tensorstore): one chunk per block, many writers.

:func:`store_kernel` computes the blocks of one kernel into ``path``, a directory that any
number of processes, on any number of hosts sharing a filesystem, may fill at the same time:

* ``path/meta.json`` says what is computed (the same record as :func:`ntk.stream_kernel`'s,
  with the resolved implementation). It is published once, with ``link(2)``, which fails if
  the file exists, so of several concurrent creators exactly one wins and the others compare
  against it. A resume or a worker with anything different is refused, naming the keys.
* ``path/kernel.zarr`` is a zarr (v2) array of the full ``[N1, N2, ...]`` kernel whose chunk
  shape is the block shape: block ``(i, j)`` is chunk ``(i, j)`` (and, for ``x2=None``, its
  transpose is chunk ``(j, i)``; only upper-triangle blocks are computed). No two blocks share
  a chunk, so writers never read-modify-write each other's data. tensorstore's file driver
  writes each chunk to a temporary file, fsyncs it and renames it into place: a chunk is
  either absent or whole, even if its writer is SIGKILLed. Chunks are uncompressed.
* ``path/done/I.J`` is written (atomically) after the chunks of block ``(i, j)`` are on
  disk. Completion is one small file per block: nothing is shared and rewritten by everyone,
  and listing the directory is the progress.
* ``path/workers/wK.json`` is worker K's heartbeat (host, pid, block in hand), rewritten only
  by that worker.

Which blocks a call computes: ``worker=k, n_workers=n`` takes block ``b`` of the grid when
``b % n == k`` and skips those already done, so ``n`` processes started with ``k = 0..n-1``
(a SLURM array, a Hydra multirun, :func:`ntk.scale.workers.distribute_kernel`) fill the store
between them, and re-running any of them redoes only what is missing. A block is a pure
function of its inputs, padded to the full block shape, so every block is computed by the
same compiled computation whichever process runs it: the store is bit-identical to a
single-process run (on the same hardware and XLA flags).

:func:`open_kernel` gives a lazily indexed, read-only :class:`StoredKernel` (slices, rows,
blocks, a chunk-streaming ``matvec``); :func:`ntk.implicit.extreme_eigenvalues` and
:func:`ntk.kernel_regression` accept it, and ``to_npy`` exports a single ``.npy``. The layout
and the reading side live in :mod:`ntk.scale.store_read`; the blocks are planned and
computed by :mod:`ntk.scale.blocks`, exactly as :func:`ntk.stream_kernel` computes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk import atomic
from ntk.adapters import ApplyFn
from ntk.scale import blocks
from ntk.scale.store_read import (
    ARRAY_DIR,
    DONE_DIR,
    FORMAT,
    META_FILE,
    WORKERS_DIR,
    _done_name,
    _open_array,
    done_blocks,
)

__all__ = ["create_store", "store_kernel"]

# --- creating the store -------------------------------------------------------------------------


def _plan(apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options):
    """Checks the arguments; the block plan with the store's metadata, and the path."""
    plan = blocks.plan_blocks(
        apply_fn, params, x1, x2, kind=kind, implementation=implementation,
        block_size=block_size, kind_options=kind_options, fmt=FORMAT,
    )  # fmt: skip
    if path is None or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path: expected a directory path, got {path!r}")
    chunks = [plan.b1, plan.b2, *plan.shape[2:]]
    return dataclasses.replace(plan, meta={**plan.meta, "chunks": chunks}), Path(path)


def _publish_meta(path: Path, meta: dict) -> dict:
    """Writes ``meta.json`` unless it exists; returns the one on disk (ours or a rival's)."""
    try:
        atomic.write_json(path / META_FILE, meta, sort_keys=True, exclusive=True)
        return meta
    except FileExistsError:
        with open(path / META_FILE) as f:
            return json.load(f)


def _create_or_check(plan: blocks.BlockPlan, path: Path, apply_fn, params, kind_options) -> dict:
    """The store's metadata: created (first caller) or checked against the plan."""
    meta_path = path / META_FILE
    path.mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        leftovers = [p for p in (ARRAY_DIR, DONE_DIR) if (path / p).exists()]
        if leftovers:
            raise ValueError(
                f"path {str(path)!r} holds {leftovers} but no {META_FILE}; refusing to "
                "overwrite. Use another path or delete these files."
            )
        info = blocks.resolve_implementation(apply_fn, params, plan, kind_options)  # by the creator
        stored = _publish_meta(path, {**plan.meta, blocks.INFO: info})
    else:
        with open(meta_path) as f:
            stored = json.load(f)
    blocks.check_same(stored, plan.meta, path)
    (path / DONE_DIR).mkdir(exist_ok=True)
    _open_array(path, stored, create=True)  # idempotent: same metadata for every caller
    return stored


def create_store(
    apply_fn: ApplyFn,
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    path: str | os.PathLike,
    kind: str = "pntk",
    implementation: str = "auto",
    block_size: int = 2048,
    **kind_options: Any,
) -> dict:
    """Creates the store at ``path`` (or checks an existing one) without computing a block.

    Arguments as for :func:`store_kernel`. Returns the store's ``meta.json`` record.
    """
    plan, path = _plan(
        apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options
    )
    return _create_or_check(plan, path, apply_fn, params, kind_options)


# --- the workers --------------------------------------------------------------------------------


def _check_worker(worker: Any, n_workers: Any) -> None:
    for name, value in (("n_workers", n_workers), ("worker", worker)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    if n_workers < 1:
        raise ValueError(f"n_workers: must be >= 1, got {n_workers}")
    if not 0 <= worker < n_workers:
        raise ValueError(f"worker: must be in [0, n_workers={n_workers}), got {worker}")


def _spans_processes(devices: Sequence[jax.Device] | None) -> bool:
    return devices is not None and any(d.process_index != jax.process_index() for d in devices)


def _sync_processes(multi: bool, what: str) -> None:
    """A barrier of every process of a worker that spans processes (else nothing)."""
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"ntk.scale.store_write: {what}")


class _Heartbeat:
    """``workers/wK.json``: which host/pid worker K is and which block it holds."""

    def __init__(self, path: Path, worker: int, n_workers: int, enabled: bool):
        self.file = path / WORKERS_DIR / f"w{worker}.json"
        self.base = {
            "worker": worker,
            "n_workers": n_workers,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.enabled = enabled
        if enabled:
            self.file.parent.mkdir(exist_ok=True)

    def __call__(self, state: str, block: tuple[int, int] | None = None, **extra) -> None:
        if self.enabled:
            rec = {**self.base, "state": state, "block": block, "time": time.time(), **extra}
            atomic.write_json(self.file, rec, sort_keys=True)


def _write_chunks(arr, plan: blocks.BlockPlan, blk: np.ndarray, i: int, j: int) -> None:
    """Block ``(i, j)`` into its chunk (and its transpose into chunk ``(j, i)``)."""
    writes = [
        arr[r0 : r0 + part.shape[0], c0 : c0 + part.shape[1]].write(part)
        for part, r0, c0 in blocks.placements(plan, blk, i, j)
    ]
    for w in writes:
        w.result()


def _record_done(path: Path, i: int, j: int, worker: int, seconds: float) -> None:
    rec = {"worker": worker, "host": socket.gethostname(), "pid": os.getpid(), "seconds": seconds}
    atomic.write_json(path / DONE_DIR / _done_name(i, j), rec, sort_keys=True)


def _store_blocks(plan, arr, path, compute, todo, *, bar, beat, callback, worker, leader):
    """Computes the blocks ``todo``; the leader writes each and then records it done."""
    try:
        for i, j in todo:
            beat("computing", (i, j))
            if callback is not None:
                callback("start", i, j)
            t0 = time.perf_counter()
            blk = blocks.compute_block(plan, compute, i, j)
            seconds = time.perf_counter() - t0
            if leader:
                _write_chunks(arr, plan, blk, i, j)
                _record_done(path, i, j, worker, seconds)
            del blk
            bar.update(1)
            if callback is not None:
                callback("done", i, j)
    finally:
        bar.close()


def _open_meta(plan, path: Path, apply_fn, params, kind_options, *, multi, leader) -> dict:
    """The store's metadata, created by the leader; the worker's other processes then check
    it (they wait for the leader when the worker spans processes)."""
    if leader:
        meta = _create_or_check(plan, path, apply_fn, params, kind_options)
    _sync_processes(multi, f"{path} created")
    if not leader:
        meta = _create_or_check(plan, path, apply_fn, params, kind_options)
    return meta


def store_kernel(
    apply_fn: ApplyFn,
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None = None,
    *,
    path: str | os.PathLike,
    kind: str = "pntk",
    implementation: str = "auto",
    block_size: int = 2048,
    worker: int = 0,
    n_workers: int = 1,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    callback: Callable[[str, int, int], None] | None = None,
    **kind_options: Any,
) -> Path:
    """Computes this worker's share of a kernel's blocks into the chunked store at ``path``.

    With the defaults (one worker) it computes every missing block; ``n_workers`` processes
    started with ``worker = 0 .. n_workers - 1`` (any launcher, any hosts sharing ``path``)
    compute the kernel between them. Repeating a call recomputes only missing blocks.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on ``x[n]`` only.
      params: pytree of floating arrays.
      x1: ``[N1, ...]`` inputs.
      x2: ``[N2, ...]`` inputs, or ``None`` for ``x2 = x1`` (upper-triangle blocks only; the
        stored kernel is exactly symmetric).
      path: the store directory (created if needed). An existing store must hold the same
        computation (see ``meta.json``).
      kind: one of :data:`ntk.KINDS`; default the pNTK.
      implementation: one of :data:`ntk.IMPLEMENTATIONS` or ``"auto"`` (resolved once, by the
        store's creator, on a block's shapes; every worker uses the stored choice).
      block_size: rows (and columns) per block = chunk; the last block is padded so all blocks
        compile once.
      worker: this worker's index in ``[0, n_workers)``; it takes the blocks ``b`` of the grid
        (in :func:`ntk.scale.stream.block_grid` order) with ``b % n_workers == worker``.
      n_workers: how many workers share the grid.
      devices: if given, each block's rows are sharded over these devices with
        :func:`ntk.sharded_kernel`. They may span processes (after
        ``jax.distributed.initialize``): every process of the worker must then make the same
        call; the blocks are gathered and the lowest process writes them.
      progress: a tqdm bar over this worker's blocks.
      callback: ``callback(event, i, j)`` with ``event`` ``"start"`` (before block ``(i, j)``
        is computed) or ``"done"`` (after it is on disk and recorded).
      **kind_options: as for :func:`ntk.kernel`.

    Returns:
      ``path``; read it with :func:`open_kernel`.

    Example:
      >>> import jax.numpy as jnp, tempfile, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)) / 2, "w2": jnp.ones((4, 2))}
      >>> x = jnp.linspace(0, 1, 15).reshape(5, 3)
      >>> path = ntk.store_kernel(f, p, x, path=tempfile.mkdtemp(), block_size=2,
      ...                         progress=False)
      >>> k = ntk.open_kernel(path)
      >>> k.shape, k[1:3, 0].shape
      ((5, 5), (2,))
    """
    _check_worker(worker, n_workers)
    plan, path = _plan(
        apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options
    )
    multi = _spans_processes(devices)
    leader = not multi or jax.process_index() == min(d.process_index for d in devices)
    meta = _open_meta(plan, path, apply_fn, params, kind_options, multi=multi, leader=leader)
    arr = _open_array(path, meta, create=True)
    mine = [b for k, b in enumerate(plan.grid) if k % n_workers == worker]
    done = done_blocks(path)
    todo = [b for b in mine if b not in done]
    _sync_processes(multi, f"{path} planned")  # the blocks are collective: agree on them
    beat = _Heartbeat(path, worker, n_workers, enabled=leader)
    if todo:
        name = meta[blocks.INFO]["resolved_implementation"]
        compute = blocks.block_fn(
            apply_fn, params, kind=kind, implementation=name, kind_options=kind_options,
            devices=devices, gather=multi,
        )  # fmt: skip
        desc = f"store {kind} {tuple(plan.shape)} worker {worker}/{n_workers}"
        bar = blocks.progress_bar(len(mine), len(mine) - len(todo), progress and leader, desc)
        _store_blocks(
            plan, arr, path, compute, todo, bar=bar, beat=beat, callback=callback,
            worker=worker, leader=leader,
        )  # fmt: skip
    beat("finished")
    if todo:
        _sync_processes(multi, f"{path} worker {worker} finished")
    return path
