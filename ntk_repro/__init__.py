"""ntk_repro: the reproduction of the pNTK approximation study, built on the ``ntk`` library.

The study imports the library, never the reverse. Modules:

* :mod:`ntk_repro.models`: Flax MLP, CNN and ResNet-18 with a width knob;
* :mod:`ntk_repro.data`: digits, mnist1d, synthetic data, MNIST/CIFAR-10 through TFDS;
* :mod:`ntk_repro.train.loop`: the one optax loop, with Orbax checkpoints
  (:mod:`ntk_repro.train.checkpoint`) and resume;
* :mod:`ntk_repro.analysis`: eNTK vs pNTK metrics at one checkpoint;
* :mod:`ntk_repro.experiment`: train with kernels at every checkpoint, or recompute them;
* :mod:`ntk_repro.report.build`, :mod:`ntk_repro.report.figures`, :mod:`ntk_repro.loggers`: the
  report, its figures and W&B;
* :mod:`benchmarks.suite`: the benchmark suite of the kernel implementations.

The entry points are the Hydra scripts in ``experiments/`` and the ``make`` targets.
"""

from ntk_repro.config import register_schemas

register_schemas()
