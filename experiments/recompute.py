"""Recompute kernel metrics from saved checkpoints: ``python experiments/recompute.py
run_dir=RUN`` writes ``RUN/recomputed.jsonl``.

The same as the console script `ntk-recompute`."""

from ntk_repro.cli import recompute

if __name__ == "__main__":
    recompute()
