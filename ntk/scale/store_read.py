"""A kernel store on disk: its layout, and reading it (:func:`open_kernel`, :class:`StoredKernel`).

The store at ``path`` (written by :func:`ntk.store_kernel`; see :mod:`ntk.scale.store_write`) holds
``meta.json`` (what is computed), ``kernel.zarr`` (the zarr v2 array, one chunk per block),
``done/I.J`` (one file per complete block) and ``workers/wK.json`` (heartbeats).
:func:`open_kernel` gives a lazily indexed, read-only :class:`StoredKernel` (slices, rows,
blocks, a chunk-streaming ``matvec``); :func:`ntk.implicit.extreme_eigenvalues` and
:func:`ntk.kernel_regression` accept it, and ``to_npy`` exports a single ``.npy``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ntk import atomic
from ntk.scale.blocks import block_grid, progress_bar
from ntk.scale.stream import NpyBlockWriter, allocate_npy

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
        written to a temporary name and renamed into place when complete (:mod:`ntk.atomic`)."""
        out = Path(out)
        with atomic.replacing(out) as tmp:
            with open(tmp, "xb") as f:
                allocate_npy(f, self.shape, self.dtype)
            b1, b2 = self.n_blocks
            bar = progress_bar(b1 * b2, 0, progress, "to_npy")
            with NpyBlockWriter(tmp) as npy, bar:
                for r0, c0, blk in self._blocks(upper=False):
                    npy.write(blk, r0, c0)
                    bar.update(1)
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
