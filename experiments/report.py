"""Report entry point: ``python experiments/report.py runs_dir=results/runs out_dir=results``.

The same as the console script `ntk-report`."""

from ntk_repro.cli import report

if __name__ == "__main__":
    report()
