"""The statistics and verdict rules of the claim checks (:mod:`ntk_repro.report.claims`), defined
once: verdicts, 95 % intervals from the t distribution, the log-log slope fit, and the
selection of summary rows by model, parameterisation and epoch."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "does not agree", "inconclusive"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE)
LEVEL = 0.95  # two-sided coverage of every interval
# a part shown beside a verdict that does not enter it
NOT_JUDGED = "reported, not judged"
# The sources quoted by the rules: the paper's abstract, and the first author's talk on it.
TALK = "the talk (M. A. Mohamadi, 'A tale of ∞-wide neural networks', MILD, September 2022)"
# The normal quantile, only for the paired binomial error of an accuracy gap over M test
# points (a normal approximation of a count, not an estimate from a few seeds).
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))


def t_quantile(df: float) -> float:
    """The two-sided :data:`LEVEL` quantile of Student's t with ``df`` degrees of freedom
    (12.7 for one, 4.3 for two, 2.8 for four); inf without any (no spread to go on)."""
    if not (df >= 1):
        return math.inf
    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def t_interval(estimate: float, se: float, df: float) -> tuple[float, float]:
    """``estimate ± t(df)·se`` (:func:`t_quantile`); (nan, nan) when ``se`` is not finite."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return (math.nan, math.nan)
    h = t_quantile(df) * se
    return (estimate - h, estimate + h)


@dataclass(frozen=True)
class Slope:
    """A fitted log-log slope over ``xs`` with ``n_seeds`` seeds; its interval is
    ``slope ± t(df)·se`` (:func:`t_interval`)."""

    slope: float
    se: float
    df: float
    per_seed: tuple[float, ...]
    xs: tuple[float, ...]
    n_seeds: int

    @property
    def interval(self) -> tuple[float, float]:
        return t_interval(self.slope, self.se, self.df)

    def minus(self, other: Slope) -> tuple[float, float, float]:
        """``(difference, se, df)`` of ``self.slope − other.slope``: the standard errors add
        in quadrature; the degrees of freedom are the smaller of the two (conservative)."""
        return self.slope - other.slope, math.hypot(self.se, other.se), min(self.df, other.df)

    def as_dict(self) -> dict:
        lo, hi = self.interval
        return {
            "slope": rounded(self.slope),
            "se": rounded(self.se),
            "df": rounded(self.df),
            "interval": [rounded(lo), rounded(hi)],
            "per_seed": [rounded(s) for s in self.per_seed],
            "x": list(self.xs),
            "n_seeds": self.n_seeds,
        }


@dataclass
class Claim:
    """One claim checked on one model (architecture and parameterisation)."""

    id: str
    model: str
    claim: str
    measured: dict
    expected: dict
    verdict: str
    rule: str
    parameterization: str = "ntk"
    parts: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def rounded(v: float, digits: int = 4) -> float | None:
    if v is None or not math.isfinite(float(v)):
        return None
    return float(f"{float(v):.{digits}g}")


# --- the statistics, defined once ---------------------------------------------------------


def fit_slope(points: Iterable[tuple[Any, float, float]]) -> Slope:
    """Least-squares slope of ``log y`` on ``log x`` from ``(seed, x, y)`` points.

    Every run (one width, one seed) is an independent initialisation: a seed draws other
    weights at every width, so seeds are not paired across widths. The slope and its error
    are therefore the pooled least-squares fit's over all n points, with n − 2 degrees of
    freedom (a departure from a power law inflates the residuals, so it widens the
    interval). Each seed's own slope is kept for the record (``per_seed``), not for the
    interval. Non-positive or non-finite y are dropped. With fewer than two distinct x the
    slope is nan; with fewer than three points the se is nan (every verdict inconclusive).
    """
    by_seed: dict = defaultdict(list)
    for seed, x, y in points:
        if x is not None and y is not None and x > 0 and y > 0 and math.isfinite(y):
            by_seed[seed].append((math.log(x), math.log(y)))
    pts = [p for ps in by_seed.values() for p in ps]
    xs = sorted({round(math.exp(p[0]), 9) for p in pts})
    if len(xs) < 2:
        return Slope(math.nan, math.nan, 0, (), tuple(xs), len(by_seed))
    lx, ly = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, icept = np.polyfit(lx, ly, 1)
    n, se = len(pts), math.nan
    if n >= 3:
        resid = ly - (slope * lx + icept)
        sxx = float(np.sum((lx - lx.mean()) ** 2))
        se = math.sqrt(float(np.sum(resid**2)) / (n - 2) / sxx)
    per_seed = [
        float(np.polyfit([p[0] for p in ps], [p[1] for p in ps], 1)[0])
        for ps in by_seed.values()
        if len({p[0] for p in ps}) >= 2
    ]
    xs_out = tuple(int(x) if float(x).is_integer() else x for x in xs)
    return Slope(float(slope), se, max(n - 2, 0), tuple(per_seed), xs_out, len(by_seed))


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, its standard error ``std(ddof=1)/√k`` and its k − 1 degrees of freedom (se nan
    for a single value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))), len(v) - 1


# --- verdict rules ------------------------------------------------------------------------


def within(lo: float, hi: float, band: tuple[float, float]) -> str:
    """Interval ``[lo, hi]`` inside ``band``: agrees; disjoint from it: does not agree."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if band[0] <= lo and hi <= band[1]:
        return AGREES
    if hi < band[0] or lo > band[1]:
        return DISAGREES
    return INCONCLUSIVE


def slope_in_band(s: Slope, band: tuple[float, float]) -> str:
    return within(*s.interval, band)


def falls(s: Slope) -> str:
    """The quantity falls with x: the slope's interval is below 0 (agrees), above 0 (it
    grows: does not agree), or contains 0 (inconclusive)."""
    return within(*s.interval, (-math.inf, 0.0))


def combine(verdicts: Iterable[str]) -> str:
    """All parts agree: agrees; any part does not: does not agree; otherwise inconclusive."""
    vs = list(verdicts)
    if not vs:
        return INCONCLUSIVE
    if any(v == DISAGREES for v in vs):
        return DISAGREES
    if all(v == AGREES for v in vs):
        return AGREES
    return INCONCLUSIVE


def interval_rule(what: str) -> str:
    return f"{what} ± t(n − 2)·se (pooled least-squares fit over widths and seeds, 95 %)"


def part(name: str, verdict: str, rule: str, **measured) -> dict:
    return {"check": name, "verdict": verdict, "rule": rule, **measured}


# --- rows ---------------------------------------------------------------------------------


def arms(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """``(model, parameterization)`` pairs present in ``rows``, NTK parameterisation first."""
    keys = {(r["model"], r.get("parameterization") or "ntk") for r in rows}
    order = {"mlp": 0, "cnn": 1, "resnet18": 2}
    return sorted(keys, key=lambda k: (k[1] != "ntk", order.get(k[0], 9), k))


def select(rows, model, param, epoch: int | None = 0) -> list[dict]:
    return [
        r
        for r in rows
        if r["model"] == model
        and (r.get("parameterization") or "ntk") == param
        and (epoch is None or r.get("epoch") == epoch)
    ]


def width_slope(rows: Sequence[dict], key: str | Callable[[dict], float | None]) -> Slope:
    """:func:`fit_slope` of ``key`` (a row key or a function of a row) against width."""
    get = key if callable(key) else (lambda r: r.get(key))
    return fit_slope((r.get("seed"), r.get("width"), get(r)) for r in rows)


def cond_error(r: dict) -> float | None:
    ce, cp = r.get("cond_entk"), r.get("cond_pntk")
    if ce is None or cp is None or not ce:
        return None
    return abs(cp / ce - 1.0)


def at_widest(rows: Sequence[dict], key: str) -> tuple[Any, list[float]]:
    if not rows:
        return None, []
    w = max(r["width"] for r in rows)
    return w, [r[key] for r in rows if r["width"] == w and r.get(key) is not None]


def ridges_of(rows: Sequence[dict]) -> list[float]:
    """The ridges the runs used (from the ``kr_pred_rel_diff@ridge=r`` keys), sorted."""
    out = set()
    for r in rows:
        for k in r:
            if k.startswith("kr_pred_rel_diff@ridge="):
                out.add(float(k.split("=", 1)[1]))
    return sorted(out)
