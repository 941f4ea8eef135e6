"""Any combination of real models, kinds and implementations timed interleaved in one
process (``make bench`` interleaves the implementations of one model; this compares across
models, e.g. a scan-stacked MLP against the same MLP unrolled).

Every combination of ``--models`` x ``--kinds`` x ``--impls`` (the real models of
``benchmarks.real_models``, N = 32, O = 10, float32) is compiled first and then called in
turn, ``--rounds`` times, so all of them see the same conditions; the table gives each one's
minimum and median warm time and its ratio to the first combination of its kind.

    python -m benchmarks.interleaved --models mlp10_scan mlp10_unrolled --kinds entk pntk
    python -m benchmarks.interleaved --models vit --impls jacobian structured

The decoder and the encoder use the largest vocabulary ``make bench`` uses (50,257, 30,522).
"""

import argparse
import itertools
from pathlib import Path

import jax
import numpy as np

import ntk
from benchmarks import harness
from benchmarks.real_models import REAL_MODELS, build, real_model_cases
from ntk.atomic import write_json

# A model's vocabulary: the largest that ``make bench`` uses for it (0: no embedding).
VOCAB = {c["model"]: c["vocab"] for c in sorted(real_model_cases(), key=lambda c: c["vocab"])}


def measure(models, kinds, impls, rounds: int, n: int = 32, o: int = 10) -> dict:
    """``{(model, kind, impl): [warm seconds per round]}``, compile time excluded."""
    calls = {}
    for model in models:
        apply_fn, params, x = build({"model": model, "vocab": VOCAB[model], "o": o, "n": n})
        for kind, impl in itertools.product(kinds, impls):
            fn = ntk.kernel_fn(apply_fn, kind=kind, implementation=impl)
            calls[model, kind, impl] = lambda fn=fn, p=params, x=x: jax.block_until_ready(fn(p, x))
            calls[model, kind, impl]()  # compile
    return harness.interleave(calls, rounds)


def summary(times: dict) -> list[dict]:
    """One row per combination, with ratios to the first combination of the same kind and,
    by minimum time, to the fastest implementation on the same model and kind."""
    rows, first = [], {}
    best: dict = {}
    for (model, kind, _), ts in times.items():
        best[model, kind] = min(best.get((model, kind), np.inf), min(ts))
    for (model, kind, impl), ts in times.items():
        ts = np.asarray(ts)
        ref = first.setdefault(kind, ts)
        rows.append(
            {
                "model": model,
                "kind": kind,
                "implementation": impl,
                "min_ms": 1e3 * ts.min(),
                "median_ms": 1e3 * np.median(ts),
                "ratio_min": ts.min() / ref.min(),
                "ratio_median": np.median(ts) / np.median(ref),
                "vs_best": ts.min() / best[model, kind],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(REAL_MODELS), required=True)
    parser.add_argument("--kinds", nargs="+", default=["entk"])
    parser.add_argument("--impls", nargs="+", default=["structured"])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--out", default=None, help="JSON file for the rows (optional)")
    args = parser.parse_args()
    rows = summary(measure(args.models, args.kinds, args.impls, args.rounds))
    print(
        "| model | kind | implementation | min | median | ratio (min) | ratio (median) "
        "| vs best (min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['kind']} | {r['implementation']} | {r['min_ms']:.2f} ms | "
            f"{r['median_ms']:.2f} ms | {r['ratio_min']:.2f} | {r['ratio_median']:.2f} | "
            f"{r['vs_best']:.2f} |"
        )
    if args.out:
        write_json(Path(args.out), {"rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
