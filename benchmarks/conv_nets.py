"""The pNTK against the eNTK on conv nets, float32 and float64: the paper's C7 measured on
this library (``make bench``; ``python -m benchmarks.conv_nets OUT_DIR [--quick]``).

Models: the study's CNN (widths 16-128) and ResNet-18 (widths 8-32) at the sizes ``make
reproduce`` uses (its kernels take the N = 50 training and M = 50 held-out points together:
N = 100 points of 28×28 mnist-shaped inputs, in blocks of 50), and two
plain-JAX conv nets written here, not the study's code (two 3×3 convolutions of 96 channels,
2×2 average pool and a dense readout on 64 points of 28×28×1; a strided three-layer net on 64
points of 32×32×3). O = 10, implementation ``auto``.

Per model and dtype, every kind is compiled first (its first call timed alone), then all are
called in turn for ``rounds`` rounds in this process, so their ratios share one machine
state. Per kind: the warm minimum, the compile time (first call − warm minimum), the FLOPs
of the chosen implementation's cost model, the same run's matrix-product rate in that dtype
(jax, 2048³), and the time that rate predicts (FLOPs / rate) beside the measured one; XLA's
count of the bytes the compiled kernel moves over the run's copy rate, and, where the FLOP
prediction is off 2×, which of the two explains it. Per model and dtype: the pNTK's speed-up
over the eNTK beside their FLOP ratio.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from ntk import atomic

KINDS = ("entk", "pntk", "single_logit", "random_projection", "trace")
O = 10


def _plain_conv(dtype, n=64):
    """Two 3×3 SAME convolutions of 96 channels (ReLU), 2×2 average pool, dense readout."""
    import jax

    ks = jax.random.split(jax.random.key(2), 4)
    p = {
        "w1": jax.random.normal(ks[0], (3, 3, 1, 96), dtype) / 3.0,
        "w2": jax.random.normal(ks[1], (3, 3, 96, 96), dtype) / math.sqrt(9 * 96),
        "w3": jax.random.normal(ks[2], (14 * 14 * 96, O), dtype) / math.sqrt(14 * 14 * 96),
    }

    def f(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn)
        )
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(h, p["w2"], (1, 1), "SAME", dimension_numbers=dn)
        )
        h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        return h.reshape(h.shape[0], -1) @ p["w3"]  # fmt: skip

    return f, p, jax.random.normal(ks[3], (n, 28, 28, 1), dtype), {}, None


def _plain_rgb(dtype, n=64):
    """32×32×3: conv 3×3×32 stride 2, conv 3×3×64, conv 3×3×64 stride 2 (tanh), dense."""
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.key(3), 5)
    shapes = [(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 64)]
    p = {
        f"c{i}": jax.random.normal(k, s, dtype)
        for i, (k, s) in enumerate(zip(ks, shapes, strict=False))
    }
    p["out"] = jax.random.normal(ks[3], (8 * 8 * 64, O), dtype)

    def f(p, x):
        h = x
        for i, stride in enumerate((2, 1, 2)):
            w = p[f"c{i}"]
            h = jax.lax.conv_general_dilated(
                h, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            h = jnp.tanh(h / math.sqrt(9 * w.shape[2]))
        h = h.reshape(h.shape[0], -1)
        return h @ p["out"] / math.sqrt(h.shape[-1])

    return f, p, jax.random.normal(ks[4], (n, 32, 32, 3), dtype), {}, None


def _study(name, width, batch):
    def build(dtype, n=100):
        import jax

        from ntk_repro.models import build_model, init_model, kernel_model

        model = build_model(name, num_classes=O, width=width)
        apply_fn, params, kw = kernel_model(
            model, init_model(model, jax.random.key(0), (28, 28, 1))
        )
        cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)  # noqa: E731
        x = jax.random.normal(jax.random.key(1), (n, 28, 28, 1), dtype)
        return apply_fn, cast(params), x, cast(kw), batch  # fmt: skip

    return build


# name -> (dtype -> (apply_fn, params, x, apply kwargs, batch_size)); the study's dtype first
CNN_DT, RESNET_DT = ("float64", "float32"), ("float32", "float64")
MODELS = {
    **{f"study_cnn_w{w}": (_study("cnn", w, 50), CNN_DT) for w in (128, 64, 32, 16)},
    **{f"study_resnet18_w{w}": (_study("resnet18", w, 50), RESNET_DT) for w in (32, 16, 8)},
    "plain_conv96_28x28": (_plain_conv, ("float32", "float64")),
    "plain_conv_rgb_32x32": (_plain_rgb, ("float32", "float64")),
}  # fmt: skip
QUICK = ("study_cnn_w16", "plain_conv_rgb_32x32")


def gemm_rate(dtype, n: int = 2048, repeats: int = 3) -> float:
    """jax's ``n³`` matrix-product rate in ``dtype``, GFLOP/s (median)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(mm(a, a))
    _, t = harness.time_calls(lambda: jax.block_until_ready(mm(a, a)), repeats)
    return 2.0 * n**3 / float(np.median(t)) / 1e9


def copy_rate(dtype, mib: int = 256, repeats: int = 3) -> float:
    """jax's streaming rate in ``dtype``, GB/s of bytes read plus written (``2·a``, median):
    the rate at which the kernels' data movement runs at best."""
    import jax

    a = jax.random.normal(jax.random.key(0), (mib * 2**20 // np.dtype(dtype).itemsize,), dtype)
    scale = jax.jit(lambda u: 2 * u)
    jax.block_until_ready(scale(a))
    _, t = harness.time_calls(lambda: jax.block_until_ready(scale(a)), repeats)
    return 2.0 * a.nbytes / float(np.median(t)) / 1e9


def gap(row) -> str:
    """Why a row's warm time is off the FLOP prediction by more than 2x, from its own
    numbers: per-call overhead (under 0.1 s), or data movement where FLOPs / GEMM rate plus
    XLA's bytes / copy rate come within 2x of the measured time."""
    if row["within_2x"]:
        return ""
    if row["warm_min_s"] < 0.1:
        return "call under 0.1 s: per-operation overhead"
    if math.isnan(row["bytes_s"]):
        return "bytes not counted"
    both = row["predicted_s"] + row["bytes_s"]
    if 0.5 <= row["warm_min_s"] / both <= 2.0:
        return (
            f"data movement: {row['xla_gbytes']:.1f} GB at the copy rate add "
            f"{row['bytes_s']:.2f} s (FLOPs + bytes predict {both:.2f} s)"
        )
    return f"not explained: FLOPs + bytes predict {both:.2f} s"


def _options(kind):
    import jax

    return {"key": jax.random.key(7)} if kind == "random_projection" else {}


# Explicit implementations timed beside ``auto`` (their kind), to check auto's choice
# (within 1.2x of the fastest); NTK-vector products cost N² forward passes here and are left out.
IMPL_CHECK = {"pntk": ("jacobian", "structured")}
IMPL_CHECK_MODELS = ("plain_conv96_28x28", "plain_conv_rgb_32x32", "study_cnn_w32")


def _row(model, dtype, kind, impl, fn, params, x, kw, batch, first):
    from benchmarks.suite import _nominal_flops

    prep = fn.prepared(params, x, None, kw)[0]
    # the cost model sees one block pair; a symmetric kernel of b blocks runs b(b+1)/2
    blocks = math.ceil(x.shape[0] / (batch or x.shape[0]))
    bx = x[: batch or x.shape[0]]
    flops = blocks * (blocks + 1) / 2 * _nominal_flops(
        prep.implementation, {"n": bx.shape[0]}, prep.proj_KO.shape[0], prep.diag,
        _bound(fn.apply_fn, kw), params, bx,
    )  # fmt: skip
    return {"model": model, "dtype": dtype, "kind": kind, "n": x.shape[0], "batch_size": batch,
            "requested": impl, "implementation": prep.implementation, "first_call_s": first,
            "flops": flops}  # fmt: skip


def measure(model: str, dtype: str, rounds: int) -> list[dict]:
    """One row per kind with ``auto``, and per checked implementation (see the module doc)."""
    import jax

    import ntk

    builder, _ = MODELS[model]
    apply_fn, params, x, kw, batch = builder(np.dtype(dtype))
    rate, bandwidth = gemm_rate(dtype), copy_rate(dtype)
    combos = [(kind, "auto") for kind in KINDS]
    if model in IMPL_CHECK_MODELS:
        combos += [(kind, impl) for kind, impls in IMPL_CHECK.items() for impl in impls]
    calls, rows = {}, {}
    for kind, impl in combos:
        fn = ntk.kernel_fn(
            apply_fn, kind=kind, implementation=impl, batch_size=batch, **_options(kind)
        )
        calls[kind, impl] = lambda fn=fn: jax.block_until_ready(fn(params, x, **kw))
        t0 = time.perf_counter()
        calls[kind, impl]()
        first = time.perf_counter() - t0
        rows[kind, impl] = _row(model, dtype, kind, impl, fn, params, x, kw, batch, first)
        rows[kind, impl]["xla_gbytes"] = _bytes_moved(fn, params, x, kw, batch) / 1e9
    times = harness.interleave(calls, rounds)
    for key, row in rows.items():
        warm = float(np.min(times[key]))
        predicted = row["flops"] / (rate * 1e9)
        row.update(
            warm_min_s=warm,
            warm_median_s=float(np.median(times[key])),
            compile_s=max(row["first_call_s"] - warm, 0.0),
            gemm_gflops=rate,
            predicted_s=predicted,
            measured_over_predicted=warm / predicted,
            within_2x=0.5 <= warm / predicted <= 2.0,
            copy_gbs=bandwidth,
            bytes_s=row["xla_gbytes"] / bandwidth,
        )
        row["gap"] = gap(row)
    entk = rows["entk", "auto"]
    for (kind, _), row in rows.items():
        row["speedup_over_entk"] = entk["warm_min_s"] / row["warm_min_s"]
        row["flop_ratio_entk"] = entk["flops"] / row["flops"]
        best = min(r["warm_min_s"] for (k, _), r in rows.items() if k == kind)
        row["over_fastest"] = row["warm_min_s"] / best
    del calls
    gc.collect()
    return list(rows.values())


def _bytes_moved(fn, params, x, kw, batch) -> float:
    """XLA's bytes accessed by the programs the kernel runs: one, or per block pair the
    diagonal (x2 = None) and off-diagonal block programs; NaN if the blocks are uneven."""
    n = x.shape[0]
    if batch is None or batch >= n:
        return harness.xla_bytes_accessed(fn.lower(params, x, **kw).compile())
    if n % batch:
        return float("nan")
    b = n // batch
    diag = harness.xla_bytes_accessed(fn.lower(params, x[:batch], **kw).compile())
    pair = (x[:batch], x[batch : 2 * batch])
    off = harness.xla_bytes_accessed(fn.lower(params, *pair, **kw).compile())
    return b * diag + b * (b - 1) / 2 * off


def _bound(apply_fn, kw):
    """``apply_fn`` with its keyword state bound (the cost model traces ``f(params, x)``)."""
    if not kw:
        return apply_fn
    return lambda p, x: apply_fn(p, x, **kw)


def markdown(rows: list[dict], machine: dict) -> str:
    head = (
        f"Conv nets, eNTK against pNTK and the other kinds (implementation auto, O = {O}); "
        f"{machine['description']}, jax {machine['jax']}. Warm = minimum over interleaved "
        "rounds; predicted = cost-model FLOPs / the run's jax GEMM rate in the dtype; XLA GB "
        "moved = the compiled kernel's bytes accessed (XLA's cost analysis), over the run's "
        "copy rate (jax, 2·a on 256 MiB); gap = why a row is off 2×.\n\n"
        "| model | dtype | N | kind | impl (chosen) | compile s | warm s | speed-up vs eNTK | "
        "FLOP ratio | GFLOPs | GEMM GFLOP/s | predicted s | measured / predicted | "
        "vs fastest impl | XLA GB moved | GB / copy rate s | gap |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['dtype']} | {r['n']} | {r['kind']} | "
        f"{r['requested']} ({r['implementation']}) | "
        f"{r['compile_s']:.2f} | {r['warm_min_s']:.3f} | {r['speedup_over_entk']:.1f}× | "
        f"{r['flop_ratio_entk']:.1f}× | {r['flops'] / 1e9:.1f} | {r['gemm_gflops']:.0f} | "
        f"{r['predicted_s']:.3f} | {r['measured_over_predicted']:.2f}"
        f"{'' if r['within_2x'] else ' (off 2×)'} | {r['over_fastest']:.2f} | "
        f"{r['xla_gbytes']:.1f} | {r['bytes_s']:.3f} | {r['gap']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--quick", action="store_true", help="two models, float32 only")
    parser.add_argument("--models", nargs="*", default=None, choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 rows; every array's dtype is explicit
    from benchmarks.suite import machine_info

    names = args.models or (QUICK if args.quick else list(MODELS))
    rows = []
    for name in names:
        for dtype in MODELS[name][1][: 1 if args.quick else 2]:
            rows += measure(name, dtype, args.rounds)
            print(markdown(rows, {"description": "so far", "jax": jax.__version__}), flush=True)
    machine = machine_info(args.rounds)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "conv_nets.json", {"machine": machine, "rows": rows})
    atomic.write_text(out / "conv_nets.md", markdown(rows, machine))
    print(markdown(rows, machine))


if __name__ == "__main__":
    main()
