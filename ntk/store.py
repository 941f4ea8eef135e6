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
(a SLURM array, a Hydra multirun, :func:`ntk.workers.distribute_kernel`) fill the store
between them, and re-running any of them redoes only what is missing. A block is a pure
function of its inputs, padded to the full block shape, so every block is computed by the
same compiled computation whichever process runs it: the store is bit-identical to a
single-process run (on the same hardware and XLA flags).

:func:`open_kernel` gives a lazily indexed, read-only :class:`StoredKernel` (slices, rows,
blocks, a chunk-streaming ``matvec``); :func:`ntk.implicit.extreme_eigenvalues` and
:func:`ntk.kernel_regression` accept it, and ``to_npy`` exports a single ``.npy``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk.kernels import _checks
from ntk.kernels.api import KINDS, _resolve, choose_implementation, kernel
from ntk.stream import (
    _INFO,
    _check_block_size,
    _check_same,
    _create_npy,
    _fsync_dir,
    _meta,
    _transpose_axes,
    _write_block,
    _write_json_atomic,
    block_grid,
    npy_layout,
)

FORMAT = "ntk.store/1"
META_FILE = "meta.json"
ARRAY_DIR = "kernel.zarr"
DONE_DIR = "done"
WORKERS_DIR = "workers"


# --- layout --------------------------------------------------------------------------------


def _array_spec(path: Path, meta: dict | None = None) -> dict:
    spec: dict[str, Any] = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(path / ARRAY_DIR)},
        # No chunk cache: blocks are written once and read in a stream.
        "context": {"cache_pool": {"total_bytes_limit": 0}},
        "recheck_cached_data": False,
    }
    if meta is not None:
        spec["metadata"] = {
            "shape": meta["shape"],
            "chunks": meta["chunks"],
            "dtype": meta["dtype"],
            "compressor": None,
            "fill_value": None,
            "order": "C",
        }
    return spec


def _open_array(path: Path, meta: dict, *, create: bool):
    import tensorstore as ts

    if create:
        return ts.open(_array_spec(path, meta), create=True, open=True).result()
    return ts.open(_array_spec(path), open=True, read=True).result()


def _done_name(i: int, j: int) -> str:
    return f"{i}.{j}"


def done_blocks(path: str | os.PathLike) -> set[tuple[int, int]]:
    """Blocks ``(i, j)`` of the store at ``path`` whose chunks are complete on disk."""
    done = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(Path(path) / DONE_DIR):
            parts = name.split(".")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                done.add((int(parts[0]), int(parts[1])))
    return done


def _grid(meta: dict) -> list[tuple[int, int]]:
    n1, n2 = meta["shape"][:2]
    return block_grid(n1, n2, meta["block_size"], meta["symmetric"])


def missing_blocks(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Blocks of the store at ``path`` not yet complete, in grid order."""
    meta = read_meta(path)
    done = done_blocks(path)
    return [b for b in _grid(meta) if b not in done]


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta.json`` of the store at ``path``; a clear error if there is none."""
    meta_path = Path(path) / META_FILE
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"path: {str(path)!r} is not a kernel store (no {META_FILE}); create it with "
            "ntk.store_kernel"
        ) from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} holds format {meta.get('format')!r}, not {FORMAT}")
    return meta


def _publish_meta(path: Path, meta: dict) -> dict:
    """Writes ``meta.json`` unless it exists; returns the one on disk (ours or a rival's)."""
    meta_path = path / META_FILE
    tmp = path / f".{META_FILE}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, meta_path)  # atomic, and fails if another creator got there first
        _fsync_dir(path)
        return meta
    except FileExistsError:
        with open(meta_path) as f:
            return json.load(f)
    finally:
        os.remove(tmp)


# --- computing blocks ----------------------------------------------------------------------


def _pad_rows(x: Any, n: int) -> jax.Array:
    """``x [m, ...] -> [n, ...]``, repeating the last row (rows are independent; cut later)."""
    x = jnp.asarray(x)
    m = x.shape[0]
    if m == n:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], n - m, axis=0)], axis=0)


def _resolve_auto(apply_fn, params, x1, xb, b1, b2, symmetric, kind, kind_options) -> str:
    spec = KINDS[kind]
    dtype = jax.eval_shape(apply_fn, params, x1[:1]).dtype
    o = jax.eval_shape(apply_fn, params, x1[:1]).shape[-1]
    k = spec.projection(o, dtype, **kind_options).shape[0]
    a = _pad_rows(x1[:b1], b1)
    b = None if symmetric else _pad_rows(xb[:b2], b2)
    return choose_implementation(apply_fn, params, a, b, k, spec.diag)


def _spans_processes(devices: Sequence[jax.Device] | None) -> bool:
    return devices is not None and any(d.process_index != jax.process_index() for d in devices)


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
            _write_json_atomic(self.file, rec)


def store_kernel(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
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
        (in :func:`ntk.stream.block_grid` order) with ``b % n_workers == worker``.
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
    for name, value in (("n_workers", n_workers), ("worker", worker)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    if n_workers < 1:
        raise ValueError(f"n_workers: must be >= 1, got {n_workers}")
    if not 0 <= worker < n_workers:
        raise ValueError(f"worker: must be in [0, n_workers={n_workers}), got {worker}")
    plan = _plan(apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options)
    path, symmetric, xb = plan.path, plan.symmetric, plan.xb
    n1, n2, b1, b2, shape = plan.n1, plan.n2, plan.b1, plan.b2, plan.shape
    multi = _spans_processes(devices)
    leader = not multi or jax.process_index() == min(d.process_index for d in devices)
    if leader:
        meta = _create_or_check(plan, apply_fn, params, x1, kind_options)
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"ntk.store: {path} created")
        if not leader:
            meta = _create_or_check(plan, apply_fn, params, x1, kind_options)
    name = meta[_INFO]["resolved_implementation"]
    arr = _open_array(path, meta, create=True)

    grid = block_grid(n1, n2, block_size, symmetric)
    mine = [b for k, b in enumerate(grid) if k % n_workers == worker]
    done = done_blocks(path)
    todo = [b for b in mine if b not in done]
    if multi:  # every process of this worker must agree on the blocks (they are collective)
        multihost_utils.sync_global_devices(f"ntk.store: {path} planned")
    beat = _Heartbeat(path, worker, n_workers, enabled=leader)
    if not todo:
        beat("finished")
        return path

    if devices is None:

        def compute(a, b):
            return kernel(apply_fn, params, a, b, kind=kind, implementation=name, **kind_options)

    else:
        from ntk.sharding import sharded_kernel

        def compute(a, b):
            k = sharded_kernel(
                apply_fn, params, a, b, kind=kind, implementation=name, devices=devices,
                **kind_options,
            )  # fmt: skip
            if multi:
                return multihost_utils.process_allgather(k, tiled=True)
            return k

    from tqdm.auto import tqdm

    axes = _transpose_axes(len(shape))
    done_dir = path / DONE_DIR
    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        disable=not (progress and leader),
        unit="block",
        desc=f"store {kind} {tuple(shape)} worker {worker}/{n_workers}",
    )
    try:
        for i, j in todo:
            beat("computing", (i, j))
            if callback is not None:
                callback("start", i, j)
            t0 = time.perf_counter()
            s1, s2 = i * block_size, j * block_size
            e1, e2 = min(s1 + block_size, n1), min(s2 + block_size, n2)
            a = _pad_rows(x1[s1:e1], b1)
            if symmetric and i == j:
                blk = compute(a, None)
            else:
                blk = compute(a, _pad_rows(xb[s2:e2], b2))
            blk = np.asarray(blk)[: e1 - s1, : e2 - s2]
            seconds = time.perf_counter() - t0
            if leader:
                writes = [arr[s1:e1, s2:e2].write(blk)]
                if symmetric and i != j:
                    writes.append(
                        arr[s2:e2, s1:e1].write(np.ascontiguousarray(blk.transpose(axes)))
                    )
                for w in writes:
                    w.result()
                rec = {
                    "worker": worker,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "seconds": seconds,
                }
                _write_json_atomic(done_dir / _done_name(i, j), rec)
            del blk
            bar.update(1)
            if callback is not None:
                callback("done", i, j)
        beat("finished")
    finally:
        bar.close()
    if multi:
        multihost_utils.sync_global_devices(f"ntk.store: {path} worker {worker} finished")
    return path


@dataclasses.dataclass(frozen=True)
class _Plan:
    path: Path
    wanted: dict
    symmetric: bool
    xb: Any
    n1: int
    n2: int
    b1: int
    b2: int
    shape: tuple[int, ...]


def _plan(apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options):
    """Checks the arguments; the store's wanted metadata and the block dimensions."""
    _checks.check_choice("kind", kind, KINDS)
    _resolve(implementation)
    _check_block_size(block_size)
    _checks.check_params(params)
    _checks.check_inputs(x1, x2)
    if path is None or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path: expected a directory path, got {path!r}")
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2 = int(x1.shape[0]), int(xb.shape[0])
    b1, b2 = min(block_size, n1), min(block_size, n2)
    if symmetric:
        b1 = b2 = min(b1, b2)

    def k_fn(p, a, b):  # shapes only: any implementation gives the same
        return kernel(apply_fn, p, a, b, kind=kind, implementation="jacobian", **kind_options)

    out = jax.eval_shape(k_fn, params, x1[:1], None if symmetric else xb[:1])
    shape = (n1, n2, *out.shape[2:])
    wanted = _meta(
        apply_fn, params, x1, x2, kind, implementation, block_size, shape, out.dtype, kind_options
    )
    wanted["format"] = FORMAT
    wanted["chunks"] = [b1, b2, *shape[2:]]
    return _Plan(Path(path), wanted, symmetric, xb, n1, n2, b1, b2, shape)


def _create_or_check(plan: _Plan, apply_fn, params, x1, kind_options) -> dict:
    """The store's metadata: created (first caller) or checked against the plan."""
    path, wanted = plan.path, plan.wanted
    meta_path = path / META_FILE
    path.mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        leftovers = [p for p in (ARRAY_DIR, DONE_DIR) if (path / p).exists()]
        if leftovers:
            raise ValueError(
                f"path {str(path)!r} holds {leftovers} but no {META_FILE}; refusing to "
                "overwrite. Use another path or delete these files."
            )
        name = wanted["implementation"]
        if name == "auto":  # decided on one block's shapes, once, by the creator
            name = _resolve_auto(
                apply_fn, params, x1, plan.xb, plan.b1, plan.b2, plan.symmetric,
                wanted["kind"], kind_options,
            )  # fmt: skip
        info = {"resolved_implementation": name, "jax_version": jax.__version__}
        stored = _publish_meta(path, {**wanted, _INFO: info})
    else:
        with open(meta_path) as f:
            stored = json.load(f)
    _check_same(stored, wanted, path)
    (path / DONE_DIR).mkdir(exist_ok=True)
    _open_array(path, stored, create=True)  # idempotent: same metadata for every caller
    return stored


def create_store(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
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
    plan = _plan(apply_fn, params, x1, x2, path, kind, implementation, block_size, kind_options)
    return _create_or_check(plan, apply_fn, params, x1, kind_options)


# --- reading -------------------------------------------------------------------------------


class StoredKernel:
    """A read-only, lazily indexed kernel in a store: nothing is read until indexed.

    ``k[idx]`` reads just the chunks that ``idx`` touches (NumPy indexing as tensorstore
    does it: ints, slices, integer arrays) and returns a NumPy array; ``k.oindex[rows, cols]``
    is outer indexing. ``np.asarray(k)`` reads everything.

    Attributes:
      path: the store directory; meta: its ``meta.json``.
      shape, dtype, ndim: of the kernel (``[N1, N2]``, ``[N1, N2, O]`` or ``[N1, N2, O, O]``).
      block_size: rows/columns per block (= chunk).
      symmetric: computed with ``x2=None`` (square and exactly symmetric).
    """

    def __init__(self, path: Path, meta: dict, array: Any):
        self.path = path
        self.meta = meta
        self._ts = array
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.ndim = len(self.shape)
        self.block_size = int(meta["block_size"])
        self.symmetric = bool(meta["symmetric"])

    def __repr__(self) -> str:
        return (
            f"StoredKernel({str(self.path)!r}, kind={self.meta['kind']!r}, shape={self.shape}, "
            f"dtype={self.dtype}, block_size={self.block_size})"
        )

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _index(self, idx: Any) -> tuple:
        """NumPy's index semantics (negative and out-of-range bounds) in tensorstore's
        absolute coordinates."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is None for i in idx):
            raise IndexError("StoredKernel: np.newaxis is not supported; index, then reshape")
        if sum(i is Ellipsis for i in idx) > 1:
            raise IndexError("StoredKernel: an index can only have a single ellipsis")
        ell = [k for k, i in enumerate(idx) if i is Ellipsis]
        if ell:
            e = ell[0]
            idx = idx[:e] + (slice(None),) * (self.ndim - len(idx) + 1) + idx[e + 1 :]
        if len(idx) > self.ndim:
            raise IndexError(f"too many indices: {len(idx)} for a {self.ndim}-d kernel")
        out = []
        for axis, i in enumerate(idx):
            n = self.shape[axis]
            if isinstance(i, slice):
                out.append(slice(*i.indices(n)))
            elif isinstance(i, int | np.integer):
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
                out.append(int(i) % n)
            else:
                a = np.asarray(i)
                if a.dtype == bool:
                    if a.shape != (n,):
                        raise IndexError(f"boolean index of shape {a.shape} on axis {axis} ({n})")
                    a = np.flatnonzero(a)
                if not np.issubdtype(a.dtype, np.integer):
                    raise IndexError(f"indices must be ints, slices or int arrays, got {a.dtype}")
                if a.size and (a.min() < -n or a.max() >= n):
                    raise IndexError(f"index out of bounds for axis {axis} with size {n}")
                out.append(np.where(a < 0, a + n, a))
        return tuple(out)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self._ts[self._index(idx)].read().result())

    @property
    def oindex(self):
        """Outer indexing: ``k.oindex[rows, cols]`` is ``k[rows][:, cols]``, read at once."""
        kernel = self

        class _OIndex:
            def __getitem__(self, idx):
                idx = kernel._index(idx)
                return np.asarray(kernel._ts.oindex[idx].read().result())

        return _OIndex()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the kernel, ``[stop - start, N2, ...]``."""
        return self[start:stop]

    @property
    def n_blocks(self) -> tuple[int, int]:
        """Blocks along rows and columns."""
        b = self.block_size
        return math.ceil(self.shape[0] / b), math.ceil(self.shape[1] / b)

    def block(self, i: int, j: int) -> np.ndarray:
        """Block ``(i, j)``: rows ``i·B:(i+1)·B``, columns ``j·B:(j+1)·B`` (trimmed at the edge)."""
        b1, b2 = self.n_blocks
        if not (0 <= i < b1 and 0 <= j < b2):
            raise IndexError(f"block ({i}, {j}) outside the {b1}×{b2} block grid")
        b = self.block_size
        return self[i * b : (i + 1) * b, j * b : (j + 1) * b]

    def diagonal(self) -> np.ndarray:
        """``K[n, n, ...]`` for a square kernel (``[N]``, ``[N, O]`` or ``[N, O, O]``), read
        from the diagonal blocks only."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"diagonal: the kernel is not square, shape {self.shape}")
        n, b = self.shape[0], self.block_size
        parts = []
        for s in range(0, n, b):
            blk = self[s : s + b, s : s + b]
            parts.append(np.diagonal(blk, axis1=0, axis2=1).transpose(-1, *range(blk.ndim - 2)))
        return np.concatenate(parts, axis=0)

    def _blocks(self, upper: bool) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(r0, c0, block)`` over the blocks (upper triangle only if ``upper``), with the
        next block's read in flight while the caller works on the current one."""
        b1, b2 = self.n_blocks
        b = self.block_size
        order = [(i, j) for i in range(b1) for j in range(b2) if not (upper and j < i)]

        n1, n2 = self.shape[:2]

        def start(ij):
            i, j = ij
            return self._ts[i * b : min((i + 1) * b, n1), j * b : min((j + 1) * b, n2)].read()

        pending = start(order[0]) if order else None
        for k, (i, j) in enumerate(order):
            fut = pending
            pending = start(order[k + 1]) if k + 1 < len(order) else None
            yield i * b, j * b, np.asarray(fut.result())

    def matvec(self, v: Any) -> np.ndarray:
        """``K v`` in float64, one block in memory at a time (blocks are read once; for a
        symmetric kernel only the upper triangle is read).

        ``[N1, N2]`` kernels: ``v [N2] -> [N1]`` or ``[N2, C] -> [N1, C]``. ``[N1, N2, O, O]``
        eNTKs (the ``N·O`` matrix, sample-major as :func:`ntk.as_matrix`): ``v [N2, O] ->
        [N1, O]``, or ``[N2, O, C] -> [N1, O, C]``.
        """
        v = np.asarray(v, np.float64)
        n1, n2 = self.shape[:2]
        if self.ndim == 2:
            if v.ndim not in (1, 2) or v.shape[0] != n2:
                raise ValueError(f"v: expected [N2] = ({n2},) or [N2, C], got {v.shape}")
        elif self.ndim == 4:
            o = self.shape[3]
            if v.ndim not in (2, 3) or v.shape[:2] != (n2, o):
                raise ValueError(f"v: expected [N2, O] = {(n2, o)} or [N2, O, C], got {v.shape}")
        else:
            raise ValueError(f"matvec: needs a [N1, N2] or [N1, N2, O, O] kernel, not {self.shape}")
        vm = v.reshape(n2, -1) if self.ndim == 2 else v.reshape(n2 * self.shape[3], -1)
        o = 1 if self.ndim == 2 else self.shape[3]
        out = np.zeros((n1 * o, vm.shape[1]))
        for r0, c0, blk in self._blocks(upper=self.symmetric):
            r, c = blk.shape[:2]
            m = blk.astype(np.float64, copy=False)
            if self.ndim == 4:
                m = m.transpose(0, 2, 1, 3).reshape(r * o, c * o)
            else:
                m = m.reshape(r, c)
            out[r0 * o : (r0 + r) * o] += m @ vm[c0 * o : (c0 + c) * o]
            if self.symmetric and r0 != c0:
                out[c0 * o : (c0 + c) * o] += m.T @ vm[r0 * o : (r0 + r) * o]
        return out.reshape(n1, *v.shape[1:])

    def to_npy(self, out: str | os.PathLike, *, progress: bool = True) -> Path:
        """Exports the kernel to one ``.npy`` (``np.load(out, mmap_mode="r")``), block by block;
        written to a temporary name and renamed into place when complete."""
        out = Path(out)
        tmp = out.with_name(f".{out.name}.partial")
        _create_npy(tmp, self.shape, self.dtype)
        _, _, offset = npy_layout(tmp)
        entry_bytes = math.prod(self.shape[2:]) * self.dtype.itemsize
        from tqdm.auto import tqdm

        b1, b2 = self.n_blocks
        fd = os.open(tmp, os.O_WRONLY)
        try:
            with tqdm(total=b1 * b2, disable=not progress, unit="block", desc="to_npy") as bar:
                for r0, c0, blk in self._blocks(upper=False):
                    _write_block(fd, offset, self.shape[1], entry_bytes, blk, r0, c0)
                    bar.update(1)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        return out


def open_kernel(path: str | os.PathLike, *, allow_incomplete: bool = False) -> StoredKernel:
    """The kernel in the store at ``path``, lazily indexed (see :class:`StoredKernel`).

    Args:
      path: a directory written by :func:`store_kernel`.
      allow_incomplete: open a store with missing blocks (they read as zeros); by default
        that is an error listing how many are missing.

    Returns:
      A :class:`StoredKernel` of shape ``[N1, N2, ...]``.
    """
    path = Path(path)
    meta = read_meta(path)
    if not allow_incomplete:
        missing = missing_blocks(path)
        if missing:
            raise ValueError(
                f"path: the store {str(path)!r} is incomplete: {len(missing)} of "
                f"{len(_grid(meta))} blocks missing (first {missing[:5]}); finish it with "
                "ntk.store_kernel or pass allow_incomplete=True"
            )
    return StoredKernel(path, meta, _open_array(path, meta, create=False))
