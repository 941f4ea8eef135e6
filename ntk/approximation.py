"""``ntk.approximation_report``: is the pNTK (or another cheap kernel) good enough for *this*
model on *these* points?

Every approximation kind is compared with the full eNTK Θ on the user's points:

* **relative Frobenius error** ``‖Θ − Ã‖_F / ‖Θ‖_F``, where Ã is the approximation as an
  ``NO × NO`` matrix: ``A ⊗ I_O`` for the ``[N, N]`` kinds (pnTK, trace, single logit,
  random projection) and, for ``diagonal`` ``[N, N, O]``, the block-diagonal matrix with
  ``Ã[n, m, o, o'] = D[n, m, o]·δ_oo'`` (Θ with its cross-output entries dropped: the
  kernel of O independent outputs, each with its own N × N kernel ``D[..., o]``);
* **spectra**: λ_max, λ_min and condition numbers of Θ and of Ã (``A``'s eigenvalues each O
  times; for ``diagonal`` the union of the eigenvalues of the O kernels ``D[..., o]``);
* with labels, **kernel regression** ``K*(K + ridge·mean(diag K)·I)⁻¹ Y`` on the test points,
  ridgeless and with a ridge (relative to each kernel's own mean diagonal, as
  :func:`ntk.kernel_regression`): Θ solves one NO × NO system; an ``[N, N]`` kind one N × N
  system for all outputs; ``diagonal`` one N × N system per output;
* **cost**: warm time and XLA's compiled memory of each kind and of the eNTK, and the
  implementation ``auto`` chose;
* **model facts**: O, the parameter count, the readout layer's width (the contraction size
  of the last ``dot_general`` between a parameter and the data, found on the jaxpr by walking
  back from the output through bias adds, scalings, reshapes and slices; None when the path
  meets anything else) and the readout's share of Θ, ``tr Θ_readout / tr Θ`` over the N
  points (``Θ_readout``: the eNTK of the readout's parameter leaves alone; with tied
  embeddings that leaf's input use counts too).

Two ways to compute, same definitions:

* **in memory** (``path=None``): the kernels of ``Z = X ∪ X*`` in one call per kind, exact
  eigenvalues, direct solves (one ``eigh`` per kernel serves its spectrum and every ridge).
  If that would exceed the memory budget, a ``ValueError`` asks for ``path``.
* **stored** (``path=DIR``): every kernel is computed block by block into a chunked store
  (:func:`ntk.store_kernel`) under ``DIR/kernels/``; the NO × NO eNTK is never in memory.
  Frobenius terms accumulate over blocks (``‖Θ − Ã‖²_F = Σ_blocks``, off-diagonal blocks of
  the symmetric kernels counted twice). λ_max comes from Lanczos on the stored operator. For
  λ_min and the eNTK's regressions, ``Θ (+ ridge)`` is factored by an out-of-core Cholesky
  (:mod:`ntk.scale.cholesky`: panels on disk under ``DIR/factors/``, two in memory, ``D³/3``
  FLOPs for ``D = N·O``): λ_min is the reciprocal of the largest eigenvalue of
  ``Θ⁻¹`` (Lanczos on the factor's solves; clustered small eigenvalues of Θ are well
  separated there), and each regression is one exact solve. ``N × N`` kinds (and
  ``diagonal``'s O kernels) that fit the memory budget four times over are read whole and
  decomposed exactly as in memory; larger ones use the operator (Lanczos, conjugate
  gradients). Each finished phase is saved under ``DIR/phases/`` (atomically; the factor
  panel by panel), so a killed call repeated with the same arguments resumes where it
  stopped; ``DIR/report_meta.json`` refuses a resume with other inputs. The factors are
  deleted when the report is done.

**Rank.** Each kernel is a sum of Gram matrices ``J Jᵀ`` of Jacobians with P columns (P the
parameter count), so where ``P`` (times the number of Gram matrices) is below its
dimension, its smallest eigenvalues are 0 exactly: both modes report λ_min = 0 (cond = ∞)
with a note, and in memory those eigenvalues are cut off in the ridgeless solve. A stored
rank-deficient eNTK has no ridgeless regression (the note says so); its ridge regression is
exact. A stored eNTK that is not positive definite in float64 (a Cholesky pivot fails) is
reported the same way: λ_min = 0 with the factor's message. Every eigenvalue is that of the
kernel as computed in the model's dtype: for a float32 model, λ_min of a kernel whose
condition number nears ``1/ε₃₂ ≈ 10⁷`` and beyond carries that kernel's round-off
(recompute in float64 to tell).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var

from ntk import atomic, checks
from ntk.checks import check_choice
from ntk.implicit import extreme_eigenvalues
from ntk.kernels.api import KernelFn
from ntk.kernels.estimates import default_memory_budget
from ntk.kernels.implementations import sub_jaxprs
from ntk.kernels.kinds import KINDS, check_kind_options
from ntk.kernels.model import (
    LIFETIMES,
    Model,
    add_batch_axis,
    batch_len,
    is_array,
    pad_rows,
    split_kwargs,
    take,
    tree_spec,
    weak_callable,
)
from ntk.kernels.preparation import options_token
from ntk.metrics import psd_spectrum, relative_frobenius_error
from ntk.regression import accuracy, check_ridge, kernel_regression
from ntk.scale import cholesky
from ntk.scale.blocks import array_digest, progress_bar

__all__ = ["DEFAULT_KINDS", "ApproximationReport", "KindReport", "approximation_report"]

DEFAULT_KINDS = ("pntk", "trace", "diagonal", "single_logit", "random_projection")
_META = "report_meta.json"
_CACHE = "ntk.approximation"


# --- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindReport:
    """One approximation kind against the eNTK (see :func:`approximation_report`).

    ``regression`` maps ``"ridge=r"`` to ``{"pred_rel_diff", "accuracy", "argmax_agreement"}``
    (predictions' ``‖P − P_Θ‖_F / ‖P_Θ‖_F``, test accuracy or None without ``y_test``, share
    of test points whose argmax equals the eNTK's).
    """

    kind: str
    compared_as: str
    relative_frobenius_error: float
    lambda_max: float
    lambda_min: float
    lambda_max_rel_error: float
    lambda_min_rel_error: float
    cond: float
    warm_seconds: float
    compiled_bytes: int | None
    implementation: str
    regression: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ApproximationReport:
    """The answer of :func:`approximation_report`. ``print(report)`` shows a table,
    :meth:`to_json` serialises it, :meth:`plot` draws one figure.

    ``entk``: the eNTK's ``lambda_max``, ``lambda_min``, ``cond``, ``warm_seconds``,
    ``compiled_bytes``, ``implementation`` and ``regression`` (``"ridge=r"`` ->
    ``{"accuracy"}``). ``cost_shape``: the ``[N1, N2]`` points of the timed calls (``Z × Z``
    in memory, one block when stored). ``spectra``: ascending eigenvalues (``"entk"`` and
    each kind, ``N·O`` each) in memory, empty when stored. ``notes``: what could not be
    computed and why.
    """

    n: int
    n_test: int
    o: int
    n_params: int
    readout_width: int | None
    readout_leaves: tuple[str, ...]
    readout_share: float | None
    mode: str
    ridges: tuple[float, ...]
    cost_shape: tuple[int, int]
    entk: dict
    kinds: dict[str, KindReport]
    spectra: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    # serialisation: JSON with ``null`` for non-finite numbers (a zero λ_min's condition number)
    def to_dict(self) -> dict:
        return _finite(asdict(self))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic.write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> ApproximationReport:
        kinds = {k: KindReport(**_unfinite(v)) for k, v in d["kinds"].items()}
        rest = {k: v for k, v in d.items() if k != "kinds"}
        rest.update(
            readout_leaves=tuple(d["readout_leaves"]),
            ridges=tuple(d["ridges"]),
            cost_shape=tuple(d["cost_shape"]),
            notes=tuple(d["notes"]),
            entk=_unfinite(d["entk"]),
        )
        return cls(kinds=kinds, **rest)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> ApproximationReport:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        e = self.entk
        width = "unknown" if self.readout_width is None else str(self.readout_width)
        share = "unknown" if self.readout_share is None else f"{100 * self.readout_share:.1f}%"
        rows = [
            f"approximation report ({self.mode}): N={self.n} points, {self.n_test} test, "
            f"O={self.o}, {self.n_params:,} parameters",
            f"readout width {width} ({', '.join(self.readout_leaves) or 'not found'}); "
            f"readout share of tr Θ {share}",
            f"eNTK: auto -> {e['implementation']!r}, warm {_sec(e['warm_seconds'])}, "
            f"compiled {_bytes(e['compiled_bytes'])} on {self.cost_shape}; "
            f"λ_max {_g(e['lambda_max'])}, λ_min {_g(e['lambda_min'])}, κ {_g(e['cond'])}",
            f"  {'kind':18s} {'compared as':12s} {'rel.Frob':>8s} {'λmax err':>8s} "
            f"{'λmin err':>8s} {'κ':>9s} {'time':>8s} {'×eNTK':>7s} {'memory':>8s} "
            f"{'×eNTK':>7s}  implementation",
        ]
        for r in self.kinds.values():
            rows.append(
                f"  {r.kind:18s} {r.compared_as:12s} {_g(r.relative_frobenius_error):>8s} "
                f"{_g(r.lambda_max_rel_error):>8s} {_g(r.lambda_min_rel_error):>8s} "
                f"{_g(r.cond):>9s} {_sec(r.warm_seconds):>8s} "
                f"{_g(_ratio(r.warm_seconds, e['warm_seconds'])):>7s} "
                f"{_bytes(r.compiled_bytes):>8s} "
                f"{_g(_ratio(r.compiled_bytes, e['compiled_bytes'])):>7s}  {r.implementation}"
            )
        for ridge in self.ridges:
            key = _ridge_key(ridge)
            acc = e["regression"].get(key, {}).get("accuracy")
            rows.append(f"kernel regression, ridge {ridge:g}: eNTK accuracy {_g(acc)}")
            for r in self.kinds.values():
                reg = r.regression.get(key)
                if reg is not None:
                    rows.append(
                        f"  {r.kind:18s} pred rel diff {_g(reg['pred_rel_diff']):>8s}  "
                        f"accuracy {_g(reg['accuracy']):>6s}  argmax agrees "
                        f"{_g(reg['argmax_agreement']):>6s}"
                    )
        rows += [f"note: {n}" for n in self.notes]
        return "\n".join(rows)

    def plot(self):
        """One matplotlib figure: the errors of each kind, error against speed-up, and (in
        memory) the spectra. Returns the ``Figure``."""
        import matplotlib.pyplot as plt

        names = list(self.kinds)
        panels = 3 if self.spectra else 2
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
        ax = axes[0]
        metrics = (
            ("relative_frobenius_error", "rel. Frobenius"),
            ("lambda_max_rel_error", "λ_max rel. err."),
            ("lambda_min_rel_error", "λ_min rel. err."),
        )
        pos = np.arange(len(names))
        for k, (attr, label) in enumerate(metrics):
            vals = [_nan(getattr(self.kinds[n], attr)) for n in names]
            ax.bar(pos + (k - 1) * 0.27, vals, 0.27, label=label)
        ax.set_xticks(pos, names, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title("error against the eNTK")
        ax.legend(fontsize=8)
        ax = axes[1]
        for n in names:
            r = self.kinds[n]
            speed = _ratio(self.entk["warm_seconds"], r.warm_seconds)
            ax.scatter(_nan(speed), _nan(r.relative_frobenius_error))
            ax.annotate(n, (_nan(speed), _nan(r.relative_frobenius_error)), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eNTK time / kind time")
        ax.set_ylabel("relative Frobenius error")
        ax.set_title(f"cost on {self.cost_shape[0]}×{self.cost_shape[1]} points")
        if self.spectra:
            ax = axes[2]
            for name, eig in self.spectra.items():
                vals = np.asarray(eig, np.float64)[::-1]
                ax.semilogy(np.arange(1, len(vals) + 1), np.maximum(vals, 1e-300), label=name)
            ax.set_xlabel("index")
            ax.set_ylabel("eigenvalue")
            ax.set_title("spectra (NO × NO)")
            ax.legend(fontsize=8)
        width = "unknown" if self.readout_width is None else self.readout_width
        fig.suptitle(f"N={self.n}, O={self.o}, readout width {width}")
        fig.tight_layout()
        return fig


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _unfinite(d: dict) -> dict:
    """``null`` back to ``inf`` for the numbers whose only non-finite value is ``inf``."""
    infinite = ("cond",)
    return {k: (math.inf if k in infinite and v is None else v) for k, v in d.items()}


def _g(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _sec(s) -> str:
    return "—" if s is None else (f"{1e3 * s:.3g} ms" if s < 1 else f"{s:.3g} s")


def _bytes(x) -> str:
    if x is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}B"


def _ridge_key(ridge: float) -> str:
    return f"ridge={ridge:g}"


# --- validation --------------------------------------------------------------------------------


def _check_kinds(kinds: Any, kind_options: Any) -> tuple[tuple[str, ...], dict]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds: expected at least one approximation kind, got none")
    valid = {k: None for k in KINDS if k != "entk"}
    for k in kinds:
        if k == "entk":
            raise ValueError("kinds: 'entk' is the reference every kind is compared with")
        check_choice("kinds", k, valid)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: listed twice: {kinds}")
    options = dict(kind_options or {})
    unknown = sorted(set(options) - set(kinds))
    if unknown:
        raise ValueError(f"kind_options: {unknown} are not among kinds={list(kinds)}")
    out = {}
    for k in kinds:
        opts = dict(options.get(k, {}))
        check_kind_options(k, opts)
        if k == "random_projection":
            opts.setdefault("key", jax.random.key(0))
        out[k] = opts
    return kinds, out


def _check_test_inputs(x: Any, x_test: Any) -> int:
    m = checks._check_one_input("x_test", x_test)
    l1, t1 = jax.tree_util.tree_flatten(x)
    l2, t2 = jax.tree_util.tree_flatten(x_test)
    same = t1 == t2 and all(
        tuple(a.shape[1:]) == tuple(b.shape[1:]) and a.dtype == b.dtype
        for a, b in zip(l1, l2, strict=True)
    )
    if not same:
        raise ValueError(
            f"x_test: per-example shapes and dtypes must match x: x_test "
            f"{checks.describe(x_test)} vs x {checks.describe(x)} (only the batch "
            "dimension may differ)"
        )
    return m


def _targets(name: str, y: Any, n: int, o: int) -> np.ndarray:
    """``[n]`` int labels -> one-hot ``[n, O]``; ``[n, O]`` float targets as they are."""
    a = np.asarray(y)
    if a.ndim == 1 and np.issubdtype(a.dtype, np.integer) and a.shape[0] == n:
        if a.size and (a.min() < 0 or a.max() >= o):
            raise ValueError(f"{name}: labels must be in [0, O={o}), got [{a.min()}, {a.max()}]")
        return np.eye(o)[a]
    if a.ndim == 2 and a.shape == (n, o) and np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: contains NaN or Inf (shape {a.shape})")
        return a
    raise ValueError(
        f"{name}: expected {n} labels ([{n}] ints in [0, {o})) or targets [{n}, {o}], "
        f"got shape {a.shape} {a.dtype}"
    )


def _memory_need(n: int, m: int, o: int, itemsize: int) -> float:
    """Bytes of the in-memory report: the kernel on Z = X ∪ X* in the model's dtype, its
    float64 host copy, and the eigen-decompositions of the NO × NO matrix (a copy, its
    eigenvectors and the block-diagonal embedding of the ``diagonal`` kind)."""
    return (n + m) ** 2 * o * o * (itemsize + 8) + 3 * (n * o) ** 2 * 8


# --- the cached kernel functions ------------------------------------------------------------


def _kernel_fn(apply_fn, kind: str, options: dict, memory_budget) -> KernelFn:
    """One :class:`KernelFn` per (callable, kind, option shapes, budget), held as long as
    ``apply_fn`` lives: a second report on the same model compiles nothing."""
    store = LIFETIMES.of(apply_fn).setdefault(_CACHE, {})
    key = ("kernel", kind, options_token(options), memory_budget)
    if key not in store:
        store[key] = KernelFn(apply_fn, kind, "auto", None, options, memory_budget, weak=True)
    return store[key]


def _compiled_bytes(fn: KernelFn, params, x, apply_kwargs) -> int | None:
    """XLA's temporaries + output of the unblocked computation; once per shapes."""
    store = LIFETIMES.of(fn.apply_fn).setdefault(_CACHE, {})
    key = ("bytes", id(fn), tree_spec((params, x, apply_kwargs)))
    if key not in store:
        try:
            mem = fn.lower(params, x, **apply_kwargs).compile().memory_analysis()
            store[key] = (
                None if mem is None else int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
            )
        except Exception:  # noqa: BLE001 - memory analysis is optional per backend
            store[key] = None
    return store[key]


def _measured(fn: KernelFn, params, x, apply_kwargs, options, repeats: int):
    """``(kernel as float64 numpy, warm seconds (median), compiled bytes, implementation)``
    of ``fn`` on ``x`` (x2 = x); the first call compiles and is not timed."""
    prep, _, _ = fn.prepared(params, x, None, apply_kwargs, options)
    out = jax.block_until_ready(fn.call(params, x, None, apply_kwargs, options))
    warm = []
    for _ in range(max(int(repeats), 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn.call(params, x, None, apply_kwargs, options))
        warm.append(time.perf_counter() - t0)
    nbytes = _compiled_bytes(fn, params, x, apply_kwargs)
    return out, float(np.median(warm)), nbytes, prep.implementation


# --- the readout layer, from the jaxpr ----------------------------------------------------------

# one data operand passes through these unchanged in kind (a bias add, a scaling, a reshape)
_PASS = {
    "add",
    "add_any",
    "sub",
    "mul",
    "div",
    "neg",
    "reshape",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "convert_element_type",
    "copy",
    "copy_p",
    "transpose",
    "slice",
    "reduce_precision",
}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "remat", "checkpoint"}


def _forward_deps(jaxpr, in_deps: list) -> dict:
    """Var -> frozenset of what it depends on: parameter leaf indices and ``"x"``."""
    env = {v: d for v, d in zip(jaxpr.invars, in_deps, strict=True)}
    for eqn in jaxpr.eqns:
        d = frozenset().union(*(env.get(v, frozenset()) for v in eqn.invars if isinstance(v, Var)))
        for out in eqn.outvars:
            env[out] = d
    return env


def _walk_back(jaxpr, var, in_deps: list) -> tuple[int, frozenset] | None:
    """From output ``var`` back to the readout ``dot_general``: ``(width, its parameter
    leaves and those of bias-like terms on the way)``, or None."""
    env = _forward_deps(jaxpr, in_deps)
    producer = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    extra: frozenset = frozenset()
    while True:
        eqn = producer.get(var)
        if eqn is None:
            return None
        name = eqn.primitive.name
        deps = [env.get(v, frozenset()) if isinstance(v, Var) else frozenset() for v in eqn.invars]
        if name == "dot_general":
            contract, _ = eqn.params["dimension_numbers"]  # ((lhs, rhs) contracting, batch)
            for w, h in ((1, 0), (0, 1)):
                if deps[w] and "x" not in deps[w] and "x" in deps[h]:
                    shape = eqn.invars[w].aval.shape
                    return math.prod(shape[d] for d in contract[w]), deps[w] | extra
            return None
        if name in _CALLS:
            sub = list(sub_jaxprs(eqn))
            if len(sub) != 1 or len(sub[0].invars) != len(eqn.invars):
                return None
            inner = _walk_back(sub[0], sub[0].outvars[eqn.outvars.index(var)], deps)
            return None if inner is None else (inner[0], inner[1] | extra)
        if name not in _PASS:
            return None
        data = [k for k, d in enumerate(deps) if "x" in d]
        if len(data) != 1:
            return None
        if name in ("mul", "div") and any(deps[k] for k in range(len(deps)) if k != data[0]):
            return None  # a learned scale is not a bias
        extra = extra.union(*(d for k, d in enumerate(deps) if k != data[0]))
        var = eqn.invars[data[0]]


def _readout(model: Model, params, x) -> tuple[int | None, tuple[int, ...]]:
    """``(width, parameter leaf indices)`` of the readout layer, or ``(None, ())``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    x1 = take(x, 0, 1)
    dyn = list(model.dynamic)

    def f(ls, a, d):
        return model.with_dynamic(d)(jax.tree_util.tree_unflatten(treedef, ls), a)

    try:
        closed = jax.make_jaxpr(f)(leaves, x1, dyn)
    except Exception:  # noqa: BLE001 - a model we cannot trace abstractly has no known readout
        return None, ()
    n_x = len(jax.tree_util.tree_leaves(x1))
    n_d = len(closed.jaxpr.invars) - len(leaves) - n_x
    in_deps = (
        [frozenset([k]) for k in range(len(leaves))]
        + [frozenset(["x"])] * n_x
        + [frozenset()] * n_d
    )
    found = _walk_back(closed.jaxpr, closed.jaxpr.outvars[0], in_deps)
    if found is None:
        return None, ()
    return int(found[0]), tuple(sorted(k for k in found[1] if k != "x"))


def _readout_trace(model: Model, params, x, idx: tuple[int, ...], chunk: int = 32) -> float:
    """``Σ_n Σ_o ‖∂f_o(x_n)/∂θ_R‖²`` over the readout leaves ``idx``: ``tr Θ_readout``
    (``chunk`` examples at a time, the last chunk padded: one compile)."""
    store = LIFETIMES.of(model.apply_fn).setdefault(_CACHE, {})
    key = ("readout", model.static, idx)
    if key not in store:
        get, static = weak_callable(model.apply_fn), model.static

        def sq_norms_C(params, x_C, dynamic):
            m = Model(get(), static, tuple(dynamic))
            leaves, treedef = jax.tree_util.tree_flatten(params)

            def one(x_one):
                def g(r):
                    ls = list(leaves)
                    for k, leaf in zip(idx, r, strict=True):
                        ls[k] = leaf
                    return m(jax.tree_util.tree_unflatten(treedef, ls), x_one)[0]

                jac = jax.jacrev(g)([leaves[k] for k in idx])
                return sum(jnp.sum(j * j) for j in jac)

            return jax.vmap(lambda a: one(add_batch_axis(a)))(x_C)

        store[key] = jax.jit(sq_norms_C)
    n = batch_len(x)
    c = min(chunk, n)
    total = 0.0
    for s in range(0, n, c):
        part = pad_rows(take(x, s, min(s + c, n)), c)
        sq_C = store[key](params, part, list(model.dynamic))
        total += float(np.sum(np.asarray(sq_C, np.float64)[: min(c, n - s)]))
    return total


# --- the report ----------------------------------------------------------------------------------


def approximation_report(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    x: Any,
    y: Any = None,
    *,
    x_test: Any = None,
    y_test: Any = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    kind_options: dict[str, dict] | None = None,
    ridge: float = 1e-2,
    path: str | os.PathLike | None = None,
    block_size: int = 256,
    memory_budget: float | None = None,
    timing_repeats: int = 3,
    lanczos_tol: float = 1e-8,
    cg_tol: float = 1e-8,
    cg_maxiter: int = 1000,
    progress: bool = True,
    callback: Callable[[str, int], None] | None = None,
    **apply_kwargs: Any,
) -> ApproximationReport:
    """How well each cheap kernel approximates the eNTK of ``apply_fn`` on these points.

    Definitions are in the module docstring (:mod:`ntk.approximation`); every number is
    computed in float64 on the host from kernels in the model's dtype.

    Args:
      apply_fn: ``apply_fn(params, x, **apply_kwargs) -> [batch, O]`` (plain JAX, or from
        :func:`ntk.from_linen`, :func:`ntk.from_nnx`, :func:`ntk.from_equinox`, Haiku's
        ``apply``); row n depends on example n only.
      params: pytree of floating arrays; the kernels are taken with respect to them.
      x: ``[N, ...]`` points (an array or a pytree of arrays sharing the batch axis).
      y: ``[N]`` int labels in ``[0, O)`` (one-hot targets) or ``[N, O]`` targets; with
        ``x_test``, kernel regression is compared.
      x_test: ``[M, ...]`` test points, per-example shapes and dtypes as ``x``.
      y_test: ``[M]`` int labels or ``[M, O]`` targets, for test accuracy.
      kinds: approximation kinds from :data:`ntk.KINDS` (all but ``entk``).
      kind_options: per kind, its options, e.g. ``{"single_logit": {"logit": 3},
        "random_projection": {"key": key, "n_projections": 4}}``; ``random_projection``'s
        key defaults to ``jax.random.key(0)``.
      ridge: the relative ridge (≥ 0) compared besides ridgeless regression.
      path: a directory: compute block by block into chunked stores there (resumable; see
        the module docstring). None: in memory, if it fits ``memory_budget``.
      block_size: rows (and columns) per block when stored; the timed calls are one block.
      memory_budget: bytes for ``auto``'s choice, for the in-memory check and, stored, for
        what is read whole (``N × N`` kinds within a quarter of it; the Cholesky panels are
        kept in memory for the solves within an eighth) (default
        :func:`ntk.kernels.api.default_memory_budget`).
      timing_repeats: warm calls timed per kernel (their median is reported).
      lanczos_tol: relative accuracy of the eigenvalues (stored only; ARPACK's ``tol``): of
        λ_max by Lanczos on the kernel, of λ_min by Lanczos on its inverse (the eNTK and
        ``N × N`` kinds too large to read whole). ``N × N`` kinds that fit ``memory_budget``
        four times over are decomposed exactly (LAPACK).
      cg_tol, cg_maxiter: conjugate gradients' relative residual and iteration limit
        (stored ``N × N`` kinds too large to read whole; the eNTK is solved by its factor);
        an unconverged solve is reported as NaN with a note.
      progress: tqdm bars over the long phases (stored only).
      callback: ``callback(phase, step)`` after each unit of stored work (a block, a
        matvec); an exception raised there stops the call, and a repeat resumes.
      **apply_kwargs: model state (BatchNorm statistics, an NNX ``state``), as for a
        :func:`ntk.kernel_fn` call; never differentiated.

    Returns:
      An :class:`ApproximationReport`.

    Example:
      >>> import jax, jax.numpy as jnp, ntk
      >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"] / 4.0
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> p = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> r = ntk.approximation_report(f, p, jax.random.normal(k3, (8, 3)), kinds=["pntk"])
      >>> r.readout_width, r.o, round(r.kinds["pntk"].relative_frobenius_error, 2) < 1
      (16, 2, True)
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    kinds, options = _check_kinds(kinds, kind_options)
    check_ridge(ridge)
    _check_positive_int("block_size", block_size)
    _check_positive_int("timing_repeats", timing_repeats)
    n = checks._check_one_input("x", x)
    m = 0 if x_test is None else _check_test_inputs(x, x_test)
    if x_test is not None and y is None:
        raise ValueError("x_test: test points are used for kernel regression only; pass y too")
    if y_test is not None and x_test is None:
        raise ValueError("y_test: given without x_test")
    if y is not None and x_test is None:
        raise ValueError(
            f"y: kernel regression needs test points; pass x_test [M, ...] with the {n} labels"
        )
    fn_e = _kernel_fn(apply_fn, "entk", {}, memory_budget)
    prep, dynamic, static = fn_e.prepared(params, x, None, apply_kwargs)
    o = prep.o
    y_tr = None if y is None else _targets("y", y, n, o)
    y_te = None if y_test is None else _targets("y_test", y_test, m, o)
    itemsize = np.dtype(prep.dtype).itemsize
    if path is None:
        need = _memory_need(n, m, o, itemsize)
        budget = default_memory_budget() if memory_budget is None else memory_budget
        if need > budget:
            raise ValueError(
                f"path: the in-memory report of N={n} points ({m} test) with O={o} needs about "
                f"{_bytes(need)} (the eNTK [{n + m}, {n + m}, {o}, {o}] and its {n * o}×{n * o} "
                f"float64 eigen-decomposition), over the memory budget of {_bytes(budget)}; "
                "pass path=DIR to compute it block by block on disk (or raise memory_budget)"
            )
    else:
        path = Path(path)
    model = Model(apply_fn, static, tuple(dynamic))
    ridges = (0.0,) if ridge == 0 else (0.0, float(ridge))
    ctx = _Context(
        apply_fn,
        model,
        params,
        x,
        x_test,
        n,
        m,
        o,
        kinds,
        options,
        ridges,
        y_tr,
        sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params)),
        memory_budget,
        int(timing_repeats),
        apply_kwargs,
    )
    if path is None:
        raw = _in_memory(ctx)
    else:
        settings = dict(
            block_size=int(block_size),
            lanczos_tol=float(lanczos_tol),
            cg_tol=float(cg_tol),
            cg_maxiter=int(cg_maxiter),
        )
        raw = _stored(ctx, path, settings, y_te, progress, callback)
    report = _assemble(ctx, raw, y_te)
    if path is not None:
        report.to_json(path / "report.json")
    return report


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


@dataclass(frozen=True)
class _Context:
    apply_fn: Any
    model: Model
    params: Any
    x: Any
    x_test: Any
    n: int
    m: int
    o: int
    kinds: tuple[str, ...]
    options: dict
    ridges: tuple[float, ...]
    y: np.ndarray | None
    n_params: int
    memory_budget: float | None
    repeats: int
    apply_kwargs: dict


def _embed(a: np.ndarray, o: int) -> np.ndarray:
    """An approximation's blocks as ``[.., .., O, O]``: ``A ⊗ I_O`` or ``diag_o D[.., o]``."""
    eye = np.eye(o)
    return a[:, :, None, None] * eye if a.ndim == 2 else a[:, :, :, None] * eye


def _psd_extremes(name: str, lam_max: float, lam_min: float, dim: int, notes: list):
    """λ_min of a PSD kernel: round-off negatives down to ``-dim·1e-6·λ_max`` read as 0 (as
    :func:`ntk.compare_spectra`); below that, a note."""
    if lam_min < 0:
        if -lam_min <= dim * 1e-6 * abs(lam_max):
            lam_min = 0.0
        else:
            notes.append(f"{name}: λ_min {lam_min:.3e} < 0 beyond round-off; not PSD")
    return lam_max, lam_min


def _regressions(ctx: _Context, solve: Callable[[str, float], np.ndarray | None]) -> dict:
    """``{(name, ridge): predictions [M, O] or None}`` for the eNTK and every kind."""
    if ctx.y is None:
        return {}
    return {(name, r): solve(name, r) for name in ("entk", *ctx.kinds) for r in ctx.ridges}


# --- in memory --------------------------------------------------------------------------------


def _rank_zeros(name: str, n: int, o: int, n_params: int, options: dict) -> int:
    """How many eigenvalues of a kernel on ``n`` points are 0 by rank alone. Each kernel is a
    sum of ``r`` Gram matrices ``J Jᵀ`` of Jacobians with ``n_params`` columns, so its rank is
    at most ``r·n_params``: ``r = 1`` for the eNTK (``NO × NO``), the pNTK and a single logit,
    ``O`` for the trace, ``n_projections`` for a random projection; ``diagonal``'s O kernels
    ``D[..., o]`` are one Gram matrix each."""
    if name == "entk":
        return max(0, n * o - n_params)
    if name == "diagonal":
        return o * max(0, n - n_params)
    r = {"trace": o, "random_projection": options.get("n_projections", 1)}.get(name, 1)
    return max(0, n - r * n_params)


def _rank_note(name: str, zeros: int, dim: int, n_params: int) -> str:
    return (
        f"{name}: rank ≤ {dim - zeros} (from the {n_params} parameters) < its dimension {dim}: "
        f"its {zeros} smallest eigenvalues are 0 exactly (λ_min = 0, cond = ∞)"
    )


def _sym_eig(name: str, m: np.ndarray, vectors: bool, zeros: int = 0):
    """``(eigenvalues, solver)`` of a symmetric PSD kernel matrix ``m``: ascending
    eigenvalues as :func:`ntk.metrics.psd_spectrum` gives them (round-off negatives set to 0; a
    matrix that is not PSD beyond round-off, or not symmetric, raises), the ``zeros``
    smallest set to 0 (they are 0 by rank; see :func:`_rank_zeros`) and, with ``vectors``,
    ``solver(k_st, y, ridge) -> (k_st (M + ridge·mean(diag M)·I)⁻¹ y, singular)`` from the
    same decomposition: a ridge shifts the eigenvalues only, so one ``eigh`` serves the
    spectrum and every ridge (the solve of :func:`ntk.kernel_regression`: the same
    symmetrisation, relative ridge and minimum-norm least-squares cutoff; the zero
    eigenvalues are cut off too)."""
    if not vectors:
        eig = psd_spectrum(name, m, None)[0]
        eig[:zeros] = 0.0
        return eig, None
    asym = np.linalg.norm(m - m.T) / max(np.linalg.norm(m), np.finfo(np.float64).tiny)
    if asym > 1e-5:
        raise ValueError(f"{name}: not symmetric (relative asymmetry {asym:.2e})")
    a = 0.5 * (m + m.T)
    eig, vec = np.linalg.eigh(a)
    tol = m.shape[0] * 1e-6 * max(abs(eig[-1]), abs(eig[0]))
    if eig[0] < -tol:
        raise ValueError(f"{name}: eigenvalue {eig[0]:.3e} is below -{tol:.1e}; not PSD")
    eig[:zeros] = 0.0
    mean_diag = float(np.mean(np.diag(a)))

    def solver(k_st: np.ndarray, y: np.ndarray, ridge: float):
        e = eig + ridge * mean_diag
        lam_max = float(np.max(np.abs(e)))
        cutoff = len(e) * np.finfo(np.float64).eps * lam_max
        keep = e > cutoff
        inv = np.where(keep, 1.0 / np.where(keep, e, 1.0), 0.0)
        return k_st @ (vec @ (inv[:, None] * (vec.T @ y))), lam_max == 0.0 or e[0] <= cutoff

    return np.maximum(eig, 0.0), solver


def _nn_eig(name: str, k_tt: np.ndarray, o: int, vectors: bool, zeros: int):
    """``(eigenvalues ascending, solver or [solver per output])`` of an approximation kind's
    training kernel: ``[N, N]`` as one matrix, ``diagonal`` ``[N, N, O]`` as O of them."""
    if k_tt.ndim == 2:
        return _sym_eig(name, k_tt, vectors, zeros)
    parts = [_sym_eig(f"{name}[..., {q}]", k_tt[:, :, q], vectors, zeros // o) for q in range(o)]
    return np.sort(np.concatenate([p[0] for p in parts])), [p[1] for p in parts]


def _nn_prediction(solver, d_NO: np.ndarray | None, k_st: np.ndarray, y: np.ndarray, r: float):
    """``(predictions [M, O], singular)`` of an approximation kind from :func:`_nn_eig`'s
    solver(s): one N × N system for all outputs, or (``diagonal``, whose training kernel's
    diagonal is ``d_NO`` ``[N, O]``) one per output with the ridge relative to the NO × NO
    diagonal."""
    if d_NO is None:
        return solver(k_st, y, r)
    o = d_NO.shape[1]
    pred, singular = np.empty((k_st.shape[0], o)), False
    for q in range(o):
        scale = np.mean(d_NO) / np.mean(d_NO[:, q]) if np.mean(d_NO[:, q]) > 0 else 1.0
        p_q, s_q = solver[q](k_st[:, :, q], y[:, q : q + 1], r * scale)
        pred[:, q], singular = p_q[:, 0], singular or s_q
    return pred, singular


def _diag_NO(k_tt: np.ndarray) -> np.ndarray | None:
    """The diagonal ``[N, O]`` of diagonal's ``[N, N, O]`` training kernel; None for ``[N, N]``."""
    return np.einsum("nnq->nq", k_tt) if k_tt.ndim == 3 else None


def _singular_note(name: str, r: float) -> str:
    return (
        f"{name}, ridge {r:g}: singular to working precision; minimum-norm least-squares solution"
    )


def _in_memory(ctx: _Context) -> dict:
    n, m, o = ctx.n, ctx.m, ctx.o
    z = ctx.x
    if m:
        z = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ctx.x, ctx.x_test)
    vectors = ctx.y is not None  # eigenvectors only for the regressions
    kernels, solvers = {}, {}
    raw = {"kinds": {}, "spectra": {}, "notes": [], "cost_shape": (n + m,) * 2}
    for name in ("entk", *ctx.kinds):
        opts = ctx.options.get(name, {})
        fn = _kernel_fn(ctx.apply_fn, name, opts, ctx.memory_budget)
        k, warm, nbytes, impl = _measured(fn, ctx.params, z, ctx.apply_kwargs, opts, ctx.repeats)
        k = np.asarray(k, np.float64)
        kernels[name] = (k[:n, :n], k[n:, :n])
        cost = {"warm_seconds": warm, "compiled_bytes": nbytes, "implementation": impl}
        k_tt = kernels[name][0]
        zeros = _rank_zeros(name, n, o, ctx.n_params, opts)
        if zeros:
            dim = n * o if name in ("entk", "diagonal") else n
            raw["notes"].append(_rank_note(name, zeros, dim, ctx.n_params))
        if name == "entk":
            flat = k_tt.transpose(0, 2, 1, 3).reshape(n * o, n * o)
            eig, solvers[name] = _sym_eig("entk", flat, vectors, zeros)
            raw["entk"] = {**cost, "trace": float(np.einsum("nnoo->", k_tt))}
        else:
            eig, solvers[name] = _nn_eig(name, k_tt, o, vectors, zeros)
            if k_tt.ndim == 2:
                eig = np.repeat(eig, o)
            frob = relative_frobenius_error(kernels["entk"][0], k_tt)
            raw["kinds"][name] = {**cost, "relative_frobenius_error": frob, "ndim": k_tt.ndim}
        target = raw["entk"] if name == "entk" else raw["kinds"][name]
        target.update(lambda_max=float(eig[-1]), lambda_min=float(eig[0]))
        raw["spectra"][name] = eig.tolist()

    def solve(name, r):
        k_tt, k_st = kernels[name]
        if name == "entk":
            k_st = k_st.transpose(0, 2, 1, 3).reshape(m * o, n * o)
            pred, singular = solvers[name](k_st, ctx.y.reshape(-1, 1), r)
            pred = pred.reshape(m, o)
        else:
            pred, singular = _nn_prediction(solvers[name], _diag_NO(k_tt), k_st, ctx.y, r)
        if singular:
            raw["notes"].append(_singular_note(name, r))
        return pred

    raw["preds"] = _regressions(ctx, solve)
    return raw


# --- stored: block by block, resumable -----------------------------------------------------------


class _Operator:
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


def _digest(tree) -> str | None:
    return None if tree is None else array_digest(tree)


def _check_meta(root: Path, meta: dict) -> None:
    """``root/report_meta.json``: written if new; a resume with other inputs is refused."""
    root.mkdir(parents=True, exist_ok=True)
    file = root / _META
    if not file.exists():
        if any(root.iterdir()):
            raise ValueError(
                f"path: {str(root)!r} is not empty and holds no {_META}; refusing to write "
                "into it. Use a new or empty directory."
            )
        atomic.write_json(file, meta, sort_keys=True)
        return
    stored = json.loads(file.read_text())
    diff = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
    if diff:
        raise ValueError(
            f"path: {str(root)!r} holds a report of other inputs or settings (differing: "
            f"{diff}); refusing to resume. Use another path or delete this one."
        )


def _phase(root: Path, name: str, compute: Callable[[], Any]) -> Any:
    """A finished phase's result from ``root/phases/NAME.json``, else computed and saved."""
    file = root / "phases" / f"{name}.json"
    if file.exists():
        return json.loads(file.read_text())
    out = compute()
    file.parent.mkdir(exist_ok=True)
    atomic.write_json(file, out)
    return out


def _stored(ctx: _Context, root: Path, settings: dict, y_te, progress: bool, callback) -> dict:
    from ntk.scale.store_read import open_kernel, read_meta
    from ntk.scale.store_write import store_kernel

    dynamic, static = split_kwargs(ctx.apply_kwargs)
    meta = {
        "format": "ntk.approximation_report/1",
        "params": _digest(ctx.params),
        "x": _digest(ctx.x),
        "x_test": _digest(ctx.x_test),
        "y": _digest(ctx.y),
        "y_test": _digest(y_te),
        "state": [_digest(dynamic), repr(static.values)],
        "kinds": list(ctx.kinds),
        "kind_options": {
            k: {o: (_digest(v) if is_array(v) else v) for o, v in sorted(opts.items())}
            for k, opts in ctx.options.items()
        },
        "ridges": list(ctx.ridges),
        **settings,
    }
    _check_meta(root, meta)
    bs = settings["block_size"]
    fn_s, xi, xi_test = _store_model(ctx.apply_fn, ctx.x, ctx.x_test, ctx.apply_kwargs)

    def store_callback(phase: str):
        count = [0]

        def cb(event, i, j):
            if event == "done" and callback is not None:
                count[0] += 1
                callback(phase, count[0])

        return cb

    names = ("entk", *ctx.kinds)
    train, test = {}, {}
    for name in names:
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
                block_size=bs,
                progress=progress,
                callback=store_callback(f"kernel {name}{part}"),
                **opts,
            )
            (train if part == "" else test)[name] = open_kernel(where)

    b = min(bs, ctx.n)
    x_b = take(ctx.x, 0, b)

    def cost(name):
        opts = ctx.options.get(name, {})
        fn = _kernel_fn(ctx.apply_fn, name, opts, ctx.memory_budget)
        _, warm, nbytes, _ = _measured(fn, ctx.params, x_b, ctx.apply_kwargs, opts, ctx.repeats)
        impl = read_meta(train[name].path)["info"]["resolved_implementation"]
        return {"warm_seconds": warm, "compiled_bytes": nbytes, "implementation": impl}

    raw = {"kinds": {}, "spectra": {}, "notes": [], "cost_shape": (b, b)}
    costs = {name: _phase(root, f"cost_{name}", lambda name=name: cost(name)) for name in names}
    frob = _phase(root, "frobenius", lambda: _frobenius(train, ctx, progress, callback))
    raw["entk"] = {**costs["entk"], "trace": frob["trace"]}
    for name in ctx.kinds:
        rel = math.sqrt(frob["diff2"][name] / frob["norm2"])
        raw["kinds"][name] = {
            **costs[name],
            "relative_frobenius_error": rel,
            "ndim": train[name].ndim,
        }

    def operator(kernel, phase):
        bar = progress_bar(None, 0, progress, phase)
        bar.unit = "matvec"
        count = [0]

        def tick():
            count[0] += 1
            bar.update(1)
            if callback is not None:
                callback(phase, count[0])

        return _Operator(kernel, tick), bar

    budget = default_memory_budget() if ctx.memory_budget is None else ctx.memory_budget
    zeros = {
        n_: _rank_zeros(n_, ctx.n, ctx.o, ctx.n_params, ctx.options.get(n_, {})) for n_ in names
    }
    for name in names:
        if zeros[name]:
            dim = ctx.n * ctx.o if train[name].ndim != 2 else ctx.n
            raw["notes"].append(_rank_note(name, zeros[name], dim, ctx.n_params))
    dense: dict[str, tuple] = {}
    factors: dict[tuple[str, float], Any] = {}

    def nn_dense(name):  # an N × N kind (or diagonal's O of them) read whole: LAPACK, exact
        if name not in dense:
            k_tt = _dense_nn(train[name])
            eig, solver = _nn_eig(name, k_tt, ctx.o, ctx.y is not None, zeros[name])
            dense[name] = (_diag_NO(k_tt), eig, solver)
        return dense[name]

    def factored(name, r):  # (Cholesky of K + r·mean(diag K)·I on disk, None) or (None, why)
        if (name, r) not in factors:
            kernel = train[name]
            mean_diag = frob["trace"] / (ctx.n * ctx.o) if name == "entk" else None
            if mean_diag is None:
                mean_diag = float(np.mean(kernel.diagonal()))
            dim = ctx.n * ctx.o if kernel.ndim == 4 else ctx.n
            try:
                factors[name, r] = (
                    cholesky.factor(
                        kernel,
                        root / "factors" / f"{name}_{_ridge_key(r)}",
                        shift=r * mean_diag,
                        cache=8 * 4 * dim**2 <= budget,  # the panels, 4·D² bytes, within budget/8
                        progress=progress,
                        callback=callback,
                        desc=f"cholesky {name} ridge {r:g}",
                    ),
                    None,
                )
            except cholesky.NotPositiveDefinite as e:
                factors[name, r] = None, f"{name}, ridge {r:g}: {e}"
        return factors[name, r]

    def read_whole(kernel) -> bool:  # N × N (or diagonal's O of them) within budget/4
        return kernel.ndim != 4 and 4 * 8 * math.prod(kernel.shape) <= budget

    def spectrum(name):
        kernel = train[name]
        if read_whole(kernel):
            w = nn_dense(name)[1]
            return {"lambda_max": float(w[-1]), "lambda_min": float(w[0]), "note": None}
        tol, note = settings["lanczos_tol"], None
        op, bar = operator(kernel, f"eigenvalues {name}")
        try:
            ends = "both" if kernel.ndim == 3 and not zeros[name] else "largest"
            out = extreme_eigenvalues(op, k=1, tol=tol, ends=ends)
            lam_max, lam_min = out["lambda_max"], out["lambda_min"]  # diagonal: Lanczos both
            if zeros[name]:
                lam_min = 0.0  # by rank; noted above
            elif kernel.ndim != 3:  # the eNTK or an N × N kind: by its factor
                f, why = factored(name, 0.0)
                if f is None:
                    lam_min, note = 0.0, f"{why}; λ_min reported as 0"
                else:
                    low = cholesky.smallest_eigenvalues(f, tol=tol, tick=op.tick)
                    lam_min = float(low["smallest"][0])
        except RuntimeError as e:
            return {"lambda_max": math.nan, "lambda_min": math.nan, "note": f"{name}: {e}"}
        finally:
            bar.close()
        return {"lambda_max": lam_max, "lambda_min": lam_min, "note": note}

    def predict(name, r):
        if name == "entk":  # by the factor of Θ + r·mean(diag Θ)·I: exact, no iteration count
            if r == 0 and zeros[name]:
                return None, (
                    "entk, ridge 0: Θ is rank-deficient (see above); the stored report has no "
                    "minimum-norm least-squares solve, so only the ridge is compared"
                )
            f, why = factored(name, r)
            if f is None:
                return None, why
            alpha = f.solve(ctx.y.reshape(-1)).reshape(ctx.n, ctx.o)
            op_st, bar = operator(test[name], f"predict {name} ridge {r:g}")
            with bar:
                return op_st.matvec(alpha), None
        if read_whole(train[name]):  # as in memory, from the same eigh
            d_NO, _, solver = nn_dense(name)
            k_st = np.asarray(test[name], np.float64)
            pred, singular = _nn_prediction(solver, d_NO, k_st, ctx.y, r)
            return pred, (_singular_note(name, r) if singular else None)
        op_tt, bar = operator(train[name], f"cg {name} ridge {r:g}")
        op_st, _ = operator(test[name], f"cg {name} ridge {r:g}")
        try:
            pred = kernel_regression(
                op_tt, op_st, ctx.y, ridge=r, tol=settings["cg_tol"], maxiter=settings["cg_maxiter"]
            )
            return pred, None
        except RuntimeError as e:
            return None, f"{name}, ridge {r:g}: {e}"
        finally:
            bar.close()

    def solve(name, r):
        def compute():
            pred, note = predict(name, r)
            return {"pred": None if pred is None else np.asarray(pred).tolist(), "note": note}

        out = _phase(root, f"regression_{name}_{_ridge_key(r)}", compute)
        if out["note"]:
            raw["notes"].append(out["note"])
        return None if out["pred"] is None else np.asarray(out["pred"], np.float64)

    raw["preds"] = {}
    for name in names:  # one kernel at a time: its dense copies and factors are then dropped
        s = _phase(root, f"spectrum_{name}", lambda name=name: spectrum(name))
        if s["note"]:
            raw["notes"].append(s["note"])
        dim = ctx.n * ctx.o if name == "entk" else ctx.n
        lam_max, lam_min = _psd_extremes(name, s["lambda_max"], s["lambda_min"], dim, raw["notes"])
        target = raw["entk"] if name == "entk" else raw["kinds"][name]
        target.update(lambda_max=lam_max, lambda_min=lam_min)
        for r in ctx.ridges if ctx.y is not None else ():
            raw["preds"][name, r] = solve(name, r)
        dense.pop(name, None)
        for r in ctx.ridges:
            factors.pop((name, r), None)
        shutil.rmtree(root / "factors", ignore_errors=True)  # the phases reading them are saved
    return raw


def _dense_nn(kernel) -> np.ndarray:
    """A stored ``[N, N]`` (or diagonal's ``[N, N, O]``) kernel read whole in float64 (a
    symmetric store is exactly symmetric: its writer mirrors each off-diagonal block)."""
    return np.asarray(kernel, np.float64)


def _frobenius(train: dict, ctx: _Context, progress: bool, callback) -> dict:
    """``‖Θ‖²_F``, ``‖Θ − Ã‖²_F`` per kind and ``tr Θ``, over the upper-triangle blocks."""
    e = train["entk"]
    nb = e.n_blocks[0]
    total = nb * (nb + 1) // 2
    norm2, trace = 0.0, 0.0
    diff2 = dict.fromkeys(ctx.kinds, 0.0)
    bar = progress_bar(total, 0, progress, "frobenius")
    step = 0
    with bar:
        for i in range(nb):
            for j in range(i, nb):
                w = 1.0 if i == j else 2.0  # an off-diagonal block stands for its transpose too
                e_b = e.block(i, j).astype(np.float64)
                norm2 += w * float(np.sum(e_b * e_b))
                if i == j:
                    trace += float(np.einsum("nnoo->", e_b))
                for name in ctx.kinds:
                    d = e_b - _embed(train[name].block(i, j).astype(np.float64), ctx.o)
                    diff2[name] += w * float(np.sum(d * d))
                step += 1
                bar.update(1)
                if callback is not None:
                    callback("frobenius", step)
    return {"norm2": norm2, "diff2": diff2, "trace": trace}


# --- assembling the report -----------------------------------------------------------------------


def _rel_err(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return abs(a - b) / abs(b) if b != 0 else math.inf


def _cond_of(lam_max: float, lam_min: float) -> float:
    if math.isnan(lam_max) or math.isnan(lam_min):
        return math.nan
    return lam_max / lam_min if lam_min > 0 else math.inf


def _assemble(ctx: _Context, raw: dict, y_te) -> ApproximationReport:
    e = raw["entk"]
    preds = raw["preds"]
    entk_reg = {}
    for r in ctx.ridges:
        p = preds.get(("entk", r))
        acc = None if p is None or y_te is None else accuracy(p, y_te)
        entk_reg[_ridge_key(r)] = {"accuracy": acc}
    entk = {
        "lambda_max": e["lambda_max"],
        "lambda_min": e["lambda_min"],
        "cond": _cond_of(e["lambda_max"], e["lambda_min"]),
        "warm_seconds": e["warm_seconds"],
        "compiled_bytes": e["compiled_bytes"],
        "implementation": e["implementation"],
        "regression": entk_reg if ctx.y is not None else {},
    }
    kinds = {}
    for name in ctx.kinds:
        k = raw["kinds"][name]
        reg = {}
        for r in ctx.ridges if ctx.y is not None else ():
            p, p_e = preds.get((name, r)), preds.get(("entk", r))
            if p is None or p_e is None:
                reg[_ridge_key(r)] = {
                    "pred_rel_diff": None,
                    "accuracy": None,
                    "argmax_agreement": None,
                }
                continue
            norm = np.linalg.norm(p_e)
            reg[_ridge_key(r)] = {
                "pred_rel_diff": float(np.linalg.norm(p - p_e) / norm) if norm else math.inf,
                "accuracy": None if y_te is None else accuracy(p, y_te),
                "argmax_agreement": float(np.mean(np.argmax(p, 1) == np.argmax(p_e, 1))),
            }
        kinds[name] = KindReport(
            kind=name,
            compared_as="A⊗I_O" if k["ndim"] == 2 else "diag blocks",
            relative_frobenius_error=k["relative_frobenius_error"],
            lambda_max=k["lambda_max"],
            lambda_min=k["lambda_min"],
            lambda_max_rel_error=_rel_err(k["lambda_max"], e["lambda_max"]),
            lambda_min_rel_error=_rel_err(k["lambda_min"], e["lambda_min"]),
            cond=_cond_of(k["lambda_max"], k["lambda_min"]),
            warm_seconds=k["warm_seconds"],
            compiled_bytes=k["compiled_bytes"],
            implementation=k["implementation"],
            regression=reg,
        )
    width, idx = _readout(ctx.model, ctx.params, ctx.x)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ctx.params)]
    share = None
    if idx and e["trace"] > 0:
        share = _readout_trace(ctx.model, ctx.params, ctx.x, idx) / e["trace"]
    return ApproximationReport(
        n=ctx.n,
        n_test=ctx.m,
        o=ctx.o,
        n_params=ctx.n_params,
        readout_width=width,
        readout_leaves=tuple(names[k] for k in idx),
        readout_share=share,
        mode="in memory" if raw["spectra"] else "stored",
        ridges=ctx.ridges,
        cost_shape=tuple(int(s) for s in raw["cost_shape"]),
        entk=entk,
        kinds=kinds,
        spectra=raw["spectra"],
        notes=tuple(raw["notes"]),
    )
