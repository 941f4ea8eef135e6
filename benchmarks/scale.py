"""Scale benchmark: kernels streamed to disk (:func:`ntk.stream_kernel`): numbers, not tests.

Each row runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Model: the benchmark MLP of :mod:`benchmarks.suite` (``d=40 -> 512 -> 512 -> 10``, ReLU, NTK
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

Worker scaling (:func:`ntk.distribute_kernel` into the chunked store, submitit's local
executor, each worker pinned to one core with one XLA thread):

===============  ======  ========  ==========  ===========================================
row              kind    N         block size  what
===============  ======  ========  ==========  ===========================================
workers_50k      pntk    50,000    5,000       1 worker, then 2; wall time and the ratio
workers_20k      pntk    20,000    5,000       the same, smaller (about a minute)
in_memory_10k    pntk    10,000    (none)      one ``ntk.kernel`` call in memory, 1 core
===============  ======  ========  ==========  ===========================================

Goal: 2 workers at least 1.7 times the throughput of 1. Throughputs are kernel entries per
second of wall time (job start-up, compiles and writes included), so the streamed rows and
the in-memory row compare directly.

Run: ``python -m benchmarks.scale --out DIR [--rows pntk_20k entk_2k] [--work DIR] [--keep]``.
Writes ``DIR/bench_scale.json`` and ``DIR/bench_scale.md``; the kernels go to ``--work``
(default ``DIR/kernels``) and are deleted after each row unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from ntk import atomic

ROWS: dict[str, dict] = {
    "pntk_20k": dict(kind="pntk", n=20_000, block_size=5000),
    "pntk_50k": dict(kind="pntk", n=50_000, block_size=5000),
    "entk_2k": dict(kind="entk", n=2_000, block_size=500),
}
WORKER_ROWS: dict[str, dict] = {
    "workers_50k": dict(kind="pntk", n=50_000, block_size=5000, workers=(1, 2)),
    "workers_20k": dict(kind="pntk", n=20_000, block_size=5000, workers=(1, 2)),
}
IN_MEMORY_ROWS: dict[str, dict] = {"in_memory_10k": dict(kind="pntk", n=10_000)}
ALL_ROWS = (*ROWS, *WORKER_ROWS, *IN_MEMORY_ROWS)
DEFAULT_ROWS = ("pntk_20k", "pntk_50k", "entk_2k", "workers_50k", "in_memory_10k")
WIDTH, O, D_IN = 512, 10, 40


def bench_problem(n: int):
    """``(apply_fn, params, x, None)``: the benchmark MLP and ``n`` random inputs (a module
    function, so that submitit workers can rebuild it)."""
    import jax

    from benchmarks.models import MODELS

    apply_fn, params, shape = MODELS["mlp"](WIDTH, O, d_in=D_IN)
    x = jax.random.normal(jax.random.key(1), (n, *shape))
    return apply_fn, params, x, None


def _spot_check(k, apply_fn, params, x, kind, n) -> float:
    """Max relative error of 64×64 random entries of ``k`` against :func:`ntk.kernel`."""
    from ntk.kernels.api import kernel

    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, 64, replace=False))
    cols = np.sort(rng.choice(n, 64, replace=False))
    got = np.asarray(k[rows][:, cols]) if isinstance(k, np.ndarray) else k.oindex[rows, cols]
    want = np.asarray(kernel(apply_fn, params, x[rows], x[cols], kind=kind))
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def run_workers_row(name: str, work_dir: str | os.PathLike, keep: bool = False) -> list[dict]:
    """One worker-scaling row: the store computed with each worker count in turn."""
    row = WORKER_ROWS[name]
    results = []
    for n_workers in row["workers"]:
        path = Path(work_dir) / f"{name}_w{n_workers}"
        results.append(_workers_run(name, row, n_workers, path, Path(work_dir) / f"{name}_jobs"))
        print(json.dumps(results[-1]), flush=True)
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(Path(work_dir) / f"{name}_jobs", ignore_errors=True)
    base = results[0]["seconds"]
    for r in results:
        r["speedup"] = base / r["seconds"]
    return results


def _workers_run(name: str, row: dict, n_workers: int, path: Path, jobs: Path) -> dict:
    """The row's store computed by ``n_workers`` local submitit jobs, timed and checked."""
    import functools

    import submitit

    from ntk.scale.store_read import done_blocks, open_kernel
    from ntk.scale.workers import distribute_kernel

    n, block_size, kind = row["n"], row["block_size"], row["kind"]
    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    distribute_kernel(
        functools.partial(bench_problem, n),
        path=path,
        n_workers=n_workers,
        kind=kind,
        block_size=block_size,
        cpus_per_worker=1,
        progress=sys.stderr.isatty(),
        executor=submitit.LocalExecutor(folder=jobs),
    )
    seconds = time.perf_counter() - t0
    blocks = done_blocks(path)
    block_s = [json.loads((path / "done" / f"{i}.{j}").read_text())["seconds"] for i, j in blocks]
    k = open_kernel(path)
    apply_fn, params, x, _ = bench_problem(n)
    chunks = (path / "kernel.zarr").iterdir()
    return {
        "row": name,
        "kind": kind,
        "n": n,
        "block_size": block_size,
        "n_workers": n_workers,
        "cores_per_worker": 1,
        "implementation": k.meta["info"]["resolved_implementation"],
        "blocks": len(blocks),
        "seconds": seconds,
        "block_seconds_median": float(np.median(block_s)),
        "block_seconds_sum": float(np.sum(block_s)),
        "entries_per_s": n * n / seconds,
        "bytes_on_disk": sum(f.stat().st_size for f in chunks if f.is_file()),
        "spot_check_max_rel_err": _spot_check(k, apply_fn, params, x, kind, n),
    }


def run_in_memory_row(name: str) -> dict:
    """``ntk.kernel`` of ``[N, N]`` in one call, in this process pinned to one core (call it
    in a fresh subprocess: the pinning must precede JAX's start)."""
    from ntk.scale.workers import limit_cpus

    limit_cpus([0])
    import jax

    from ntk.kernels.api import kernel

    row = IN_MEMORY_ROWS[name]
    apply_fn, params, x, _ = bench_problem(row["n"])
    jax.block_until_ready(x)
    t0 = time.perf_counter()
    k = jax.block_until_ready(kernel(apply_fn, params, x, kind=row["kind"]))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = jax.block_until_ready(kernel(apply_fn, params, x, kind=row["kind"]))
    warm = time.perf_counter() - t0
    n = row["n"]
    return {
        "row": name,
        "kind": row["kind"],
        "n": n,
        "n_workers": 1,
        "cores_per_worker": 1,
        "seconds": cold,
        "warm_seconds": warm,
        "entries_per_s": n * n / cold,
        "warm_entries_per_s": n * n / warm,
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "spot_check_max_rel_err": _spot_check(np.asarray(k), apply_fn, params, x, row["kind"], n),
    }


def run_row(name: str, work_dir: str | os.PathLike, block_size: int | None = None) -> dict:
    """Streams one row's kernel in this process and measures it (call it in a subprocess)."""
    import jax

    from ntk.scale.stream import stream_kernel

    row = ROWS[name]
    block_size = block_size or row["block_size"]
    apply_fn, params, x, _ = bench_problem(row["n"])
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
    peak = harness.peak_rss_bytes()
    with open(out_dir / "meta.json") as f:
        meta = json.load(f)
    k = np.load(path, mmap_mode="r")
    err = _spot_check(k, apply_fn, params, x, row["kind"], row["n"])
    del k
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
    rows: tuple[str, ...] = DEFAULT_ROWS,
    *,
    work_dir: str | os.PathLike | None = None,
    keep: bool = False,
    block_size: int | None = None,
    timeout_s: float = 3600,
) -> list[dict]:
    """Runs each row in a subprocess; writes ``bench_scale.json`` and ``bench_scale.md``.

    Args:
      out_dir: where the results go (created).
      rows: names from :data:`ROWS`, :data:`WORKER_ROWS` and :data:`IN_MEMORY_ROWS`.
      work_dir: where the kernels are streamed (default ``out_dir/kernels``); needs the
        disk space of the largest row (10 GB for ``pntk_50k``).
      keep: keep the kernel files (default: each is deleted after its row).
      block_size: override every row's block size.
      timeout_s: per-row limit; a row that fails or times out is reported with its error.

    Returns:
      One dict per row (see :func:`run_row`).
    """
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise ValueError(f"rows: unknown {unknown}; valid: {sorted(ALL_ROWS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else out_dir / "kernels"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    scaling = []
    for name in rows:
        if name in WORKER_ROWS:
            try:
                scaling += run_workers_row(name, work, keep=keep)
            except Exception as e:  # a failed row is reported, the others still run
                scaling.append({"row": name, "error": f"{type(e).__name__}: {e}"[-2000:]})
            continue
        res = _run_child(name, work, block_size, timeout_s)
        if not keep:
            shutil.rmtree(work / name, ignore_errors=True)
        print(json.dumps(res), flush=True)
        (scaling if name in IN_MEMORY_ROWS else results).append(res)
    _write_results(out_dir, results, scaling)
    if not keep and work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _run_child(name: str, work: Path, block_size: int | None, timeout_s: float) -> dict:
    """One row in a fresh subprocess (its own peak memory); a failure becomes an error row."""
    args = ["--child", name, "--work", str(work)]
    if block_size is not None:
        args += ["--block-size", str(block_size)]
    return {"row": name, **harness.run_json("benchmarks.scale", args, timeout_s)}


def _write_results(out_dir: Path, results: list[dict], scaling: list[dict]) -> None:
    """``bench_scale.json`` (rows, scaling rows and the machine) and ``bench_scale.md``."""
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version}
    atomic.write_json(
        out_dir / "bench_scale.json", {"info": info, "rows": results, "scaling": scaling}
    )
    md = markdown_table(results) if results else ""
    if scaling:
        md += ("\n" if md else "") + scaling_table(scaling)
    atomic.write_text(out_dir / "bench_scale.md", md)


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


def scaling_table(results: list[dict]) -> str:
    lines = [
        "| row | N | workers × cores | blocks | time | entries/s | speedup | median block | "
        "spot-check rel. err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error'][-120:]!r} | | | | | | | |")
            continue
        blocks = r.get("blocks", "in memory")
        median = f"{r['block_seconds_median']:.1f} s" if "block_seconds_median" in r else ""
        speedup = f"{r['speedup']:.2f}×" if "speedup" in r else ""
        lines.append(
            f"| {r['row']} | {r['n']:,} | {r['n_workers']} × {r['cores_per_worker']} | "
            f"{blocks} | {r['seconds']:.0f} s | {r['entries_per_s'] / 1e6:.1f} M | {speedup} | "
            f"{median} | {r['spot_check_max_rel_err']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="results directory")
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=sorted(ALL_ROWS))
    ap.add_argument("--work", help="where kernels are streamed (default OUT/kernels)")
    ap.add_argument("--keep", action="store_true", help="keep the kernel files")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child in IN_MEMORY_ROWS:
        print(json.dumps(run_in_memory_row(args.child)), flush=True)
        return
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
