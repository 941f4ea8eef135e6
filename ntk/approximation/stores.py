"""The stored mode's kernels: computed block by block into chunked stores under
``DIR/kernels/`` (the first phase), and read back as operators, block by block or whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk.approximation.inputs import Context
from ntk.kernels.model import batch_len
from ntk.scale.blocks import progress_bar


def store_kernels(
    ctx: Context, root: Path, block_size: int, progress: bool, callback
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase "kernels": the eNTK's and each kind's training kernel ``[N, N, ...]`` and, with
    test points, test-train kernel ``[M, N, ...]`` in ``root/kernels/NAME[_test]`` (a store
    resumes by itself). Returns the opened stores ``(train, test)``, by kernel name."""
    from ntk.scale.store_read import open_kernel
    from ntk.scale.store_write import store_kernel

    fn_s, xi, xi_test = _store_model(ctx.apply_fn, ctx.x, ctx.x_test, ctx.apply_kwargs)
    train, test = {}, {}
    for name in ("entk", *ctx.kinds):
        opts = ctx.options.get(name, {})
        for part, a, b in (("", xi, None), ("_test", xi_test, xi)):
            if a is None:
                continue
            where = root / "kernels" / f"{name}{part}"
            store_kernel(
                fn_s,
                ctx.params,
                a,
                b,
                path=where,
                kind=name,
                block_size=block_size,
                progress=progress,
                callback=_BlockDone(f"kernel {name}{part}", callback),
                **opts,
            )
            (train if part == "" else test)[name] = open_kernel(where)
    return train, test


class _BlockDone:
    """:func:`ntk.store_kernel`'s callback: ``callback(phase, count)`` after each block."""

    def __init__(self, phase: str, callback: Callable[[str, int], None] | None):
        self.phase, self.callback, self.count = phase, callback, 0

    def __call__(self, event: str, i: int, j: int) -> None:
        if event == "done" and self.callback is not None:
            self.count += 1
            self.callback(self.phase, self.count)


def _store_model(apply_fn, x, x_test, apply_kwargs):
    """``(fn, x, x_test)`` for :func:`ntk.store_kernel`, which takes arrays and no state:
    state is closed over; a pytree ``x`` becomes row indices into ``Z = X ∪ X*``."""
    if isinstance(x, jax.Array | np.ndarray):
        if not apply_kwargs:
            return apply_fn, x, x_test

        def with_state(params, a):
            return apply_fn(params, a, **apply_kwargs)

        return with_state, x, x_test
    z = (
        x
        if x_test is None
        else jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), x, x_test)
    )

    def indexed(params, idx):
        return apply_fn(params, jax.tree_util.tree_map(lambda a: a[idx], z), **apply_kwargs)

    n = batch_len(x)
    idx = np.arange(batch_len(z), dtype=np.int32)
    return indexed, idx[:n], (None if x_test is None else idx[n:])


class StoredOperator:
    """A stored kernel as the operator :mod:`ntk.implicit` and :mod:`ntk.regression` take
    (``shape``, ``block_size``, ``symmetric``, ``matvec``, ``diagonal``): the ``[N, N]`` and
    ``[N, N, O, O]`` kinds as they are, ``[N1, N2, O]`` (``diagonal``) as the block-diagonal
    ``[N1, N2, O, O]``; each matvec ticks ``tick``."""

    def __init__(self, stored, tick: Callable[[], None]):
        self._k = stored
        self.tick = tick
        self.block_size = stored.block_size
        self.symmetric = stored.symmetric
        s = tuple(stored.shape)
        self.shape = (*s, s[2]) if len(s) == 3 else s

    def matvec(self, v) -> np.ndarray:
        self.tick()
        if self._k.ndim != 3:
            return self._k.matvec(v)
        v = np.asarray(v, np.float64)
        n1, n2, o = self._k.shape
        v_NOC = v.reshape(n2, o, -1)
        out = np.zeros((n1, o, v_NOC.shape[2]))
        b = self.block_size
        b1, b2 = self._k.n_blocks
        for i in range(b1):
            for j in range(i if self.symmetric else 0, b2):
                blk = self._k.block(i, j).astype(np.float64)  # [r, c, O]
                r0, c0 = i * b, j * b
                r, c = blk.shape[:2]
                out[r0 : r0 + r] += np.einsum("rcq,cqk->rqk", blk, v_NOC[c0 : c0 + c])
                if self.symmetric and i != j:
                    out[c0 : c0 + c] += np.einsum("rcq,rqk->cqk", blk, v_NOC[r0 : r0 + r])
        return out.reshape(n1, *v.shape[1:])

    def diagonal(self) -> np.ndarray:
        d = self._k.diagonal()
        return d[:, :, None] * np.eye(d.shape[1]) if self._k.ndim == 3 else d


def operator(kernel, phase: str, progress: bool, callback) -> tuple[StoredOperator, Any]:
    """``(operator, its tqdm bar)`` of a stored kernel; each matvec updates the bar and calls
    ``callback(phase, count)``."""
    bar = progress_bar(None, 0, progress, phase)
    bar.unit = "matvec"
    return StoredOperator(kernel, _Tick(phase, bar, callback)), bar


class _Tick:
    """One matvec done: the bar and ``callback(phase, count)``."""

    def __init__(self, phase: str, bar, callback: Callable[[str, int], None] | None):
        self.phase, self.bar, self.callback, self.count = phase, bar, callback, 0

    def __call__(self) -> None:
        self.count += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(self.phase, self.count)


def dense_nn(kernel) -> np.ndarray:
    """A stored ``[N, N]`` (or diagonal's ``[N, N, O]``) kernel read whole in float64 (a
    symmetric store is exactly symmetric: its writer mirrors each off-diagonal block)."""
    return np.asarray(kernel, np.float64)
