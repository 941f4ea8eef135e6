"""``ntk.diagnose``: which parameter leaves take a structured rule, and what each path costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ntk.kernels.estimates import default_memory_budget, implementation_estimates
from ntk.kernels.model import Model, batch_len, split_kwargs
from ntk.kernels.preparation import prepare
from ntk.kernels.structured import kernel as structured
from ntk.kernels.structured.kernel import LeafReport


@dataclass(frozen=True)
class Diagnosis:
    """The structured-derivatives plan of a model at given shapes, and ``auto``'s choice.

    ``leaves``: one :class:`~ntk.kernels.structured.kernel.LeafReport` per parameter leaf (its path:
    ``structured``, ``folded bias`` or ``fallback``; the rule or the reason; the chosen
    method; estimated FLOPs and bytes of that method and of Jacobian contraction of the
    leaf). ``estimates``: ``{implementation: (FLOPs, peak bytes)}``; ``implementation``:
    what ``"auto"`` picks under ``memory_budget`` bytes.
    """

    leaves: tuple[LeafReport, ...]
    implementation: str
    estimates: dict
    memory_budget: float
    kind: str

    @property
    def structured_fraction(self) -> float:
        """Share of the parameters (by count) that avoid Jacobian contraction."""
        sizes = [(max(1, _size(r.shape)), r.path != "fallback") for r in self.leaves]
        return sum(s for s, ok in sizes if ok) / sum(s for s, _ in sizes)

    def __str__(self) -> str:
        rows = [
            f"kind={self.kind!r}: auto -> {self.implementation!r} "
            f"(budget {_bytes(self.memory_budget)}); "
            f"{100 * self.structured_fraction:.1f}% of parameters structured",
            "  "
            + "  ".join(
                f"{n}: {_num(f)} FLOPs, {_bytes(m)}" for n, (f, m) in self.estimates.items()
            ),
            f"  {'leaf':44s} {'shape':16s} {'path':11s} {'method':17s} "
            f"{'FLOPs':>8s} {'memory':>8s} {'JC FLOPs':>8s} {'JC mem':>8s}  rule / reason",
        ]
        for r in self.leaves:
            rows.append(
                f"  {r.name[:44]:44s} {str(r.shape)[:16]:16s} {r.path:11s} {r.method:17s} "
                f"{_num(r.flops):>8s} {_bytes(r.memory_bytes):>8s} "
                f"{_num(r.fallback_flops):>8s} {_bytes(r.fallback_memory_bytes):>8s}  {r.rule}"
            )
        return "\n".join(rows)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _num(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _bytes(x: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}B"


def diagnose(
    apply_fn,
    params: Any,
    x1: Any,
    x2: Any | None = None,
    *,
    kind: str = "entk",
    memory_budget: float | None = None,
    kind_options: dict | None = None,
    **apply_kwargs: Any,
) -> Diagnosis:
    """For every parameter leaf: does ``implementation="structured"`` apply a structured
    rule (which one) or fall back to Jacobian contraction (and why), with the estimated
    FLOPs and memory of each choice; and which implementation ``"auto"`` picks.

    Shapes only: nothing is computed on the arrays' values. ``print(ntk.diagnose(...))``
    shows a table.

    Args:
      apply_fn, params, x1, x2: as for :func:`ntk.kernel` (x1 ``[N1, ...]``, x2 ``[N2, ...]``
        or None).
      kind: the kernel kind (it sets the number of cotangents K and full vs diagonal).
      memory_budget: bytes for ``auto``'s choice (default :func:`default_memory_budget`).
      kind_options: options of ``kind`` (e.g. ``{"key": key}`` for ``random_projection``).
      **apply_kwargs: model state, as for a :func:`ntk.kernel_fn` call.

    Returns:
      A :class:`Diagnosis`.
    """
    dynamic, static = split_kwargs(apply_kwargs)
    model = Model(apply_fn, static, tuple(dynamic))
    prep = prepare(
        model,
        params,
        x1,
        x2,
        kind=kind,
        implementation="auto",
        kind_options=dict(kind_options or {}),
        memory_budget=memory_budget,
    )
    k = prep.proj_KO.shape[0]
    n2 = batch_len(x1 if x2 is None else x2)
    reports = structured.leaf_reports(model, params, x1, n2, k, prep.diag)
    est = implementation_estimates(model, params, x1, x2, k, prep.diag)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    return Diagnosis(tuple(reports), prep.implementation, est, budget, kind)
