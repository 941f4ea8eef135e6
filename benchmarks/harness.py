"""The measuring tools every benchmark here shares: one timer, one interleaved timer, one
peak-RSS reader, one subprocess runner, XLA's statistics and the machine's GEMM rate."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_calls(call: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """``(first call seconds, [warm call seconds])``: the first includes any compilation;
    ``call`` must block until its result is ready."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        warm.append(time.perf_counter() - t0)
    return first, warm


def interleave(
    calls: Mapping[str, Callable[[], object]], rounds: int, *, max_seconds: float = math.inf
) -> dict[str, list[float]]:
    """Warm seconds of each call, ``rounds`` rounds in which every call runs once in turn, so
    all of them see the same machine; stops early after ``max_seconds`` (at least 3 rounds).
    Odd rounds run in reverse order: a call that follows a large one (whose freed buffers
    the next call pays for in fresh pages) follows a different one the next round. The calls
    must be compiled (called once) already and block until ready."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    order = list(calls.items())
    for r in range(rounds):
        for name, call in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return times


def run_json(module: str, args: list[str], timeout: float) -> dict:
    """``python -m MODULE ARGS`` from the repository root in a fresh process (its own peak
    memory); its last stdout line that is a JSON object, or ``{"error"}`` / ``{"skipped"}``."""
    cmd = [sys.executable, "-m", module, *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:]}
    return json.loads(lines[-1])


def xla_stats(compiled) -> tuple[float, int]:
    """``(XLA's FLOP count, compiled temporary bytes)`` of a compiled computation."""
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
    return float(cost.get("flops", float("nan"))), temp


def xla_bytes_accessed(compiled) -> float:
    """XLA's count of the bytes a compiled computation's operations read and write."""
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("bytes accessed", float("nan")))


def gemm_rate(n: int = 2048, repeats: int = 5) -> dict:
    """Measured ``n³`` matrix-product rates in GFLOP/s (medians): jax and numpy in float32,
    and numpy in float64 (the rate a host-side float64 factorisation can reach)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(mm(a, a))
    _, tj = time_calls(lambda: jax.block_until_ready(mm(a, a)), repeats)
    an = np.asarray(a)
    _, tn = time_calls(lambda: an @ an, repeats)
    a64 = an.astype(np.float64)
    _, t64 = time_calls(lambda: a64 @ a64, repeats)
    flops = 2.0 * n**3
    return {
        "jax_gflops": flops / np.median(tj) / 1e9,
        "numpy_gflops": flops / np.median(tn) / 1e9,
        "numpy_float64_gflops": flops / np.median(t64) / 1e9,
    }
