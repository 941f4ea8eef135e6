"""Kernels larger than memory: computed in blocks and streamed to one ``.npy`` file on disk.

:func:`stream_kernel` writes ``out_dir/kernel.npy``, the full ``[N1, N2, ...]`` kernel, in
row-major ``.npy`` format (load it with ``np.load(path, mmap_mode="r")``). It holds at most
one block pair (and its transpose) in memory, whatever N is:

* the file is created once (header + a sparse ``ftruncate`` to its full size) and never
  memory-mapped for writing; every block row-segment goes to its byte offset with
  ``os.pwrite``. Written pages are page cache, not resident memory of this process, so the
  peak RSS is that of the model and one block, not of the kernel;
* with ``x2=None`` only the upper-triangle blocks are computed; each off-diagonal block is
  written twice, as itself and transposed (``(1, 0)`` for 2-D kinds, ``(1, 0, 3, 2)`` for
  the 4-D eNTK, ``(1, 0, 2)`` for ``[N1, N2, O]``);
* a finished block is ``fdatasync``-ed and only then recorded, as one appended line
  ``"i j\n"`` (fsync-ed) of ``out_dir/progress.log``: O(1) per block, so recording stays
  cheap however many blocks there are, and a killed run restarts from the blocks it
  completed (a torn last line is ignored). A finished run also writes the summary
  ``out_dir/progress.json`` (atomically: temporary file, fsync, ``os.replace``).
  ``out_dir/meta.json`` (also atomic) records what is being computed; a resume with
  anything different is refused, naming the keys that differ.

This is the single-process, single-file path. For many workers (processes, hosts, a SLURM
array) writing one kernel, use the chunked store, :mod:`ntk.store` (which also exports
``.npy``); see ``docs/scale.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk.kernels import _checks
from ntk.kernels.api import KINDS, _resolve, kernel, prepare
from ntk.kernels.model import pad_rows as _pad_rows

FORMAT = "ntk.stream/1"
KERNEL_FILE = "kernel.npy"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
PROGRESS_LOG = "progress.log"
LOCK_FILE = ".lock"

# Keys of meta.json that describe the computation (compared on resume); "info" is not.
_INFO = "info"


# --- hashing and metadata ------------------------------------------------------------------


def _host_array(a: Any) -> np.ndarray:
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.ascontiguousarray(np.asarray(a))


def array_digest(*arrays: Any) -> str:
    """sha256 of the dtypes, shapes and bytes of ``arrays`` (pytrees allowed), in order."""
    h = hashlib.sha256()
    for tree in arrays:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        h.update(str(treedef).encode())
        for leaf in leaves:
            a = _host_array(leaf)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def _fn_name(fn: Any) -> str:
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name


def _plain(value: Any) -> Any:
    """JSON form of a kind option: plain values as they are, arrays by their digest."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, list | tuple) and all(
        v is None or isinstance(v, bool | int | float | str) for v in value
    ):
        return list(value)
    return {"sha256": array_digest(value)}


def _meta(apply_fn, params, x1, x2, kind, implementation, block_size, shape, dtype, opts):
    return {
        "format": FORMAT,
        "kind": kind,
        "implementation": implementation,
        "block_size": int(block_size),
        "symmetric": x2 is None,
        "shape": [int(s) for s in shape],
        "dtype": np.dtype(dtype).str,
        "x1_shape": [int(s) for s in x1.shape],
        "x2_shape": None if x2 is None else [int(s) for s in x2.shape],
        "params_sha256": array_digest(params),
        "x1_sha256": array_digest(x1),
        "x2_sha256": None if x2 is None else array_digest(x2),
        "apply_fn": _fn_name(apply_fn),
        "kind_options": {k: _plain(v) for k, v in sorted(opts.items())},
    }


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _check_same(stored: dict, wanted: dict, out_dir: Path) -> None:
    keys = sorted(k for k in set(stored) | set(wanted) if k != _INFO)
    diff = [k for k in keys if stored.get(k) != wanted.get(k)]
    if diff:
        detail = "; ".join(
            f"{k}: stored {_short(stored.get(k))}, requested {_short(wanted.get(k))}" for k in diff
        )
        raise ValueError(
            f"out_dir {str(out_dir)!r} holds a different streamed kernel; refusing to resume. "
            f"Differing keys: {diff} ({detail}). Use another out_dir or delete this one."
        )


# --- atomic files --------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _create_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """An ``.npy`` of ``shape`` (zeros, sparse on disk), created atomically; never mapped."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + math.prod(shape) * np.dtype(dtype).itemsize)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


def _write_block(fd, data_offset, n2, entry_bytes, block, r0, c0) -> None:
    """Writes ``block [R, C, ...]`` at rows ``r0:r0+R``, columns ``c0:c0+C`` of the file."""
    block = np.ascontiguousarray(block)
    rows, cols = block.shape[:2]
    flat = memoryview(block).cast("B")
    seg = cols * entry_bytes
    if cols == n2:  # whole rows: one contiguous write
        _pwrite_all(fd, flat, data_offset + r0 * n2 * entry_bytes)
        return
    for r in range(rows):
        offset = data_offset + ((r0 + r) * n2 + c0) * entry_bytes
        _pwrite_all(fd, flat[r * seg : (r + 1) * seg], offset)


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


# --- the blocks ----------------------------------------------------------------------------


def block_grid(n1: int, n2: int, block_size: int, symmetric: bool) -> list[tuple[int, int]]:
    """Block indices ``(i, j)`` in computation order (upper triangle when symmetric)."""
    b1 = math.ceil(n1 / block_size)
    b2 = math.ceil(n2 / block_size)
    return [(i, j) for i in range(b1) for j in range(b2) if not (symmetric and j < i)]


def _transpose_axes(ndim: int) -> tuple[int, ...]:
    return (1, 0, 3, 2) if ndim == 4 else (1, 0, *range(2, ndim))


def _check_block_size(block_size: Any) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise TypeError(f"block_size: expected a positive int, got {block_size!r}")
    if block_size <= 0:
        raise ValueError(f"block_size: must be a positive int, got {block_size}")


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


def stream_kernel(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
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

    Peak memory is one ``block_size × block_size`` block pair plus the model, for any N. A
    killed call, repeated with the same arguments, skips the blocks already on disk.

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
        :func:`ntk.sharding.sharded_kernel`.
      on_block: called as ``on_block(i, j)`` after block ``(i, j)`` is on disk and recorded.
      **kind_options: as for :func:`ntk.kernel`.

    Returns:
      Path of ``kernel.npy``: ``[N1, N2]``, ``[N1, N2, O]`` or ``[N1, N2, O, O]`` as for
      :func:`ntk.kernel`, in the model's dtype.

    Example:
      >>> import jax.numpy as jnp, numpy as np, tempfile
      >>> from ntk.stream import stream_kernel
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> p = {"w1": jnp.ones((3, 4)) / 2, "w2": jnp.ones((4, 2))}
      >>> x = jnp.linspace(0, 1, 15).reshape(5, 3)
      >>> path = stream_kernel(f, p, x, out_dir=tempfile.mkdtemp(), block_size=2,
      ...                      progress=False)
      >>> np.load(path, mmap_mode="r").shape
      (5, 5)
    """
    _checks.check_choice("kind", kind, KINDS)
    _resolve(implementation)
    _check_block_size(block_size)
    prepare(  # the shared checks; "auto" is resolved below, on one block's shapes
        apply_fn,
        params,
        x1,
        x2,
        kind=kind,
        implementation="jacobian" if implementation == "auto" else implementation,
        kind_options=kind_options,
    )
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, n2 = int(x1.shape[0]), int(xb.shape[0])
    b1, b2 = min(block_size, n1), min(block_size, n2)
    if symmetric:
        b1 = b2 = min(b1, b2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / KERNEL_FILE

    def k_fn(p, a, b):  # shapes only: any implementation gives the same
        return kernel(apply_fn, p, a, b, kind=kind, implementation="jacobian", **kind_options)

    out = jax.eval_shape(k_fn, params, x1[:1], None if symmetric else xb[:1])
    shape = (n1, n2, *out.shape[2:])
    wanted = _meta(
        apply_fn, params, x1, x2, kind, implementation, block_size, shape, out.dtype, kind_options
    )

    with _locked(out_dir):
        meta_path = out_dir / META_FILE
        if meta_path.exists():
            with open(meta_path) as f:
                stored = json.load(f)
            _check_same(stored, wanted, out_dir)
            name = stored.get(_INFO, {}).get("resolved_implementation", implementation)
        else:
            leftovers = [
                p.name
                for p in (path, out_dir / PROGRESS_FILE, out_dir / PROGRESS_LOG)
                if p.exists()
            ]
            if leftovers:
                raise ValueError(
                    f"out_dir {str(out_dir)!r} holds {leftovers} but no {META_FILE}; refusing "
                    "to overwrite. Use another out_dir or delete these files."
                )
            name = implementation
            if implementation == "auto":  # decided on one block's shapes
                a = _pad_rows(x1[:b1], b1)
                b = None if symmetric else _pad_rows(xb[:b2], b2)
                name = prepare(
                    apply_fn,
                    params,
                    a,
                    b,
                    kind=kind,
                    implementation=implementation,
                    kind_options=kind_options,
                ).implementation
            wanted[_INFO] = {"resolved_implementation": name, "jax_version": jax.__version__}
            _write_json_atomic(meta_path, wanted)

        grid = block_grid(n1, n2, block_size, symmetric)
        progress_path = out_dir / PROGRESS_FILE
        if not path.exists():
            for stale in (progress_path, out_dir / PROGRESS_LOG):  # the kernel file was
                if stale.exists():  # removed: start again
                    os.remove(stale)
            _create_npy(path, shape, out.dtype)
        file_shape, file_dtype, data_offset = npy_layout(path)
        if file_shape != shape or file_dtype != out.dtype:
            raise ValueError(
                f"{path}: holds {file_shape} {file_dtype}, expected {shape} {out.dtype}; "
                "the file does not match meta.json"
            )
        done = _load_progress(out_dir, grid)
        if len(done) == len(grid):
            if not progress_path.exists():  # killed between its last block and the summary
                _write_json_atomic(
                    progress_path, {"done": sorted(done), "total": len(grid), "complete": True}
                )
            return path

        entry_bytes = math.prod(shape[2:]) * out.dtype.itemsize
        axes = _transpose_axes(len(shape))
        if devices is None:

            def compute(a, b):
                return kernel(
                    apply_fn, params, a, b, kind=kind, implementation=name, **kind_options
                )

        else:
            from ntk.sharding import sharded_kernel

            def compute(a, b):
                return sharded_kernel(
                    apply_fn,
                    params,
                    a,
                    b,
                    kind=kind,
                    implementation=name,
                    devices=devices,
                    **kind_options,
                )

        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(grid),
            initial=len(done),
            disable=not progress,
            unit="block",
            desc=f"stream {kind} {shape}",
        )
        fd = os.open(path, os.O_WRONLY)
        log_fd = os.open(out_dir / PROGRESS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        sync = os.fdatasync if hasattr(os, "fdatasync") else os.fsync
        try:
            for i, j in grid:
                if (i, j) in done:
                    continue
                s1, s2 = i * block_size, j * block_size
                e1, e2 = min(s1 + block_size, n1), min(s2 + block_size, n2)
                a = _pad_rows(x1[s1:e1], b1)
                if symmetric and i == j:
                    blk = compute(a, None)
                else:
                    blk = compute(a, _pad_rows(xb[s2:e2], b2))
                blk = np.asarray(blk)[: e1 - s1, : e2 - s2]
                _write_block(fd, data_offset, n2, entry_bytes, blk, s1, s2)
                if symmetric and i != j:
                    _write_block(fd, data_offset, n2, entry_bytes, blk.transpose(axes), s2, s1)
                del blk
                sync(fd)
                os.write(log_fd, f"{i} {j}\n".encode())  # one small append: O(1) per block
                sync(log_fd)
                done.add((i, j))
                bar.update(1)
                if on_block is not None:
                    on_block(i, j)
        finally:
            os.close(fd)
            os.close(log_fd)
            bar.close()
        _write_json_atomic(
            progress_path, {"done": sorted(done), "total": len(grid), "complete": True}
        )
    return path
