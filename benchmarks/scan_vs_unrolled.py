"""The same 10-layer MLP written with ``nn.scan`` and unrolled: structured eNTK and pNTK, timed
interleaved in one process (standalone script).

``make bench`` times every case in its own subprocess, one after the other; two cases that
differ by a few milliseconds then also differ by whatever the machine did in between. Here the
four kernels (scan / unrolled x eNTK / pNTK) are compiled first and then called in turn,
``--rounds`` times, so each pair sees the same conditions; the ratio of their minimum (and
median) warm times is the scan overhead. Models and inputs: ``ntk_repro.bench_models``
(``mlp10_scan`` and ``mlp10_unrolled``, N = 32, O = 10, float32).

    python benchmarks/scan_vs_unrolled.py [--rounds 50] [--out results/bench/scan_vs_unrolled.json]
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import ntk
from ntk.atomic import write_json
from ntk_repro.bench_models import build

MODELS = ("mlp10_scan", "mlp10_unrolled")
KINDS = ("entk", "pntk")


def measure(rounds: int, n: int = 32, o: int = 10) -> dict:
    """``{kind: {model: [warm seconds per round]}}`` with compile time excluded."""
    calls = {}
    for model in MODELS:
        apply_fn, params, x = build({"model": model, "vocab": 0, "o": o, "n": n})
        for kind in KINDS:
            fn = ntk.kernel_fn(apply_fn, kind=kind, implementation="structured")
            jax.block_until_ready(fn(params, x))  # compile
            calls[kind, model] = (fn, params, x)
    times = {key: [] for key in calls}
    for _ in range(rounds):
        for key, (fn, params, x) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            times[key].append(time.perf_counter() - start)
    return {kind: {model: times[kind, model] for model in MODELS} for kind in KINDS}


def summary(times: dict) -> list[dict]:
    rows = []
    for kind, by_model in times.items():
        scan, unrolled = (np.asarray(by_model[m]) for m in MODELS)
        rows.append(
            {
                "kind": kind,
                "scan_min_ms": 1e3 * scan.min(),
                "unrolled_min_ms": 1e3 * unrolled.min(),
                "ratio_min": scan.min() / unrolled.min(),
                "scan_median_ms": 1e3 * np.median(scan),
                "unrolled_median_ms": 1e3 * np.median(unrolled),
                "ratio_median": np.median(scan) / np.median(unrolled),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--out", default=None, help="JSON file for the rows (optional)")
    args = parser.parse_args()
    rows = summary(measure(args.rounds))
    print("| kind | scan min | unrolled min | ratio (min) | ratio (median) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['scan_min_ms']:.2f} ms | {r['unrolled_min_ms']:.2f} ms | "
            f"{r['ratio_min']:.2f} | {r['ratio_median']:.2f} |"
        )
    if args.out:
        write_json(Path(args.out), {"rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
