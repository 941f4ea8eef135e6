"""Baseline timings of neural-tangents' empirical NTK on this machine (standalone script).

Times ``nt.empirical_ntk_fn(f, trace_axes=..., vmap_axes=0, implementation=...)`` under
``jax.jit`` in float32 for the three neural-tangents implementations

    1 = JACOBIAN_CONTRACTION, 2 = NTK_VECTOR_PRODUCTS, 3 = STRUCTURED_DERIVATIVES

and three outputs

    full   trace_axes=()     -> [N, N, O, O]   (full empirical NTK)
    trace  trace_axes=(-1,)  -> [N, N]         (mean over the logit axis)
    pntk   NTK of g(p, x) = sum(f(p, x), -1) / sqrt(O), trace_axes=() -> [N, N, 1, 1]

for three hand-written plain-JAX models (the same apply functions, parameters and inputs as
``ntk/bench.py``, duplicated here so this script imports nothing from the project):

    mlp  3-layer ReLU MLP 64 -> 512 -> 512 -> 10, N = 64
    cnn  conv3x3(64) -> relu -> conv3x3(64) -> relu -> avgpool 2x2 -> dense(10), 8x8x1, N = 32
    conv96  conv3x3(96) -> relu -> conv3x3(96) -> relu -> avgpool 2x2 -> dense(10), 28x28x1,
            N = 64, no biases (``plain_conv96_28x28`` of ``benchmarks/conv_nets.py``)

NTK parameterisation: weights ~ N(0, 1) from ``jax.random.key(0)`` (split per layer), biases
zero, every layer ``x @ W / sqrt(fan_in) + b`` (convs divide by sqrt(kh * kw * c_in)); inputs
~ N(0, 1) from ``jax.random.key(1)``; ``x2 = None`` (x2 = x1).

Each (model, implementation, output) runs in its own subprocess, so ``peak_rss_bytes``
(``ru_maxrss``) belongs to that one measurement. The parent kills a child whose resident set
goes over ``--max-rss-gb`` or that runs past ``--timeout-s``, and records the row as skipped
with the reason; a child whose first call alone exceeds ``--max-first-s`` skips its warm runs.

neural-tangents 0.6.x needs jax <= 0.4.25. Environment that works (see the report)::

    python3 -m venv /tmp/ntbase/venv
    /tmp/ntbase/venv/bin/pip install jax==0.4.25 jaxlib==0.4.25 numpy==1.26.4 "scipy<1.13" \
        tensorflow==2.16.2 tf2jax==0.3.6 neural-tangents==0.6.5

Run::

    /tmp/ntbase/venv/bin/python benchmarks/nt_baseline.py --out /tmp/nt_baseline.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# neural-tangents imports tensorflow (via its experimental TF bridge) at import time; keep
# TF quiet and off any accelerator. Set before any import of jax / tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

MODELS = ("mlp", "cnn", "conv96")
IMPLEMENTATIONS = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}
OUTPUTS = ("full", "trace", "pntk")


# --- models (plain jax.numpy, NTK parameterisation, biases) -----------------------------


def make_mlp():
    """64 -> 512 -> 512 -> 10 ReLU MLP; returns (apply_fn, params, x) with N = 64."""
    import jax
    import jax.numpy as jnp

    dims = [64, 512, 512, 10]
    keys = jax.random.split(jax.random.key(0), len(dims) - 1)
    params = [
        {"w": jax.random.normal(k, (a, b), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
        for k, a, b in zip(keys, dims[:-1], dims[1:], strict=True)
    ]

    def apply_fn(p, x):
        for i, layer in enumerate(p):
            x = x @ layer["w"] / math.sqrt(x.shape[-1]) + layer["b"][None]
            if i < len(p) - 1:
                x = jax.nn.relu(x)
        return x

    x = jax.random.normal(jax.random.key(1), (64, 64), jnp.float32)
    return apply_fn, params, x


def _conv(x, w, b):
    """3x3 SAME conv, NHWC / HWIO, scaled by 1/sqrt(fan_in), plus bias."""
    import jax

    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y / math.sqrt(w.shape[0] * w.shape[1] * w.shape[2]) + b[None, None, None]


def make_cnn():
    """conv3x3(64) -> relu -> conv3x3(64) -> relu -> avgpool 2 -> dense(10); N = 32, 8x8x1."""
    import jax
    import jax.numpy as jnp

    width, o, side = 64, 10, 8
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

    x = jax.random.normal(jax.random.key(1), (32, side, side, 1), jnp.float32)
    return apply_fn, params, x


def make_conv96():
    """``plain_conv96_28x28`` of ``benchmarks/conv_nets.py`` (same weights, inputs, float32):
    conv3x3(96) -> relu -> conv3x3(96) -> relu -> avgpool 2 -> dense(10), no biases; N = 64,
    28x28x1. Written again here so that this script imports nothing from the project."""
    import jax

    ks = jax.random.split(jax.random.key(2), 4)
    p = {
        "w1": jax.random.normal(ks[0], (3, 3, 1, 96), "float32") / 3.0,
        "w2": jax.random.normal(ks[1], (3, 3, 96, 96), "float32") / math.sqrt(9 * 96),
        "w3": jax.random.normal(ks[2], (14 * 14 * 96, 10), "float32") / math.sqrt(14 * 14 * 96),
    }

    def apply_fn(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        conv = jax.lax.conv_general_dilated
        h = jax.nn.relu(conv(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn))
        h = jax.nn.relu(conv(h, p["w2"], (1, 1), "SAME", dimension_numbers=dn))
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        return h.reshape(h.shape[0], -1) @ p["w3"]

    return apply_fn, p, jax.random.normal(ks[3], (64, 28, 28, 1), "float32")


MODEL_FNS = {"mlp": make_mlp, "cnn": make_cnn, "conv96": make_conv96}


# --- one measurement (runs in a child process) ------------------------------------------


def run_one(model: str, impl: int, output: str, repeats: int, max_first_s: float) -> dict:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    import numpy as np

    apply_fn, params, x = MODEL_FNS[model]()
    o = jax.eval_shape(apply_fn, params, x).shape[-1]

    if output == "pntk":
        # pNTK: NTK of the summed logits, scaled so that it is the mean over the O x O block.
        def f(p, x_):
            return jnp.sum(apply_fn(p, x_), axis=-1, keepdims=True) / math.sqrt(o)

        trace_axes = ()
    else:
        f = apply_fn
        trace_axes = () if output == "full" else (-1,)

    ntk_fn = jax.jit(
        nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=impl)
    )
    jax.block_until_ready((params, x))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def call():
        return jax.block_until_ready(ntk_fn(x, None, params))

    t0 = time.perf_counter()
    k = call()
    first = time.perf_counter() - t0

    row = {
        "compile_plus_first_s": first,
        "out_shape": list(k.shape),
        # Cheap fingerprints of the kernel so other libraries can be checked against it.
        "frobenius_norm": float(jnp.linalg.norm(k.reshape(-1))),
        "trace_00": float(k.reshape(k.shape[0], k.shape[1], -1)[0, 0].sum()),
    }
    if first > max_first_s:
        row.update(warm_median_s=None, skipped=f"first call {first:.1f}s > {max_first_s}s")
    else:
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            warm.append(time.perf_counter() - t0)
        row.update(
            warm_median_s=statistics.median(warm),
            warm_min_s=min(warm),
            warm_all_s=warm,
        )
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row["rss_before_call_bytes"] = rss_before
    row["params"] = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
    return row


# --- parent: one subprocess per measurement, with an RSS / wall-clock watchdog -----------


def _child_rss(pid: int) -> int:
    """Current resident set of ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _system_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 2.0) -> float:
    """Waits (up to ``max_wait_s``) until other processes use < ``threshold`` cores.

    The machine may be shared; this keeps measurements from starting under load. Returns the
    last measured load (cores busy over a ``window_s`` window).
    """
    t0 = time.perf_counter()
    while True:
        b0 = _system_busy_s()
        time.sleep(window_s)
        load = (_system_busy_s() - b0) / window_s
        if load < threshold or time.perf_counter() - t0 > max_wait_s:
            return load


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def spawn(model: str, impl: int, output: str, args) -> dict:
    """Runs one measurement in a child; adds how busy the rest of the machine was meanwhile."""
    busy0, own0, t0 = _system_busy_s(), _children_cpu_s(), time.perf_counter()
    row = _spawn(model, impl, output, args)
    wall = time.perf_counter() - t0
    # CPU time used by *other* processes while the child ran (the parent's own polling is
    # negligible). Divided by wall time: ~0 = quiet machine, ~1 = one core taken by others.
    other = max(_system_busy_s() - busy0 - (_children_cpu_s() - own0), 0.0)
    row.update(child_wall_s=wall, other_procs_cores=other / wall if wall > 0 else None)
    return row


def _spawn(model: str, impl: int, output: str, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--model",
        model,
        "--impl",
        str(impl),
        "--output",
        output,
        "--repeats",
        str(args.repeats),
        "--max-first-s",
        str(args.max_first_s),
    ]
    limit = args.max_rss_gb * 1e9
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, reason = 0, None
    while proc.poll() is None:
        peak = max(peak, _child_rss(proc.pid))
        if peak > limit:
            reason = f"RSS {peak / 1e9:.1f} GB > {args.max_rss_gb} GB"
        elif time.perf_counter() - t0 > args.timeout_s:
            reason = f"wall clock > {args.timeout_s}s"
        if reason:
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    if reason is None and proc.returncode != 0:
        last = err.strip().splitlines()[-1][:300] if err.strip() else ""
        reason = f"exit {proc.returncode}: {last}"
    if reason is not None:
        return {
            "skipped": reason,
            "compile_plus_first_s": None,
            "warm_median_s": None,
            "peak_rss_bytes": peak or None,
        }
    return json.loads(out.strip().splitlines()[-1])


def machine_info() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    # Query in a child too, so the parent never imports tensorflow / jax itself.
    code = (
        "import json, jax, jaxlib, numpy, neural_tangents as nt; print(json.dumps({"
        "'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'numpy': numpy.__version__,"
        "'neural_tangents': nt.__version__, 'backend': jax.default_backend()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="nt_baseline.json")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument(
        "--impls", nargs="+", type=int, default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS)
    )
    ap.add_argument("--outputs", nargs="+", default=list(OUTPUTS), choices=OUTPUTS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-rss-gb", type=float, default=8.0)
    ap.add_argument("--max-first-s", type=float, default=120.0)
    ap.add_argument(
        "--wait-quiet-s",
        type=float,
        default=0.0,
        help="before each measurement wait up to this long for an idle machine",
    )
    ap.add_argument(
        "--timeout-s",
        type=float,
        default=300.0,
        help="per-subprocess wall clock (import + compile + warm runs)",
    )
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--impl", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        row = run_one(args.model, args.impl, args.output, args.repeats, args.max_first_s)
        print(json.dumps(row))
        return

    result = {
        "versions": versions(),
        "machine": machine_info(),
        "settings": {
            "dtype": "float32",
            "jit": True,
            "vmap_axes": 0,
            "x2": None,
            "repeats": args.repeats,
            "max_rss_gb": args.max_rss_gb,
            "max_first_s": args.max_first_s,
            "timeout_s": args.timeout_s,
            "wait_quiet_s": args.wait_quiet_s,
        },
        "rows": [],
    }
    print(json.dumps(result["versions"]), file=sys.stderr)
    for model in args.models:
        for impl in args.impls:
            for output in args.outputs:
                if args.wait_quiet_s > 0:
                    wait_quiet(args.wait_quiet_s)
                load = os.getloadavg()[0]
                row = {
                    "model": model,
                    "implementation": impl,
                    "implementation_name": IMPLEMENTATIONS[impl],
                    "output": output,
                    "loadavg_1min_before": load,
                    **spawn(model, impl, output, args),
                }
                result["rows"].append(row)
                warm = row.get("warm_median_s")
                first = row.get("compile_plus_first_s")
                rss = row.get("peak_rss_bytes")
                print(
                    f"{model:4s} {IMPLEMENTATIONS[impl]:24s} {output:6s} "
                    f"first={first if first is None else f'{first:.3f}s'} "
                    f"warm={warm if warm is None else f'{warm * 1e3:.2f}ms'} "
                    f"rss={rss if rss is None else f'{rss / 2**20:.0f}MiB'} "
                    f"others={row['other_procs_cores']:.2f}cores {row.get('skipped') or ''}",
                    file=sys.stderr,
                )
                with open(args.out, "w") as fh:  # rewrite after every row: partial results survive
                    json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
