"""Scale benchmark: kernels streamed to disk (:func:`ntk.stream_kernel`): numbers, not tests.

Each row runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Model: the benchmark MLP of :mod:`ntk.bench` (``d=40 -> 512 -> 512 -> 10``, ReLU, NTK
parameterisation, biases; mnist1d-sized inputs, random normal), float32.

==========  ======  ========  ==========  ==========================================
row         kind    N         block size  kernel on disk
==========  ======  ========  ==========  ==========================================
pntk_20k    pntk    20,000    5,000       [20000, 20000] float32, 1.6 GB
pntk_50k    pntk    50,000    5,000       [50000, 50000] float32, 10 GB
entk_2k     entk    2,000     500         [2000, 2000, 10, 10] float32, 1.6 GB
==========  ======  ========  ==========  ==========================================

Targets: pNTK at N=50,000 within 15 minutes and under 12 GB peak RSS on the 2-core CPU.
Each row also checks 64×64 random entries of the file against :func:`ntk.kernel`.

Run: ``python -m ntk.bench_scale --out DIR [--rows pntk_20k entk_2k] [--work DIR] [--keep]``.
Writes ``DIR/bench_scale.json`` and ``DIR/bench_scale.md``; the kernels go to ``--work``
(default ``DIR/kernels``) and are deleted after each row unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS: dict[str, dict] = {
    "pntk_20k": dict(kind="pntk", n=20_000, block_size=5000),
    "pntk_50k": dict(kind="pntk", n=50_000, block_size=5000),
    "entk_2k": dict(kind="entk", n=2_000, block_size=500),
}
WIDTH, O, D_IN = 512, 10, 40


def run_row(name: str, work_dir: str | os.PathLike, block_size: int | None = None) -> dict:
    """Streams one row's kernel in this process and measures it (call it in a subprocess)."""
    import jax

    from ntk.bench import MODELS
    from ntk.kernels.api import kernel
    from ntk.stream import stream_kernel

    row = ROWS[name]
    block_size = block_size or row["block_size"]
    apply_fn, params, shape = MODELS["mlp"](WIDTH, O, d_in=D_IN)
    x = jax.random.normal(jax.random.key(1), (row["n"], *shape))
    jax.block_until_ready((params, x))
    out_dir = Path(work_dir) / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    path = stream_kernel(
        apply_fn,
        params,
        x,
        out_dir=out_dir,
        kind=row["kind"],
        block_size=block_size,
        progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(out_dir / "meta.json") as f:
        meta = json.load(f)
    # Spot check: 64 random rows x 64 random columns against the in-memory kernel.
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(row["n"], 64, replace=False))
    cols = np.sort(rng.choice(row["n"], 64, replace=False))
    k = np.load(path, mmap_mode="r")
    got = np.asarray(k[rows][:, cols])
    del k
    want = np.asarray(kernel(apply_fn, params, x[rows], x[cols], kind=row["kind"]))
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    st = os.stat(path)
    n_params = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
    return {
        "row": name,
        "kind": row["kind"],
        "n": row["n"],
        "o": O,
        "width": WIDTH,
        "params": n_params,
        "block_size": block_size,
        "implementation": meta["info"]["resolved_implementation"],
        "shape": meta["shape"],
        "dtype": meta["dtype"],
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "bytes_written": st.st_size,
        "bytes_allocated": st.st_blocks * 512,
        "spot_check_max_rel_err": err,
        "device": jax.devices()[0].device_kind,
    }


def run_scale_bench(
    out_dir: str | os.PathLike,
    rows: tuple[str, ...] = ("pntk_20k", "pntk_50k", "entk_2k"),
    *,
    work_dir: str | os.PathLike | None = None,
    keep: bool = False,
    block_size: int | None = None,
    timeout_s: float = 3600,
) -> list[dict]:
    """Runs each row in a subprocess; writes ``bench_scale.json`` and ``bench_scale.md``.

    Args:
      out_dir: where the results go (created).
      rows: names from :data:`ROWS`.
      work_dir: where the kernels are streamed (default ``out_dir/kernels``); needs the
        disk space of the largest row (10 GB for ``pntk_50k``).
      keep: keep the kernel files (default: each is deleted after its row).
      block_size: override every row's block size.
      timeout_s: per-row limit; a row that fails or times out is reported with its error.

    Returns:
      One dict per row (see :func:`run_row`).
    """
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"rows: unknown {unknown}; valid: {sorted(ROWS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else out_dir / "kernels"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in rows:
        cmd = [sys.executable, "-m", "ntk.bench_scale", "--child", name, "--work", str(work)]
        if block_size is not None:
            cmd += ["--block-size", str(block_size)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
            if proc.returncode == 0:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                res = {"row": name, "error": proc.stderr.strip()[-2000:]}
        except subprocess.TimeoutExpired:
            res = {"row": name, "error": f"timed out after {timeout_s} s"}
        if not keep:
            shutil.rmtree(work / name, ignore_errors=True)
        results.append(res)
        print(json.dumps(res), flush=True)
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version}
    with open(out_dir / "bench_scale.json", "w") as f:
        json.dump({"info": info, "rows": results}, f, indent=1)
    (out_dir / "bench_scale.md").write_text(markdown_table(results))
    if not keep and work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return results


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| row | kernel | block | impl | time | peak RSS | written | spot-check rel. err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error'][-120:]!r} | | | | | | |")
            continue
        lines.append(
            f"| {r['row']} | {r['kind']} {r['shape']} {np.dtype(r['dtype']).name} | "
            f"{r['block_size']} | {r['implementation']} | {r['seconds']:.0f} s | "
            f"{r['peak_rss_bytes'] / 1e9:.2f} GB | {r['bytes_written'] / 1e9:.2f} GB | "
            f"{r['spot_check_max_rel_err']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=sorted(ROWS))
    ap.add_argument("--work", help="where kernels are streamed (default OUT/kernels)")
    ap.add_argument("--keep", action="store_true", help="keep the kernel files")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_row(args.child, args.work, args.block_size)), flush=True)
        return
    if not args.out:
        ap.error("--out is required")
    run_scale_bench(
        args.out,
        tuple(args.rows),
        work_dir=args.work,
        keep=args.keep,
        block_size=args.block_size,
    )


if __name__ == "__main__":
    main()
