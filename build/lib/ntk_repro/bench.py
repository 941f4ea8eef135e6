"""Benchmark suite for the kernel implementations (``make bench``): numbers, not tests.

Each case runs in its own subprocess so that its peak resident memory is its own. A case
reports the first call (compile + run) separately from the warm median, XLA's FLOP count
and compiled temporary memory, the achieved GFLOP/s and its ratio to the machine's measured
float32 GEMM rate. ``run_suite`` writes ``bench.json``, ``bench.md`` and plots.

Run: ``python experiments/bench.py`` (Hydra) or ``python -m ntk_repro.bench --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ntk import atomic
from ntk_repro.bench_tables import markdown, plot  # noqa: F401  (re-exported)

# --- models (plain JAX, NTK parameterisation, biases) -------------------------------------


def _mlp(width: int, o: int, d_in: int = 64, depth: int = 3):
    """``d_in -> width x (depth-1) -> o`` ReLU MLP, as in the neural-tangents anchor."""
    import jax
    import jax.numpy as jnp

    dims = [d_in] + [width] * (depth - 1) + [o]
    keys = jax.random.split(jax.random.key(0), depth)
    params = [
        {"w": jax.random.normal(k, (a, b)), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, dims[:-1], dims[1:], strict=True)
    ]

    def apply_fn(p, x):
        for i, layer in enumerate(p):
            x = x @ layer["w"] / math.sqrt(x.shape[-1]) + layer["b"][None]
            if i < len(p) - 1:
                x = jax.nn.relu(x)
        return x

    return apply_fn, params, (d_in,)


def _conv(x, w, b, stride=1):
    import jax

    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y / math.sqrt(w.shape[0] * w.shape[1] * w.shape[2]) + b[None, None, None]


def _cnn(width: int, o: int, side: int = 8):
    """conv3x3(width) -> relu -> conv3x3(width) -> relu -> avgpool 2 -> dense(o)."""
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.key(0), 3)
    flat = (side // 2) ** 2 * width
    params = {
        "c1": {"w": jax.random.normal(k[0], (3, 3, 1, width)), "b": jnp.zeros((width,))},
        "c2": {"w": jax.random.normal(k[1], (3, 3, width, width)), "b": jnp.zeros((width,))},
        "out": {"w": jax.random.normal(k[2], (flat, o)), "b": jnp.zeros((o,))},
    }

    def apply_fn(p, x):
        h = jax.nn.relu(_conv(x, p["c1"]["w"], p["c1"]["b"]))
        h = jax.nn.relu(_conv(h, p["c2"]["w"], p["c2"]["b"]))
        n, hh, ww, c = h.shape
        h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4)).reshape(n, -1)
        return h @ p["out"]["w"] / math.sqrt(h.shape[-1]) + p["out"]["b"][None]

    return apply_fn, params, (side, side, 1)


def _resnet(width: int, o: int, side: int = 8, blocks: int = 2):
    """Stem conv, ``blocks`` basic residual blocks (two 3x3 convs + skip), GAP, dense."""
    import jax
    import jax.numpy as jnp

    k = iter(jax.random.split(jax.random.key(0), 2 * blocks + 2))

    def conv_p(cin, cout):
        return {"w": jax.random.normal(next(k), (3, 3, cin, cout)), "b": jnp.zeros((cout,))}

    params = {
        "stem": conv_p(1, width),
        "blocks": [{"a": conv_p(width, width), "b": conv_p(width, width)} for _ in range(blocks)],
        "out": {"w": jax.random.normal(next(k), (width, o)), "b": jnp.zeros((o,))},
    }

    def apply_fn(p, x):
        h = jax.nn.relu(_conv(x, p["stem"]["w"], p["stem"]["b"]))
        for blk in p["blocks"]:
            r = jax.nn.relu(_conv(h, blk["a"]["w"], blk["a"]["b"]))
            h = jax.nn.relu(h + _conv(r, blk["b"]["w"], blk["b"]["b"]))
        h = h.mean(axis=(1, 2))
        return h @ p["out"]["w"] / math.sqrt(h.shape[-1]) + p["out"]["b"][None]

    return apply_fn, params, (side, side, 1)


MODELS: dict[str, Callable] = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}


# --- one case -------------------------------------------------------------------------------


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_overhead_case(case: dict) -> dict:
    """Per-call cost of ``ntk.kernel_fn`` (and of the one-shot ``ntk.kernel``) against the
    same computation jitted by the caller, timed interleaved, warm, median of many calls."""
    import jax

    import ntk

    apply_fn, params, shape = MODELS[case["model"]](case["width"], case["o"])
    x = jax.random.normal(jax.random.key(1), (case["n"], *shape))
    kind, impl = case["kind"], case["implementation"]
    fn = ntk.kernel_fn(apply_fn, kind=kind, implementation=impl)
    callers = {
        "caller_jit": jax.jit(lambda p, a: fn(p, a)),
        "kernel_fn": fn,
        "kernel": lambda p, a: ntk.kernel(apply_fn, p, a, kind=kind, implementation=impl),
    }
    for call in callers.values():  # compile and warm up
        for _ in range(3):
            jax.block_until_ready(call(params, x))
    times: dict = {name: [] for name in callers}
    for _ in range(case.get("calls", 200)):
        for name, call in callers.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call(params, x))
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    base = med["caller_jit"]
    return {
        **case,
        **{f"{name}_s": t for name, t in med.items()},
        "kernel_fn_ratio": med["kernel_fn"] / base,
        "kernel_fn_extra_s": med["kernel_fn"] - base,
        "kernel_ratio": med["kernel"] / base,
        "goal": "kernel_fn <= 1.10 x caller_jit + 0.2 ms",
        "meets_goal": med["kernel_fn"] <= 1.10 * base + 2e-4,
        "platform": jax.devices()[0].platform,
    }


def _time_calls(call, repeats: int) -> tuple[float, list[float]]:
    """``(first call seconds, warm call seconds)``; the first includes the compile."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        warm.append(time.perf_counter() - t0)
    return first, warm


def _nominal_flops(name, case, k, diag, apply_fn, params, x) -> float:
    """FLOPs of the algorithm by the cost model behind ``auto``. XLA's own count misses custom
    calls (GPU convolutions) and counts loop bodies once, so it is reported apart."""
    from ntk.kernels import IMPLEMENTATIONS
    from ntk.kernels.api import forward_flops

    p = int(sum(np.size(a) for a in _leaves(params)))
    fp = forward_flops(apply_fn, params, x)
    ctx = dict(apply_fn=apply_fn, params=params, x1=x, x2=None)
    n = case["n"]
    return IMPLEMENTATIONS[name].cost(n1=n, n2=n, k=k, p=p, fp=fp, diag=diag, **ctx)


def _leaves(tree) -> list:
    import jax

    return jax.tree_util.tree_leaves(tree)


def _xla_stats(compiled) -> tuple[float, int]:
    """``(XLA's FLOP count, compiled temporary bytes)`` of a compiled computation."""
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
    return float(cost.get("flops", float("nan"))), temp


def run_case(case: dict) -> dict:
    """Times one ``(model, n, width, o, implementation, kind)`` in this process."""
    import jax

    import ntk

    if case.get("section") == "overhead":
        return run_overhead_case(case)
    if case.get("section") == "real_models":  # Flax transformers, ResNet, scan stacks
        from ntk_repro.bench_models import run_real_case

        return run_real_case(case)
    apply_fn, params, shape = MODELS[case["model"]](case["width"], case["o"])
    x = jax.random.normal(jax.random.key(1), (case["n"], *shape))
    jax.block_until_ready((params, x))
    rss0 = _rss_bytes()
    fn = ntk.kernel_fn(apply_fn, kind=case["kind"], implementation=case["implementation"])
    first, warm = _time_calls(lambda: jax.block_until_ready(fn(params, x)), case.get("repeats", 5))
    warm_s = float(np.median(warm))
    prep = fn.prepared(params, x, None, {})[0]
    k = prep.proj_KO.shape[0]
    flops = _nominal_flops(prep.implementation, case, k, prep.diag, apply_fn, params, x)
    flops_xla, temp = _xla_stats(fn.lower(params, x).compile())
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    return {
        **case,
        "chosen": prep.implementation,
        "params": int(sum(np.size(a) for a in _leaves(params))),
        "flops_xla": flops_xla,
        "compile_s": max(first - warm_s, 0.0),
        "first_call_s": first,
        "warm_median_s": warm_s,
        "warm_min_s": float(np.min(warm)),
        "flops": flops,
        "gflops_per_s": flops / warm_s / 1e9 if warm_s > 0 else float("nan"),
        "xla_temp_bytes": temp,
        "peak_rss_bytes": _rss_bytes(),
        "peak_rss_increase_bytes": _rss_bytes() - rss0,
        "gpu_peak_bytes": int(stats["peak_bytes_in_use"]) if stats else None,
        "platform": dev.platform,
        "device": dev.device_kind,
    }


def gemm_rate(n: int = 2048, repeats: int = 5) -> dict:
    """Measured float32 ``n³`` matrix-product rate of jax and numpy, in GFLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(mm(a, a))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, a))
        ts.append(time.perf_counter() - t0)
    an = np.asarray(a)
    tn = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        an @ an
        tn.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    return {"jax_gflops": flops / np.median(ts) / 1e9, "numpy_gflops": flops / np.median(tn) / 1e9}


# --- the suite --------------------------------------------------------------------------------

IMPLS = ("jacobian", "ntk_vp", "structured", "auto")
KINDS_BENCHED = ("entk", "pntk", "trace")
# Theory (the cost of each implementation in Novak et al. 2022, "Fast Finite Width Neural
# Tangent Kernel"; FCN of width W, depth L, N inputs, O logits): time exponents in N and W.
THEORY = {
    "jacobian": {"n": "1 -> 2 (NO[FP] + N²O²P)", "width": "2 (P ~ W²)"},
    "ntk_vp": {"n": "2 (N²O[FP])", "width": "2 ([FP] ~ W²)"},
    "structured": {"n": "1 -> 2 (N²LO²W + NLOW²)", "width": "1 -> 2 (N²LO²W + NLOW²)"},
}


# (section, model, N, width) of the cases run for every implementation and kind.
MODEL_CASES = (("anchor", "mlp", 64, 512), ("models", "cnn", 32, 64), ("models", "resnet", 16, 32))


def _case(section, model, n, width, implementation, kind, *, o=10, **extra) -> dict:
    return dict(
        section=section, model=model, n=n, width=width, o=o, implementation=implementation,
        kind=kind, **extra,
    )  # fmt: skip


def suite_cases(quick: bool = False) -> list[dict]:
    """All benchmark cases; ``quick`` keeps the anchor and the two other models only."""
    cases = [
        _case(section, model, n, width, impl, kind)
        for impl in IMPLS
        for kind in KINDS_BENCHED
        for section, model, n, width in MODEL_CASES
    ]
    calls = 50 if quick else 200
    for impl in ("structured", "auto"):  # the anchor MLP pNTK, float32
        cases.append(_case("overhead", "mlp", 64, 512, impl, "pntk", calls=calls))
    if quick:
        return cases
    for impl in ("jacobian", "ntk_vp", "structured"):
        cases += [_case("scale_n", "mlp", n, 512, impl, "entk") for n in (16, 32, 64, 128, 256)]
        widths = (128, 256, 512, 1024, 2048)
        cases += [_case("scale_width", "mlp", 64, w, impl, "entk") for w in widths]
    for impl in ("ntk_vp", "structured"):
        cases += [_case("scale_o", "mlp", 64, 512, impl, "entk", o=o) for o in (1, 3, 10, 30, 100)]
    from ntk_repro.bench_models import real_model_cases

    return cases + real_model_cases()


def _too_big(case: dict) -> str | None:
    """Skips Jacobian contraction where J alone would pass 6 GB, or VP where > ~2e12 FLOPs."""
    w, n, o = case["width"], case["n"], case["o"]
    p = 64 * w + w * w + w * o
    if case["implementation"] == "jacobian" and case["model"] == "mlp" and 4 * n * o * p > 6e9:
        return f"J would hold {4 * n * o * p / 1e9:.1f} GB"
    if case["implementation"] == "ntk_vp" and case["model"] == "mlp" and 6 * n * n * o * p > 2e12:
        return "over the time budget"
    return None


def _run_subprocess(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "ntk_repro.bench", "--one", json.dumps(case)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**case, "skipped": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {**case, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def fit_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def slopes(rows: list[dict]) -> dict:
    out: dict = {}
    for section, var in (("scale_n", "n"), ("scale_width", "width"), ("scale_o", "o")):
        for impl in ("jacobian", "ntk_vp", "structured"):
            pts = [
                (r[var], r["warm_median_s"])
                for r in rows
                if r.get("section") == section
                and r["implementation"] == impl
                and "warm_median_s" in r
            ]
            if len(pts) >= 2:
                pts.sort()
                out.setdefault(impl, {})[var] = {
                    "slope": fit_slope(*zip(*pts, strict=True)),
                    "slope_top_half": fit_slope(*zip(*pts[len(pts) // 2 :], strict=True))
                    if len(pts) >= 4
                    else None,
                    "theory": THEORY.get(impl, {}).get(var, "O: 1 (VP), 1 -> 2 (SD)"),
                }
    return out


def machine_info(repeats: int) -> dict:
    import jax

    dev = jax.devices()[0]
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{os.cpu_count()}-core CPU {cpu}" if dev.platform == "cpu" else dev.device_kind
    return {
        "description": desc,
        "platform": dev.platform,
        "device": dev.device_kind,
        "jax": jax.__version__,
        "repeats": repeats,
        "gemm": gemm_rate(),
    }


def run_suite(
    out_dir: str | Path, *, quick: bool = False, repeats: int = 5, timeout: float = 300.0
) -> dict:
    """Runs every case (each in a subprocess) with a progress bar; writes the outputs."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(repeats)
    rows = []
    cases = suite_cases(quick)
    bar = tqdm(cases, desc="bench", unit="case", dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(
            f"{case['model']} N={case['n']} W={case['width']} O={case['o']} "
            f"{case['implementation']} {case['kind']}"
        )
        why = _too_big(case)
        row = (
            {**case, "skipped": why}
            if why
            else _run_subprocess({**case, "repeats": repeats}, timeout)
        )
        rows.append(row)
    result = {"machine": machine, "rows": rows, "slopes": slopes(rows)}
    atomic.write_json(out / "bench.json", result)
    atomic.write_text(out / "bench.md", markdown(result))
    result["figures"] = plot(result, out)
    from ntk_repro.bench_models import plot_real_models, real_models_markdown

    if any(r.get("section") == "real_models" for r in rows):
        atomic.write_text(out / "bench_models.md", real_models_markdown(rows))
        result["figures"].append(plot_real_models(rows, out))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help="run one case given as JSON and print the JSON row")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(json.loads(args.one))), flush=True)
        return
    result = run_suite(args.out, quick=args.quick, repeats=args.repeats)
    print(markdown(result))


if __name__ == "__main__":
    main()
