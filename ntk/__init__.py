"""ntk: fast finite-width neural tangent kernels in JAX.

Public API (see README):

* kernels: :func:`kernel_fn` (build once, call many times), :func:`entk`, :func:`pntk`,
  :func:`kernel` and the approximations
  :func:`trace_ntk`, :func:`diagonal_ntk`, :func:`single_logit_ntk`,
  :func:`random_projection_ntk`; registries :data:`IMPLEMENTATIONS` and :data:`KINDS`.
* metrics: :func:`relative_frobenius_error`, :func:`compare_spectra`, :func:`as_matrix`,
  :func:`kron_identity`.
* regression: :func:`kernel_regression`, :func:`linearized_prediction`, :func:`accuracy`.
* look-ahead active learning: :func:`lookahead` (any model, through its kernel function),
  :func:`lookahead_from_kernels` (precomputed kernels), :class:`LookAhead` (scores, query).
* is an approximation good enough for my model: :func:`approximation_report` (every kind
  against the eNTK: errors, spectra, regression, cost, readout facts; in memory or stored).
* adapters: :func:`from_equinox`, :func:`from_linen`, :func:`from_nnx`, :func:`from_train_state`.
* scale: :func:`stream_kernel` (blocked, on disk, resumable), :func:`sharded_kernel`
  (rows over all devices), :mod:`ntk.implicit` (matvecs, Lanczos, CG).
* helpers (import them by module): :mod:`ntk.atomic` (atomic file writes), :mod:`ntk.checks`
  (argument checks).
* many workers: :func:`store_kernel` (chunked zarr store, one chunk per block, any number of
  writers), :func:`open_kernel` (lazy reads), :func:`distribute_kernel` (submitit jobs).

The reproduction of the pNTK study (models, data, training, report) is the separate package
``ntk_repro``, which imports this library; the library never imports it.
"""

from ntk import implicit  # entk_matvec, extreme_eigenvalues, cg_kernel_regression
from ntk.adapters import from_equinox, from_linen, from_nnx, from_train_state
from ntk.approximation import ApproximationReport, approximation_report
from ntk.kernels import *  # noqa: F403  (the kernels' API, listed once in ntk.kernels.__all__)
from ntk.kernels import __all__ as _kernels_all
from ntk.lookahead import LookAhead, lookahead, lookahead_from_kernels
from ntk.metrics import as_matrix, compare_spectra, kron_identity, relative_frobenius_error
from ntk.regression import accuracy, kernel_regression, linearized_prediction
from ntk.scale.sharding import sharded_kernel
from ntk.scale.store_read import StoredKernel, open_kernel
from ntk.scale.store_write import store_kernel
from ntk.scale.stream import stream_kernel
from ntk.scale.workers import distribute_kernel

__version__ = "0.1.0"

__all__ = [
    *_kernels_all,
    "ApproximationReport",
    "accuracy",
    "approximation_report",
    "as_matrix",
    "compare_spectra",
    "from_equinox",
    "from_linen",
    "from_nnx",
    "from_train_state",
    "kernel_regression",
    "kron_identity",
    "linearized_prediction",
    "LookAhead",
    "lookahead",
    "lookahead_from_kernels",
    "relative_frobenius_error",
    "sharded_kernel",
    "stream_kernel",
    "implicit",
    "StoredKernel",
    "distribute_kernel",
    "open_kernel",
    "store_kernel",
]
