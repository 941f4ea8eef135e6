"""``ntk.approximation_report`` timed end to end (standalone script; writes JSON).

Two cases:

* ``small``: the anchor MLP (64 → 512 → 512 → 10, ReLU, float32; the neural-tangents anchor
  model) on N = 100 points and 50 test points, in memory: the first call (compiles) and the
  warm call (the same report again: nothing compiles);
* ``large``: a CNN (two 3×3 convolutions of width 16, stride 2, ReLU, then a dense readout;
  float32) on N 28×28×1 inputs (default 2,000) and N/4 test points, O = 10, stored block by
  block under a temporary directory (every kind and phase of the stored report: Lanczos for
  λ_max, the out-of-core Cholesky for λ_min and the eNTK's regressions). Its 3·3·16 +
  3·3·16·16 + 784·10 = 10,288 parameters are fewer than N·O = 20,000 at N = 2,000: there
  the eNTK's λ_min is 0 by rank and only its ridge regression is factored; ``--width 32``
  (25,184 parameters) gives a full-rank eNTK, whose λ_min and ridgeless regression are
  factored too. Reported: wall time per phase, the peak RSS of the process, the estimated
  FLOPs of the eNTK kernels (the chosen implementation's estimate per block × blocks) and
  the fraction of this machine's float32 GEMM rate (measured here with numpy) that the eNTK
  phase reached, and for each out-of-core Cholesky factor its FLOPs and the fraction of the
  float64 GEMM rate it reached after its first panel.

Data. ``small`` uses Gaussian inputs and cyclic labels (it times the report, and needs
nothing beyond the library). ``large`` uses real digits by default: the first N training
and N/4 test images of ``mnist5k`` (28×28×1, loaded through ``ntk_repro.data``, which needs
the ``[study]`` extra); ``--data gaussian`` keeps the case free of the study package. This
folder holds benchmarks, not the library: it may import ``ntk_repro`` for data, lazily and
only where real data is asked for.

    python -m benchmarks.approximation OUT_DIR --case small     (make bench)
    python -m benchmarks.approximation OUT_DIR --case large --n 2000 [--width 32]
                                                              (make bench-approx-large)
"""

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import ntk
from benchmarks import harness
from ntk.atomic import write_json
from ntk.kernels.estimates import implementation_estimates


def anchor_mlp(key):
    k = jax.random.split(key, 3)
    sizes = [(64, 512), (512, 512), (512, 10)]
    params = [jax.random.normal(kk, s) / math.sqrt(s[0]) for kk, s in zip(k, sizes, strict=True)]

    def apply_fn(p, x):
        h = jax.nn.relu(x @ p[0])
        h = jax.nn.relu(h @ p[1])
        return h @ p[2]

    return apply_fn, params


def cnn(key, width=16):
    k = jax.random.split(key, 3)
    dn = ("NHWC", "HWIO", "NHWC")
    params = {
        "c1": jax.random.normal(k[0], (3, 3, 1, width)) / 3.0,
        "c2": jax.random.normal(k[1], (3, 3, width, width)) / math.sqrt(9 * width),
        "out": jax.random.normal(k[2], (7 * 7 * width, 10)) / math.sqrt(49 * width),
    }

    def apply_fn(p, x):
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(x, p["c1"], (2, 2), "SAME", dimension_numbers=dn)
        )
        h = jax.nn.relu(
            jax.lax.conv_general_dilated(h, p["c2"], (2, 2), "SAME", dimension_numbers=dn)
        )
        return h.reshape(h.shape[0], -1) @ p["out"]

    return apply_fn, params


def small(n: int = 100) -> dict:
    kp, kx, kt = jax.random.split(jax.random.key(0), 3)
    apply_fn, params = anchor_mlp(kp)
    x, x_test = jax.random.normal(kx, (n, 64)), jax.random.normal(kt, (n // 2, 64))
    y, y_test = np.arange(n) % 10, np.arange(n // 2) % 10
    times, cpu = [], []  # wall and process CPU seconds (CPU: a load-independent check)
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        rep = ntk.approximation_report(apply_fn, params, x, y, x_test=x_test, y_test=y_test)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "case": "small", "model": "anchor MLP 64-512-512-10", "n": n, "n_test": n // 2,
        "first_seconds": times[0], "warm_seconds": times[1], "warm_cpu_seconds": cpu[1],
        "load_average": os.getloadavg(), "peak_rss_bytes": harness.peak_rss_bytes(),
        "report": rep.to_dict(),
    }  # fmt: skip


def large_data(n: int, m: int, data: str):
    """``(x [n, 28, 28, 1], y [n], x_test [m, ...], y_test [m])`` float32 / int."""
    if data == "gaussian":
        kx, kt = jax.random.split(jax.random.key(1))
        x, x_test = jax.random.normal(kx, (n, 28, 28, 1)), jax.random.normal(kt, (m, 28, 28, 1))
        return x, np.arange(n) % 10, x_test, np.arange(m) % 10
    from ntk_repro.data import load_dataset  # real digits: the study package's loader

    ds = load_dataset(data, seed=0)
    if n > len(ds.x_train) or m > len(ds.x_test):
        raise SystemExit(
            f"--n {n}: {data} has {len(ds.x_train)} training and {len(ds.x_test)} test images"
        )
    return ds.x_train[:n], ds.y_train[:n], ds.x_test[:m], ds.y_test[:m]


def large(
    n: int,
    block_size: int,
    data: str = "mnist5k",
    work: Path | None = None,
    progress=True,
    width: int = 16,
) -> dict:
    """The whole report, stored block by block under a temporary directory in ``work``."""
    apply_fn, params = cnn(jax.random.key(0), width)
    m = max(n // 4, 1)
    x, y, x_test, y_test = large_data(n, m, data)
    phases: dict[str, float] = {}
    firsts: dict[str, float] = {}
    steps: dict[str, int] = {}  # blocks or matvecs (store passes) per phase
    t_start = time.perf_counter()

    def on_step(phase, step):  # the times at which each phase first and last made progress
        now = time.perf_counter() - t_start
        if phase not in firsts:
            firsts[phase] = now
            gib = harness.peak_rss_bytes() / 2**30
            print(f"[{now:8.1f} s] {phase} (peak RSS so far {gib:.2f} GiB)", flush=True)
        phases[phase] = now
        steps[phase] = max(steps.get(phase, 0), step)  # CG: train and test operators

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rep = ntk.approximation_report(
            apply_fn, params, x, y, x_test=x_test, y_test=y_test, path=Path(tmp) / "report",
            block_size=block_size, callback=on_step, lanczos_tol=1e-6, cg_tol=1e-6,
            progress=progress,
        )  # fmt: skip
    total = time.perf_counter() - t_start
    b = min(block_size, n)
    xb = x[:b]
    name = rep.entk["implementation"]
    flops_block = implementation_estimates(apply_fn, params, xb, xb, 10, False)[name][0]
    n_blocks = math.ceil(n / b) * (math.ceil(n / b) + 1) // 2 + math.ceil(m / b) * math.ceil(n / b)
    # the eNTK phase: from the start to the end of its test block (the kernels are stored
    # in the order eNTK, eNTK test, then each kind; the first block includes compilation)
    entk_seconds = max(phases.get("kernel entk_test", 0.0), phases.get("kernel entk", 0.0))
    flops = flops_block * n_blocks
    gemm = harness.gemm_rate()
    rate = gemm["numpy_gflops"] * 1e9
    factors = {}  # each out-of-core Cholesky: its FLOPs and rate, timed from its first panel on
    for phase, end in phases.items():
        if phase.startswith("cholesky "):
            starts = [s_ * 10 for s_ in range(0, n, b)] + [n * 10]
            f_all, f_first = cholesky_flops(starts)
            sec = end - firsts[phase]
            factors[phase] = {
                "dim": n * 10, "panels": len(starts) - 1, "flops": f_all,
                "seconds_after_first_panel": sec,
                "float64_gemm_fraction_after_first_panel": (
                    (f_all - f_first) / (sec * gemm["numpy_float64_gflops"] * 1e9) if sec else None
                ),
            }  # fmt: skip
    return {
        "case": "large", "model": f"CNN width {width}, 28x28x1, O=10", "data": data, "n": n,
        "n_params": rep.n_params,
        "n_test": m, "block_size": block_size, "entk_blocks": n_blocks, "seconds": total,
        "phase_first_step_seconds": firsts, "phase_end_seconds": phases,
        "phase_steps": steps,
        "peak_rss_bytes": harness.peak_rss_bytes(), "load_average": os.getloadavg(),
        "entk_flops_estimate": flops,
        "entk_phase_seconds": entk_seconds, "gemm_flops_per_second": rate,
        "gemm_fraction": flops / (entk_seconds * rate) if entk_seconds else None,
        "float64_gemm_flops_per_second": gemm["numpy_float64_gflops"] * 1e9,
        "cholesky": factors,
        "report": rep.to_dict(),
    }  # fmt: skip


def cholesky_flops(starts: list[int]) -> tuple[float, float]:
    """``(all, first panel's)`` FLOPs that :func:`ntk.scale.cholesky.factor` performs with
    panels starting at ``starts`` (``starts[-1] = D``): per panel the left-looking update
    products (the diagonal block in full), the diagonal block's factor and the triangular
    solve below it: ``D³/3`` plus terms in ``D²·w`` for panels of width ``w``."""
    d = starts[-1]
    per = []
    for j, (c, e) in enumerate(zip(starts, starts[1:], strict=False)):
        w = e - c
        update = sum(2.0 * (d - c) * (starts[k + 1] - starts[k]) * w for k in range(j))
        per.append(update + w**3 / 3 + (d - e) * w**2)
    return sum(per), per[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--case", choices=("small", "large"), default="small")
    parser.add_argument("--n", type=int, default=None, help="points (small: 100, large: 2000)")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="large: the CNN's width")
    parser.add_argument(
        "--data", default="mnist5k", help="large case: mnist5k (real digits) or gaussian"
    )
    parser.add_argument("--work", type=Path, default=None, help="large: where the stores go")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument(
        "--out", type=Path, default=None, help="the JSON file (default: in OUT_DIR)"
    )
    args = parser.parse_args()
    if args.case == "small":
        row = small(args.n or 100)
    else:
        row = large(
            args.n or 2000, args.block_size, args.data, args.work, not args.no_progress, args.width
        )
    row.update(jax_version=jax.__version__, backend=jax.default_backend(), dtype="float32")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if args.case == "small" or args.width == 16 else f"_w{args.width}"
    out = args.out or args.out_dir / f"approximation_report_{args.case}_n{row['n']}{tag}.json"
    write_json(out, row)
    seconds = row.get("warm_seconds", row.get("seconds"))
    print(f"{out}: {seconds:.2f} s, peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
