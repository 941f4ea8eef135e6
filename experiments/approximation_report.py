"""``ntk.approximation_report`` for a study run at its checkpoints: ``python
experiments/approximation_report.py run_dir=RUN [epochs=[0,5]] [n_per_class=N]`` writes
``RUN/approximation_report_epoch<E>.json``; ``-m run_dir=A,B`` sweeps over runs.

The same as the console script `ntk-approximation-report`."""

from ntk_repro.cli import approximation_report

if __name__ == "__main__":
    approximation_report()
