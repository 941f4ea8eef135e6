"""ntk_repro: the reproduction of the pNTK approximation study, built on the ``ntk`` library.

The study imports the library, never the reverse. Its parts:

* :mod:`ntk_repro.models`, :mod:`ntk_repro.data`: Flax MLP, CNN and ResNet-18 with a width
  knob; digits, mnist5k, mnist1d, synthetic data, MNIST/CIFAR-10 through TFDS;
* :mod:`ntk_repro.config`: the schemas of the YAML configs in the top-level ``conf/``;
* :mod:`ntk_repro.train`: the one optax loop, its steps and optimisers, Orbax checkpoints;
* :mod:`ntk_repro.analysis`: kernels at a checkpoint (evaluation points, metrics, cost,
  linearised network, layer shares) and ``ntk.approximation_report`` at a run's checkpoints;
* :mod:`ntk_repro.experiment`: a run, training with kernels at every checkpoint; recompute;
* :mod:`ntk_repro.report`: claims C1-C7, their statistics, tables, Markdown and figures;
* :mod:`ntk_repro.loggers`: W&B (offline by default).

The entry points are the Hydra scripts in ``experiments/`` and the ``make`` targets; the
benchmark suite is the separate ``benchmarks`` package.
"""

from ntk_repro.config import register_schemas

register_schemas()
