"""A kernel computed block by block: the grid, one block's inputs and computation, and the
record of what is computed. Shared by :mod:`ntk.scale.stream` (one ``.npy`` file) and
:mod:`ntk.scale.store_write` (a chunked store), so both compute every block the same way,
bit for bit.

A block is a pure function of its inputs padded to the full block shape (the last row of x1
or x2 repeated; rows are independent and the padding is cut off), so every block compiles
once and is the same whichever process computes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntk import checks
from ntk.kernels import kinds
from ntk.kernels.api import kernel
from ntk.kernels.kinds import KINDS
from ntk.kernels.model import pad_rows
from ntk.kernels.preparation import prepare

# The key of the metadata record that is not compared on resume (resolved choices, versions).
INFO = "info"


# --- what is computed: the metadata record ------------------------------------------------


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


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 80 else s[:77] + "..."


def check_same(stored: dict, wanted: dict, out_dir: Path) -> None:
    """Refuses to resume when ``stored`` and ``wanted`` differ in any key but :data:`INFO`."""
    keys = sorted(k for k in set(stored) | set(wanted) if k != INFO)
    diff = [k for k in keys if stored.get(k) != wanted.get(k)]
    if diff:
        detail = "; ".join(
            f"{k}: stored {_short(stored.get(k))}, requested {_short(wanted.get(k))}" for k in diff
        )
        raise ValueError(
            f"out_dir {str(out_dir)!r} holds a different streamed kernel; refusing to resume. "
            f"Differing keys: {diff} ({detail}). Use another out_dir or delete this one."
        )


def check_block_size(block_size: Any) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise TypeError(f"block_size: expected a positive int, got {block_size!r}")
    if block_size <= 0:
        raise ValueError(f"block_size: must be a positive int, got {block_size}")


# --- the grid and the plan --------------------------------------------------------------------


def block_grid(n1: int, n2: int, block_size: int, symmetric: bool) -> list[tuple[int, int]]:
    """Block indices ``(i, j)`` in computation order (upper triangle when symmetric)."""
    b1 = math.ceil(n1 / block_size)
    b2 = math.ceil(n2 / block_size)
    return [(i, j) for i in range(b1) for j in range(b2) if not (symmetric and j < i)]


def transpose_axes(ndim: int) -> tuple[int, ...]:
    """Axes that transpose a kernel block: ``(1, 0, 3, 2)`` for the eNTK, else ``(1, 0, ...)``."""
    return (1, 0, 3, 2) if ndim == 4 else (1, 0, *range(2, ndim))


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """The blocks of the kernel of ``x1 [N1, ...]`` against ``xb [N2, ...]`` (``xb`` is x1
    when ``symmetric``): ``b1 × b2`` padded inputs per block, ``shape`` and ``dtype`` of the
    whole kernel, and its record (``meta``) as stored beside it."""

    x1: Any
    xb: Any
    symmetric: bool
    block_size: int
    n1: int
    n2: int
    b1: int
    b2: int
    shape: tuple[int, ...]
    dtype: np.dtype
    meta: dict

    @property
    def grid(self) -> list[tuple[int, int]]:
        return block_grid(self.n1, self.n2, self.block_size, self.symmetric)

    def span(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(s1, e1, s2, e2)``: rows ``s1:e1`` and columns ``s2:e2`` of block ``(i, j)``."""
        s1, s2 = i * self.block_size, j * self.block_size
        return s1, min(s1 + self.block_size, self.n1), s2, min(s2 + self.block_size, self.n2)

    def inputs(self, i: int, j: int) -> tuple[Any, Any | None]:
        """The padded inputs of block ``(i, j)``; ``None`` for the columns of a diagonal
        block of a symmetric kernel (computed as exactly symmetric)."""
        s1, e1, s2, e2 = self.span(i, j)
        a = pad_rows(self.x1[s1:e1], self.b1)
        if self.symmetric and i == j:
            return a, None
        return a, pad_rows(self.xb[s2:e2], self.b2)


def plan_blocks(
    apply_fn, params, x1, x2, *, kind, implementation, block_size, kind_options, fmt: str
) -> BlockPlan:
    """Validates a blocked kernel request (the checks of :func:`ntk.kernel`, with "auto" left
    for :func:`resolve_implementation`) and plans its blocks; ``meta`` has format ``fmt``."""
    checks.check_choice("kind", kind, KINDS)
    kinds.resolve_implementation(implementation)
    check_block_size(block_size)
    prepare(
        apply_fn, params, x1, x2, kind=kind, kind_options=kind_options,
        implementation="jacobian" if implementation == "auto" else implementation,
    )  # fmt: skip
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
    meta = {
        "format": fmt,
        "kind": kind,
        "implementation": implementation,
        "block_size": int(block_size),
        "symmetric": symmetric,
        "shape": [int(s) for s in shape],
        "dtype": np.dtype(out.dtype).str,
        "x1_shape": [int(s) for s in x1.shape],
        "x2_shape": None if x2 is None else [int(s) for s in x2.shape],
        "params_sha256": array_digest(params),
        "x1_sha256": array_digest(x1),
        "x2_sha256": None if x2 is None else array_digest(x2),
        "apply_fn": _fn_name(apply_fn),
        "kind_options": {k: _plain(v) for k, v in sorted(kind_options.items())},
    }
    return BlockPlan(x1, xb, symmetric, block_size, n1, n2, b1, b2, shape, out.dtype, meta)


def resolve_implementation(apply_fn, params, plan: BlockPlan, kind_options) -> dict:
    """The :data:`INFO` record: the implementation (``"auto"`` decided on one block's
    shapes, the same for every block) and the jax version."""
    name = plan.meta["implementation"]
    if name == "auto":
        a, b = plan.inputs(0, 0)
        name = prepare(
            apply_fn, params, a, b, kind=plan.meta["kind"], implementation="auto",
            kind_options=kind_options,
        ).implementation  # fmt: skip
    return {"resolved_implementation": name, "jax_version": jax.__version__}


# --- computing and placing a block ------------------------------------------------------------


def block_fn(
    apply_fn,
    params,
    *,
    kind: str,
    implementation: str,
    kind_options: dict,
    devices: Sequence[jax.Device] | None = None,
    gather: bool = False,
) -> Callable[[Any, Any], Any]:
    """``compute(a, b)``: the kernel of one block's padded inputs, on one device or with its
    rows sharded over ``devices`` (then gathered to every process with ``gather``)."""
    if devices is None:

        def compute(a, b):
            return kernel(
                apply_fn, params, a, b, kind=kind, implementation=implementation, **kind_options
            )

        return compute

    from ntk.scale.sharding import sharded_kernel

    def compute_sharded(a, b):
        k = sharded_kernel(
            apply_fn, params, a, b, kind=kind, implementation=implementation, devices=devices,
            **kind_options,
        )  # fmt: skip
        if gather:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(k, tiled=True)
        return k

    return compute_sharded


def compute_block(plan: BlockPlan, compute, i: int, j: int) -> np.ndarray:
    """Block ``(i, j)`` on the host, the padding cut off: ``[e1 - s1, e2 - s2, ...]``."""
    s1, e1, s2, e2 = plan.span(i, j)
    return np.asarray(compute(*plan.inputs(i, j)))[: e1 - s1, : e2 - s2]


def placements(plan: BlockPlan, blk: np.ndarray, i: int, j: int):
    """``(block, r0, c0)`` for each place ``blk`` goes in the kernel: at its own rows and
    columns, and transposed at ``(j, i)`` for an off-diagonal block of a symmetric kernel."""
    s1, _, s2, _ = plan.span(i, j)
    out = [(blk, s1, s2)]
    if plan.symmetric and i != j:
        out.append((np.ascontiguousarray(blk.transpose(transpose_axes(blk.ndim))), s2, s1))
    return out


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm bar over blocks."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="block", desc=desc)
