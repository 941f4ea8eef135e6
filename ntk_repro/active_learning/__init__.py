"""Look-ahead active learning (the pNTK's own application) as a study experiment.

* :mod:`~ntk_repro.active_learning.strategies`: the query strategies by name (look-ahead with
  the pNTK and the eNTK through :func:`ntk.lookahead`, random, entropy, margin).
* :mod:`~ntk_repro.active_learning.rounds`: the rounds: initial training, query, warm-started
  retrain, test accuracy, checkpoints.
* :mod:`~ntk_repro.active_learning.claim`: C8, the look-ahead against actual retraining.
* :mod:`~ntk_repro.active_learning.report`: summary.json, report.md and the figure.
* :mod:`~ntk_repro.active_learning.run`: the whole study from ``conf/active_learning.yaml``.
"""
