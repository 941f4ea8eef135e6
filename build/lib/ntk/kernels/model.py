"""The model a kernel is taken of: ``apply_fn`` with its non-differentiated arguments.

A user's ``apply_fn(params, x, **apply_kwargs) -> [batch, O]`` is differentiated with
respect to ``params`` only. Its keyword arguments are split once per call signature:

* array leaves (``jax.Array``, ``np.ndarray``, numpy scalars, PRNG keys) are *dynamic*: they
  are traced, so new values (BatchNorm statistics at another checkpoint, a new dropout key)
  never recompile;
* every other leaf (``train=False``, ``method="encode"``, ints, strings) is *static*: part of
  the compiled computation's identity, and must be hashable.

Inputs ``x`` may be pytrees (e.g. ``{"tokens": [N, L], "mask": [N, L]}``) whose leaves share
the leading batch axis; implementations see one example as the same pytree with a batch
axis of 1.

Everything here is host-side bookkeeping on shapes; nothing touches array values.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_array(leaf: Any) -> bool:
    """A leaf that is traced rather than static (jax/numpy arrays, numpy scalars other than
    ``np.bool_``, which is a flag like ``True``)."""
    return isinstance(leaf, jax.Array | np.ndarray | np.generic) and not isinstance(leaf, np.bool_)


class _ById:
    """Hashes an unhashable object by identity (holds a strong reference, so the id stays
    unique while this key is alive)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _ById) and other.obj is self.obj


def fn_key(fn: Any) -> Any:
    """A cache key for a callable: itself if hashable, else its identity."""
    try:
        hash(fn)
    except TypeError:
        return _ById(fn)
    return fn


def from_key(key: Any) -> Any:
    return key.obj if isinstance(key, _ById) else key


# --- caches that never keep a user's model alive --------------------------------------------


def _owner(fn: Any) -> tuple[Any, Any]:
    """``(object whose lifetime counts, function)``: a bound method lives with its instance."""
    if inspect.ismethod(fn):
        return fn.__self__, fn.__func__
    return fn, None


class _Lifetimes:
    """Per-callable caches that live as long as the callable. A callable that can be weakly
    referenced loses its entries when it is garbage-collected, so nothing cached here keeps a
    model (and the arrays it holds) alive; the few that cannot share a small LRU."""

    def __init__(self, strong_size: int = 16):
        self._weak: dict = {}
        self._strong: OrderedDict = OrderedDict()
        self._strong_size = strong_size

    def of(self, fn: Any) -> dict:
        owner, func = _owner(fn)
        key = (id(owner), func)
        hit = self._weak.get(key)
        if hit is not None and hit[0]() is owner:
            return hit[1]
        try:
            ref = weakref.ref(owner, functools.partial(self._drop, key))
        except TypeError:  # not weakly referenceable
            return self._strong_entry((fn_key(owner), func))
        store: dict = {}
        self._weak[key] = (ref, store)
        return store

    def _strong_entry(self, key) -> dict:
        store = self._strong.pop(key, None)
        self._strong[key] = store = {} if store is None else store
        while len(self._strong) > self._strong_size:
            self._strong.popitem(last=False)
        return store

    def _drop(self, key, ref) -> None:
        hit = self._weak.get(key)
        if hit is not None and hit[0] is ref:
            del self._weak[key]

    def clear(self) -> None:
        self._weak.clear()
        self._strong.clear()


LIFETIMES = _Lifetimes()


def weak_callable(fn: Any) -> Callable[[], Any]:
    """``get()`` returning ``fn`` while it lives, without keeping it alive where possible."""
    try:
        ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
    except TypeError:
        return lambda: fn
    return ref


def cached_per_callable(compute: Callable) -> Callable:
    """Caches ``compute(sig: Signature, *args)`` with the lifetime of ``sig``'s callable."""
    name = compute.__qualname__

    @functools.wraps(compute)
    def cached(sig: Signature, *args):
        store = LIFETIMES.of(from_key(sig.fn)).setdefault(name, {})
        key = (sig.static, sig.params, sig.x, sig.dynamic, args)
        if key not in store:
            store[key] = compute(sig, *args)
        return store[key]

    cached.cache_clear = LIFETIMES.clear
    return cached


@dataclass(frozen=True)
class Static:
    """The static part of ``apply_kwargs``: the pytree structure and its non-array leaves."""

    treedef: Any
    values: tuple  # non-array leaves, None where the leaf is dynamic
    dynamic: tuple[bool, ...]


def split_kwargs(apply_kwargs: dict[str, Any]) -> tuple[list, Static]:
    """``apply_kwargs -> (dynamic array leaves, Static)``; the Static part must hash."""
    leaves, treedef = jax.tree_util.tree_flatten(apply_kwargs)
    dynamic = tuple(is_array(leaf) for leaf in leaves)
    static = Static(
        treedef, tuple(None if d else v for v, d in zip(leaves, dynamic, strict=True)), dynamic
    )
    try:
        hash(static)
    except TypeError:
        bad = [
            f"{k}={type(v).__name__}"
            for k, v in apply_kwargs.items()
            if any(_unhashable(leaf) for leaf in jax.tree_util.tree_leaves(v))
        ]
        raise TypeError(
            f"apply_kwargs: {', '.join(bad)} is neither an array (traced) nor hashable "
            "(static). Pass arrays for values that change, hashable values for flags."
        ) from None
    return [leaf for leaf, d in zip(leaves, dynamic, strict=True) if d], static


def _unhashable(leaf: Any) -> bool:
    if is_array(leaf):
        return False
    try:
        hash(leaf)
    except TypeError:
        return True
    return False


NO_KWARGS = split_kwargs({})[1]


def merge_kwargs(dynamic: list, static: Static) -> dict[str, Any]:
    it = iter(dynamic)
    leaves = [next(it) if d else v for v, d in zip(static.values, static.dynamic, strict=True)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


@dataclass(frozen=True, eq=False)
class Model:
    """``model(params, x) = apply_fn(params, x, **apply_kwargs)``, kwargs held apart."""

    apply_fn: Callable[..., Any]
    static: Static = NO_KWARGS
    dynamic: tuple = ()

    def __call__(self, params: Any, x: Any) -> jax.Array:
        if not self.static.dynamic:
            return self.apply_fn(params, x)
        return self.apply_fn(params, x, **merge_kwargs(list(self.dynamic), self.static))

    def with_dynamic(self, dynamic: Any) -> Model:
        return Model(self.apply_fn, self.static, tuple(dynamic))


def as_model(apply_fn: Any) -> Model:
    return apply_fn if isinstance(apply_fn, Model) else Model(apply_fn)


# --- shapes --------------------------------------------------------------------------------


def tree_spec(tree: Any) -> tuple:
    """Hashable ``(treedef, ((shape, dtype), ...))`` of a pytree of arrays or abstract values."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), _dtype(x)) for x in leaves)


def _dtype(x: Any) -> Any:
    dtype = getattr(x, "dtype", None)
    return dtype if dtype is not None else jnp.result_type(x)


def abstract(spec: tuple, batch: int | None = None) -> Any:
    """ShapeDtypeStructs from :func:`tree_spec`; ``batch`` replaces every leading dimension."""
    treedef, leaves = spec
    return jax.tree_util.tree_unflatten(
        treedef,
        [jax.ShapeDtypeStruct(s if batch is None else (batch, *s[1:]), d) for s, d in leaves],
    )


@dataclass(frozen=True)
class Signature:
    """What a traced model depends on: the callable, static kwargs and all shapes."""

    fn: Any  # fn_key(apply_fn)
    static: Static
    params: tuple
    x: tuple  # spec of x with its batch dimension
    dynamic: tuple

    @staticmethod
    def of(model: Model, params: Any, x: Any) -> Signature:
        return Signature(
            fn_key(model.apply_fn),
            model.static,
            tree_spec(params),
            tree_spec(x),
            tree_spec(list(model.dynamic)),
        )

    def per_example(self) -> Signature:
        """The same signature with a batch of one (what per-example traces depend on)."""
        treedef, leaves = self.x
        one = tuple(((1, *s[1:]), d) for s, d in leaves)
        return Signature(self.fn, self.static, self.params, (treedef, one), self.dynamic)

    def model(self, dynamic: Any) -> Model:
        return Model(from_key(self.fn), self.static, tuple(dynamic))

    def abstract_args(self, batch: int | None = None) -> tuple[Any, Any, list]:
        """``(params, x, dynamic)`` as ShapeDtypeStructs (``x`` with ``batch`` rows)."""
        return abstract(self.params), abstract(self.x, batch), abstract(self.dynamic)


# --- batches -------------------------------------------------------------------------------


def batch_len(x: Any) -> int:
    return int(jax.tree_util.tree_leaves(x)[0].shape[0])


def take(x: Any, start: int, stop: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[start:stop], x)


def add_batch_axis(x: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[None], x)


def pad_rows(x: Any, size: int) -> Any:
    """Pads every leaf to ``size`` rows by repeating its last row (rows are independent)."""

    def pad(a):
        if a.shape[0] == size:
            return a
        return jnp.concatenate([a, jnp.repeat(a[-1:], size - a.shape[0], axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, x)
