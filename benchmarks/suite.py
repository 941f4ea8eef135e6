"""The benchmark suite of the kernel implementations (``make bench``): numbers, not tests.

Two passes. **Timing**: all implementations of one case (model, N, width, O, kind) run in one
process: each is compiled (its first call timed alone), then they are called in turn for
``rounds`` rounds, so every implementation sees the same machine and the ratios between them
are trustworthy at the ms scale; each reports its minimum and median warm time. **Memory**:
each implementation of each case runs in its own process (compile and one call), so its
peak resident memory is its own; XLA's FLOP count and compiled temporary memory come from
there too. ``run_suite`` writes ``bench.json``, ``bench.md`` and plots.

Run: ``make bench`` (``python -m benchmarks.suite``, Hydra over ``conf/bench.yaml``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.models import MODELS
from benchmarks.tables import markdown, plot
from ntk import atomic

# --- one case -------------------------------------------------------------------------------


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


def _nominal_flops(name, case, k, diag, apply_fn, params, x) -> float:
    """FLOPs of the algorithm by the cost model behind ``auto``. XLA's own count misses custom
    calls (GPU convolutions) and counts loop bodies once, so it is reported apart."""
    from ntk.kernels import IMPLEMENTATIONS
    from ntk.kernels.estimates import forward_flops

    p = int(sum(np.size(a) for a in _leaves(params)))
    fp = forward_flops(apply_fn, params, x)
    ctx = dict(apply_fn=apply_fn, params=params, x1=x, x2=None)
    n = case["n"]
    return IMPLEMENTATIONS[name].cost(n1=n, n2=n, k=k, p=p, fp=fp, diag=diag, **ctx)


def _leaves(tree) -> list:
    import jax

    return jax.tree_util.tree_leaves(tree)


def build(case: dict):
    """``(apply_fn, params, x)`` of a case (float32)."""
    import jax

    if case.get("section") == "real_models":  # Flax transformers, ResNet, scan stacks
        from benchmarks.real_models import build as build_real

        return build_real(case)
    apply_fn, params, shape = MODELS[case["model"]](case["width"], case["o"])
    x = jax.random.normal(jax.random.key(1), (case["n"], *shape))
    return apply_fn, params, x


def run_memory(case: dict) -> dict:
    """One implementation of one case, alone in this process: its first call (compile and
    run), the implementation ``auto`` chose, the nominal and XLA FLOPs, XLA's temporaries
    and the process's peak RSS."""
    import jax

    import ntk

    apply_fn, params, x = build(case)
    jax.block_until_ready((params, x))
    rss0 = harness.peak_rss_bytes()
    fn = ntk.kernel_fn(apply_fn, kind=case["kind"], implementation=case["implementation"])
    first, _ = harness.time_calls(lambda: jax.block_until_ready(fn(params, x)), 0)
    prep = fn.prepared(params, x, None, {})[0]
    flops_xla, temp = harness.xla_stats(fn.lower(params, x).compile())
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    row = {
        **case,
        "chosen": prep.implementation,
        "params": int(sum(np.size(a) for a in _leaves(params))),
        "flops_xla": flops_xla,
        "first_call_s": first,
        "xla_temp_bytes": temp,
        "peak_rss_bytes": harness.peak_rss_bytes(),
        "peak_rss_increase_bytes": harness.peak_rss_bytes() - rss0,
        "gpu_peak_bytes": int(stats["peak_bytes_in_use"]) if stats else None,
        "platform": dev.platform,
        "device": dev.device_kind,
    }
    if case.get("section") == "real_models":
        from benchmarks.real_models import structure

        row.update(structure(apply_fn, params, x, case["kind"]))
    else:
        k = prep.proj_KO.shape[0]
        row["flops"] = _nominal_flops(prep.implementation, case, k, prep.diag, apply_fn, params, x)
    return row


def run_timing(cases: list[dict], rounds: int, max_seconds: float) -> list[dict]:
    """The implementations of one case, timed interleaved in this process (see the module
    doc): per implementation ``warm_min_s``, ``warm_median_s`` and the rounds run."""
    import jax

    import ntk

    apply_fn, params, x = build(cases[0])
    calls = {}
    for case in cases:
        fn = ntk.kernel_fn(apply_fn, kind=case["kind"], implementation=case["implementation"])
        calls[case["implementation"]] = lambda fn=fn: jax.block_until_ready(fn(params, x))
        calls[case["implementation"]]()  # compile
    times = harness.interleave(calls, rounds, max_seconds=max_seconds)
    return [
        {
            "warm_min_s": float(np.min(times[c["implementation"]])),
            "warm_median_s": float(np.median(times[c["implementation"]])),
            "rounds": len(times[c["implementation"]]),
        }
        for c in cases
    ]


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
    from benchmarks.real_models import real_model_cases

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


def _slope(pts) -> float:
    """The log-log slope of ``[(x, y)]`` (the study's fit, one series)."""
    from ntk_repro.report.verdicts import fit_slope

    return fit_slope((0, x, y) for x, y in pts).slope


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
                    "slope": _slope(pts),
                    "slope_top_half": _slope(pts[len(pts) // 2 :]) if len(pts) >= 4 else None,
                    "theory": THEORY.get(impl, {}).get(var, "O: 1 (VP), 1 -> 2 (SD)"),
                }
    return out


def machine_info(rounds: int) -> dict:
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
        "rounds": rounds,
        "gemm": harness.gemm_rate(),
    }


_MODULE = "benchmarks.suite"


def with_timing(row: dict, timing: dict) -> dict:
    """A memory-pass row with its interleaved timing: warm min and median, the compile time
    (first call − warm minimum) and the achieved GFLOP/s (nominal FLOPs / warm median)."""
    out = {**row, **timing, "compile_s": max(row["first_call_s"] - timing["warm_min_s"], 0.0)}
    if "flops" in row:
        out["gflops_per_s"] = row["flops"] / timing["warm_median_s"] / 1e9
    return out


def _group_key(case: dict) -> tuple:
    """Cases timed together: the same model, sizes and kind, every implementation."""
    return tuple(case.get(k) for k in ("section", "model", "vocab", "n", "width", "o", "kind"))


def run_suite(
    out_dir: str | Path,
    *,
    quick: bool = False,
    rounds: int = 15,
    max_group_s: float = 30.0,
    timeout: float = 300.0,
) -> dict:
    """Every case: the memory pass (a process per case), then the timing pass (a process per
    group of implementations, interleaved); writes the outputs, with progress bars."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(rounds)
    cases = suite_cases(quick)
    rows = []
    for case in tqdm(cases, desc="bench memory", unit="case", dynamic_ncols=True):
        why = _too_big(case)
        if why:
            rows.append({**case, "skipped": why})
        elif case["section"] == "overhead":  # interleaved within its own process already
            rows.append(
                {**case, **harness.run_json(_MODULE, ["--overhead", json.dumps(case)], timeout)}
            )
        else:
            rows.append(
                {**case, **harness.run_json(_MODULE, ["--memory", json.dumps(case)], timeout)}
            )
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row["section"] != "overhead" and "first_call_s" in row:
            groups.setdefault(_group_key(row), []).append(i)
    for idx in tqdm(list(groups.values()), desc="bench timing", unit="case", dynamic_ncols=True):
        group = [cases[i] for i in idx]
        arg = json.dumps({"cases": group, "rounds": rounds, "max_seconds": max_group_s})
        res = harness.run_json(_MODULE, ["--timing", arg], timeout)
        for n, i in enumerate(idx):
            if "timings" not in res:
                rows[i]["timing_error"] = res.get("error") or res.get("skipped")
            else:
                rows[i] = with_timing(rows[i], res["timings"][n])
    result = {"machine": machine, "rows": rows, "slopes": slopes(rows)}
    atomic.write_json(out / "bench.json", result)
    atomic.write_text(out / "bench.md", markdown(result))
    result["figures"] = plot(result, out)
    from benchmarks.real_models import plot_real_models, real_models_markdown

    if any(r.get("section") == "real_models" for r in rows):
        atomic.write_text(out / "bench_models.md", real_models_markdown(rows))
        result["figures"].append(plot_real_models(rows, out))
    return result


def _child(argv: list[str]) -> bool:
    """A measuring process's work (``--memory``, ``--timing``, ``--overhead`` JSON)."""
    if len(argv) != 2 or argv[0] not in ("--memory", "--timing", "--overhead"):
        return False
    arg = json.loads(argv[1])
    if argv[0] == "--memory":
        row = run_memory(arg)
    elif argv[0] == "--overhead":
        row = run_overhead_case(arg)
    else:
        row = {"timings": run_timing(arg["cases"], arg["rounds"], arg["max_seconds"])}
    print(json.dumps(row), flush=True)
    return True


def main() -> None:
    """``make bench``: Hydra over ``conf/bench.yaml`` (``quick``, ``rounds``, ``out_dir``)."""
    import hydra
    from omegaconf import DictConfig

    from ntk_repro.config import register_schemas

    register_schemas()  # conf/paths/default.yaml is checked against its schema

    @hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
    def bench(cfg: DictConfig) -> None:
        result = run_suite(
            cfg.out_dir,
            quick=cfg.quick,
            rounds=cfg.rounds,
            max_group_s=cfg.max_group_s,
            timeout=cfg.timeout_s,
        )
        print(markdown(result))

    bench()


if __name__ == "__main__":
    if not _child(sys.argv[1:]):
        main()
