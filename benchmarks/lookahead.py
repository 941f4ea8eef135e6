"""``ntk.lookahead`` timed on the study's CNN: look-ahead scores of 2,000 candidates against
500 labelled points and a 2,000-point pool subset (mnist5k 28×28 digits, O = 10, float32
kernels, float64 solves), with the pNTK and with the eNTK, each in its own process (its own
peak RSS). Writes one JSON with, per kernel: the first call (compiles), ``--repeats`` warm
calls (default 3) and the fastest of them, the peak RSS, and the FLOPs of the kernel
computations (the chosen implementation's estimate at the shapes called) and of the float64
solves (:func:`_solve_flops`, in the order the library runs them); then the eNTK/pNTK ratio
of the fastest warm times beside the FLOP ratios.

Run: ``python -m benchmarks.lookahead [OUT_DIR] [--width 16]`` (``make bench-lookahead``);
output ``OUT_DIR/lookahead_cnn_w<W>.json`` (default ``results/bench``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

import ntk
from benchmarks import harness
from ntk.atomic import write_json
from ntk.kernels.estimates import choose_implementation, implementation_estimates


def _model(width: int):
    """The study's CNN at initialisation (the look-ahead's cost does not depend on the
    weights) and mnist5k's training digits."""
    from ntk_repro.data import load_dataset  # the study's loader and model: lazily
    from ntk_repro.models import build_model, init_model, kernel_model

    ds = load_dataset("mnist5k")
    model = build_model("cnn", num_classes=ds.num_classes, width=width)
    apply_fn, params, state = kernel_model(
        model, init_model(model, jax.random.key(0), ds.input_shape)
    )
    return apply_fn, params, state, ds


def _kernel_flops(apply_fn, params, kind: str, calls) -> float:
    """Estimated FLOPs of the kernel calls ``[(x1, x2)]`` with the implementation ``auto``
    picks (the library's cost model)."""
    k, diag = (10, False) if kind == "entk" else (1, False)
    total = 0.0
    for x1, x2 in calls:
        name = choose_implementation(apply_fn, params, x1, x2, k, diag)
        total += implementation_estimates(apply_fn, params, x1, x2, k, diag)[name][0]
    return total


def _solve_flops(n: int, c: int, u: int, o: int, q: int) -> float:
    """FLOPs of the float64 algebra in the order ``ntk.lookahead`` runs it: the Cholesky of
    the (Nq)² system, the solves for the candidates' columns and the labels, the Schur blocks
    and their q×q solves, ``f_L`` at the candidates and the pool; then the update: for the
    pNTK (q = 1) ``W = K_UL·V`` ([U, C]) and ``(K_UC − W)[:, c] ⊗ e_c``; for the eNTK
    (q = O) ``Z = V·E``, ``K_UL·Z`` and ``K_UC·E``. The q×q eigenvalues (``schur_min``) and
    the scores over ``[C, U, O]`` are not counted."""
    t = o // q
    nq, uq = n * q, u * q
    shared = (
        nq**3 / 3
        + 2 * nq**2 * (c * q + t)
        + 2 * nq * c * q * q
        + c * (2 * q**3 / 3 + 2 * q * q * t)
        + 2 * nq * c * q * t
        + 2 * uq * nq * t
    )
    if q == 1:
        return shared + 2 * u * n * c + u * c + u * c * o
    return shared + 2 * nq * c * q * t + 2 * uq * nq * c * t + 2 * uq * c * q * t


def one(kind: str, width: int, n: int, c: int, u: int, chunk: int, repeats: int) -> dict:
    apply_fn, params, state, ds = _model(width)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ds.y_train))
    lab, cand, pool = idx[:n], idx[n : n + c], idx[n + c : n + c + u]
    x = ds.x_train
    fn = ntk.kernel_fn(apply_fn, kind=kind)

    def call():
        return ntk.lookahead(
            fn, params, x[lab], ds.y_train[lab], x[cand], x[pool], ridge=1e-6,
            chunk_size=chunk, **state,
        )  # fmt: skip

    first, warm = harness.time_calls(call, repeats)
    xc = x[cand[:chunk]]
    n_chunks = math.ceil(c / chunk)
    per_chunk = [(x[lab], xc), (x[pool], xc), (xc, None)]
    kflops = _kernel_flops(apply_fn, params, kind, [(x[lab], None), (x[pool], x[lab])])
    kflops += n_chunks * _kernel_flops(apply_fn, params, kind, per_chunk)
    q = 10 if kind == "entk" else 1
    return {
        "kind": kind,
        "first_call_seconds": first,
        "warm_seconds": warm,
        "fastest_warm_seconds": min(warm),
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "kernel_flops_estimate": kflops,
        "solve_flops": _solve_flops(n, c, u, 10, q),
        "implementation": choose_implementation(apply_fn, params, x[pool], xc, q, False),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results/bench")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n-labelled", type=int, default=500)
    ap.add_argument("--n-candidates", type=int, default=2000)
    ap.add_argument("--n-pool", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="warm calls after the first (>= 1)")
    ap.add_argument("--kinds", nargs="+", default=["pntk", "entk"])
    ap.add_argument("--one", help="internal: time this kind in this process, print JSON")
    ap.add_argument("--timeout", type=float, default=1800.0)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats: must be >= 1 (warm calls timed), got {a.repeats}")
    sizes = (a.width, a.n_labelled, a.n_candidates, a.n_pool, a.chunk, a.repeats)
    if a.one:
        print(json.dumps(one(a.one, *sizes)), flush=True)
        return {}
    args = ["--width", str(a.width), "--n-labelled", str(a.n_labelled), "--n-candidates"]
    args += [str(a.n_candidates), "--n-pool", str(a.n_pool), "--chunk", str(a.chunk)]
    args += ["--repeats", str(a.repeats)]
    t0 = time.perf_counter()
    runs = {
        k: harness.run_json("benchmarks.lookahead", [*args, "--one", k], a.timeout) for k in a.kinds
    }
    result = {
        "case": f"study CNN width {a.width}, mnist5k 28x28, O = 10, float32 kernels, f64 solves",
        "n_labelled": a.n_labelled, "n_candidates": a.n_candidates, "n_pool": a.n_pool,
        "chunk_size": a.chunk, "runs": runs, "total_seconds": time.perf_counter() - t0,
        "cores": os.cpu_count(), "load_average": os.getloadavg(), "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }  # fmt: skip
    p, e = runs.get("pntk", {}), runs.get("entk", {})
    if p.get("warm_seconds") and e.get("warm_seconds"):
        result["entk_over_pntk"] = {
            "warm_time": min(e["warm_seconds"]) / min(p["warm_seconds"]),
            "first_call_time": e["first_call_seconds"] / p["first_call_seconds"],
            "kernel_flops": e["kernel_flops_estimate"] / p["kernel_flops_estimate"],
            "solve_flops": e["solve_flops"] / p["solve_flops"],
            "all_flops": (e["kernel_flops_estimate"] + e["solve_flops"])
            / (p["kernel_flops_estimate"] + p["solve_flops"]),
            "peak_rss": e["peak_rss_bytes"] / p["peak_rss_bytes"],
        }
    out = Path(a.out) / f"lookahead_cnn_w{a.width}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(json.dumps(result, indent=1), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
