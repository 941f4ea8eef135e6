"""Kernels of the study's runs: the evaluation points (:mod:`.evalset`), the metrics at a
checkpoint (:mod:`.quality`, with their cost in :mod:`.cost` and the linearised network in
:mod:`.linearized`), the layers that carry the eNTK (:mod:`.layers`) and
``ntk.approximation_report`` at a run's checkpoints (:mod:`.approximation_runs`)."""
