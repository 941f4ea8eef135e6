"""Kernels larger than memory: computed in blocks and streamed to one ``.npy`` file on disk.

:func:`stream_kernel` writes ``out_dir/kernel.npy``, the full ``[N1, N2, ...]`` kernel, in
row-major ``.npy`` format (load it with ``np.load(path, mmap_mode="r")``). The kernel is
never held in memory: besides the inputs and the model, one block (and its transpose) is:

* the file is created once (header + a sparse ``ftruncate`` to its full size) and never
  memory-mapped for writing; every block row-segment goes to its byte offset with
  ``os.pwrite``. Written pages are page cache, not resident memory of this process, so the
  peak RSS is that of the inputs, the model and one block's computation, not of the kernel;
* with ``x2=None`` only the upper-triangle blocks are computed; each off-diagonal block is
  written twice, as itself and transposed (``(1, 0)`` for 2-D kinds, ``(1, 0, 3, 2)`` for
  the 4-D eNTK, ``(1, 0, 2)`` for ``[N1, N2, O]``);
* a finished block is ``fdatasync``-ed and only then recorded, as one appended line
  ``"i j\n"`` (fsync-ed) of ``out_dir/progress.log``: O(1) per block, so recording stays
  cheap however many blocks there are, and a killed run restarts from the blocks it
  completed (a torn last line is ignored). A finished run also writes the summary
  ``out_dir/progress.json`` (atomically, with :mod:`ntk.atomic`). ``out_dir/meta.json``
  (also atomic) records what is being computed; a resume with anything different is
  refused, naming the keys that differ.

This is the single-process, single-file path. For many workers (processes, hosts, a SLURM
array) writing one kernel, use the chunked store, :mod:`ntk.scale.store_write` (which also exports
``.npy``); see ``docs/scale.md``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk import atomic
from ntk.adapters import ApplyFn
from ntk.scale import blocks

__all__ = [
    "FORMAT",
    "KERNEL_FILE",
    "META_FILE",
    "PROGRESS_FILE",
    "PROGRESS_LOG",
    "NpyBlockWriter",
    "allocate_npy",
    "npy_layout",
    "read_progress",
    "stream_kernel",
]

FORMAT = "ntk.stream/1"
KERNEL_FILE = "kernel.npy"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
PROGRESS_LOG = "progress.log"
LOCK_FILE = ".lock"


# --- the .npy file ----------------------------------------------------------------------------


def allocate_npy(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Writes an ``.npy`` header for ``shape``/``dtype`` to the open binary file ``f`` and
    sizes the file (sparse zeros on disk; nothing is mapped or held in memory)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    np.lib.format.write_array_header_1_0(f, header)
    f.truncate(f.tell() + math.prod(shape) * np.dtype(dtype).itemsize)


def npy_layout(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset in bytes)`` of a C-order ``.npy`` file (reads the header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: Fortran-order .npy files are not supported")
    return tuple(shape), np.dtype(dtype), offset


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class NpyBlockWriter:
    """Writes blocks ``[R, C, ...]`` of an existing ``[N1, N2, ...]`` ``.npy`` file in place
    with ``os.pwrite`` (never memory-mapped). A context manager; ``sync`` makes the written
    blocks durable."""

    def __init__(self, path: str | os.PathLike):
        self.shape, self.dtype, self.offset = npy_layout(path)
        self.entry_bytes = math.prod(self.shape[2:]) * self.dtype.itemsize
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, block: np.ndarray, r0: int, c0: int) -> None:
        """Writes ``block [R, C, ...]`` at rows ``r0:r0+R``, columns ``c0:c0+C``."""
        block = np.ascontiguousarray(block)
        rows, cols = block.shape[:2]
        n2 = self.shape[1]
        flat = memoryview(block).cast("B")
        seg = cols * self.entry_bytes
        if cols == n2:  # whole rows: one contiguous write
            _pwrite_all(self.fd, flat, self.offset + r0 * n2 * self.entry_bytes)
            return
        for r in range(rows):
            offset = self.offset + ((r0 + r) * n2 + c0) * self.entry_bytes
            _pwrite_all(self.fd, flat[r * seg : (r + 1) * seg], offset)

    def sync(self) -> None:
        _sync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> NpyBlockWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sync(fd: int) -> None:
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)


# --- the directory: lock, meta.json, progress ---------------------------------------------------


@contextlib.contextmanager
def _locked(out_dir: Path):
    """An exclusive lock on ``out_dir`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(out_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"out_dir {str(out_dir)!r} is in use by another stream_kernel process"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_progress(out_dir: str | os.PathLike) -> set[tuple[int, int]]:
    """Blocks ``(i, j)`` recorded as complete in ``out_dir`` (``progress.log`` lines, and the
    summary ``progress.json`` of a finished or older run); a torn last line is ignored."""
    out_dir = Path(out_dir)
    done: set[tuple[int, int]] = set()
    with contextlib.suppress(FileNotFoundError), open(out_dir / PROGRESS_FILE) as f:
        done |= {tuple(b) for b in json.load(f)["done"]}
    with contextlib.suppress(FileNotFoundError), open(out_dir / PROGRESS_LOG, "rb") as f:
        for line in f.read().split(b"\n")[:-1]:  # the last piece has no newline yet
            parts = line.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                done.add((int(parts[0]), int(parts[1])))
    return done


def _load_progress(out_dir: Path, grid: list[tuple[int, int]]) -> set[tuple[int, int]]:
    done = read_progress(out_dir)
    unknown = done - set(grid)
    if unknown:
        raise ValueError(f"{out_dir}: records blocks {sorted(unknown)[:5]} outside the block grid")
    return done


def _write_summary(out_dir: Path, done: set[tuple[int, int]], total: int) -> None:
    summary = {"done": sorted(done), "total": total, "complete": True}
    atomic.write_json(out_dir / PROGRESS_FILE, summary, sort_keys=True)


def _meta_or_create(out_dir: Path, plan: blocks.BlockPlan, apply_fn, params, kind_options) -> dict:
    """``meta.json``: checked against the plan, or written (``"auto"`` resolved) if new."""
    meta_path = out_dir / META_FILE
    if meta_path.exists():
        with open(meta_path) as f:
            stored = json.load(f)
        blocks.check_same(stored, plan.meta, out_dir)
        return stored
    files = (KERNEL_FILE, PROGRESS_FILE, PROGRESS_LOG)
    leftovers = [name for name in files if (out_dir / name).exists()]
    if leftovers:
        raise ValueError(
            f"out_dir {str(out_dir)!r} holds {leftovers} but no {META_FILE}; refusing "
            "to overwrite. Use another out_dir or delete these files."
        )
    meta = {
        **plan.meta,
        blocks.INFO: blocks.resolve_implementation(apply_fn, params, plan, kind_options),
    }
    atomic.write_json(meta_path, meta, sort_keys=True)
    return meta


def _kernel_file(out_dir: Path, plan: blocks.BlockPlan) -> Path:
    """``kernel.npy``, created (with fresh progress) if absent; its layout checked."""
    path = out_dir / KERNEL_FILE
    if not path.exists():
        for stale in (out_dir / PROGRESS_FILE, out_dir / PROGRESS_LOG):  # the kernel file
            if stale.exists():  # was removed: start again
                os.remove(stale)
        atomic.write_with(path, lambda f: allocate_npy(f, plan.shape, plan.dtype))
    file_shape, file_dtype, _ = npy_layout(path)
    if file_shape != plan.shape or file_dtype != plan.dtype:
        raise ValueError(
            f"{path}: holds {file_shape} {file_dtype}, expected {plan.shape} {plan.dtype}; "
            "the file does not match meta.json"
        )
    return path


# --- the loop ---------------------------------------------------------------------------------


def _stream_blocks(path, out_dir, plan, compute, done, bar, on_block) -> None:
    """Computes the blocks not in ``done``; each is written, synced, then recorded."""
    log_fd = os.open(out_dir / PROGRESS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with NpyBlockWriter(path) as npy:
            for i, j in plan.grid:
                if (i, j) in done:
                    continue
                blk = blocks.compute_block(plan, compute, i, j)
                for part, r0, c0 in blocks.placements(plan, blk, i, j):
                    npy.write(part, r0, c0)
                del blk, part
                npy.sync()
                os.write(log_fd, f"{i} {j}\n".encode())  # one small append: O(1) per block
                _sync(log_fd)
                done.add((i, j))
                bar.update(1)
                if on_block is not None:
                    on_block(i, j)
    finally:
        os.close(log_fd)
        bar.close()


def stream_kernel(
    apply_fn: ApplyFn,
    params: Any,
    x1: Any,
    x2: Any | None = None,
    *,
    out_dir: str | os.PathLike,
    kind: str = "pntk",
    implementation: str = "auto",
    block_size: int = 2048,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    on_block: Callable[[int, int], None] | None = None,
    **kind_options: Any,
) -> Path:
    """Computes a kernel block by block and streams it to ``out_dir/kernel.npy``; resumable.

    The kernel is never in memory: peak memory is that of the inputs, the model and one
    block's computation (a ``block_size × block_size`` block, its transpose and the
    implementation's intermediates). A killed call, repeated with the same arguments, skips
    the blocks already on disk.

    Args:
      apply_fn: ``apply_fn(params, x) -> [batch, O]``; row n depends on ``x[n]`` only.
      params: pytree of floating arrays.
      x1: ``[N1, ...]`` inputs.
      x2: ``[N2, ...]`` inputs, or ``None`` for ``x2 = x1`` (upper-triangle blocks only; the
        result is exactly symmetric).
      out_dir: directory for ``kernel.npy``, ``meta.json`` and ``progress.json``; created if
        needed. An existing directory must hold the same computation (see ``meta.json``).
      kind: one of :data:`ntk.KINDS`; default the pNTK.
      implementation: one of :data:`ntk.IMPLEMENTATIONS` or ``"auto"`` (resolved once, on a
        block, and kept in ``meta.json`` for resumes).
      block_size: rows (and columns) of x1/x2 per block; the last block is padded so all
        blocks compile once.
      progress: show a tqdm progress bar over blocks.
      devices: if given, each block's rows are sharded over these devices with
        :func:`ntk.scale.sharding.sharded_kernel`.
      on_block: called as ``on_block(i, j)`` after block ``(i, j)`` is on disk and recorded.
      **kind_options: as for :func:`ntk.kernel`.

    Returns:
      Path of ``kernel.npy``: ``[N1, N2]``, ``[N1, N2, O]`` or ``[N1, N2, O, O]`` as for
      :func:`ntk.kernel`, in the model's dtype.

    Example:
      >>> import jax.numpy as jnp, numpy as np, tempfile
      >>> from ntk.scale.stream import stream_kernel
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)) / 2, "w2": jnp.ones((4, 2))}
      >>> x = jnp.linspace(0, 1, 15).reshape(5, 3)
      >>> path = stream_kernel(f, p, x, out_dir=tempfile.mkdtemp(), block_size=2,
      ...                      progress=False)
      >>> np.load(path, mmap_mode="r").shape
      (5, 5)
    """
    plan = blocks.plan_blocks(
        apply_fn, params, x1, x2, kind=kind, implementation=implementation,
        block_size=block_size, kind_options=kind_options, fmt=FORMAT,
    )  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        meta = _meta_or_create(out_dir, plan, apply_fn, params, kind_options)
        path = _kernel_file(out_dir, plan)
        done = _load_progress(out_dir, plan.grid)
        if len(done) < len(plan.grid):
            name = meta.get(blocks.INFO, {}).get("resolved_implementation", implementation)
            compute = blocks.block_fn(
                apply_fn, params, kind=kind, implementation=name, kind_options=kind_options,
                devices=devices,
            )  # fmt: skip
            desc = f"stream {kind} {plan.shape}"
            bar = blocks.progress_bar(len(plan.grid), len(done), progress, desc)
            _stream_blocks(path, out_dir, plan, compute, done, bar, on_block)
        elif (out_dir / PROGRESS_FILE).exists():  # complete, and the summary is written
            return path
        _write_summary(out_dir, done, len(plan.grid))
    return path
