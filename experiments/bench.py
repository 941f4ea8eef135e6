"""Benchmark entry point: ``python experiments/bench.py [quick=true] [out_dir=DIR]``.

The same as the console script `ntk-bench`."""

from ntk_repro.cli import bench

if __name__ == "__main__":
    bench()
