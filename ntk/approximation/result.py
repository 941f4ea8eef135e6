"""The report's result: :class:`ApproximationReport` and :class:`KindReport`, their JSON, the
table ``print`` shows and the figure :meth:`ApproximationReport.plot` draws."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ntk import atomic


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
            f"compiled {fmt_bytes(e['compiled_bytes'])} on {self.cost_shape}; "
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
                f"{fmt_bytes(r.compiled_bytes):>8s} "
                f"{_g(_ratio(r.compiled_bytes, e['compiled_bytes'])):>7s}  {r.implementation}"
            )
        for ridge in self.ridges:
            key = ridge_key(ridge)
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


def fmt_bytes(x) -> str:
    if x is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}B"


def ridge_key(ridge: float) -> str:
    return f"ridge={ridge:g}"
