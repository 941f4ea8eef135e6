"""ntk: fast finite-width neural tangent kernels in JAX.

Public API (see README):

* kernels: :func:`kernel_fn` (build once, call many times), :func:`entk`, :func:`pntk`,
  :func:`kernel` and the approximations
  :func:`trace_ntk`, :func:`diagonal_ntk`, :func:`single_logit_ntk`,
  :func:`random_projection_ntk`; registries :data:`IMPLEMENTATIONS` and :data:`KINDS`.
* metrics: :func:`relative_frobenius_error`, :func:`compare_spectra`, :func:`as_matrix`,
  :func:`kron_identity`.
* regression: :func:`kernel_regression`, :func:`linearized_prediction`, :func:`accuracy`.
* adapters: :func:`from_equinox`, :func:`from_linen`, :func:`from_nnx`, :func:`from_train_state`.
* scale: :func:`stream_kernel` (blocked, on disk, resumable), :func:`sharded_kernel`
  (rows over all devices), :mod:`ntk.implicit` (matvecs, Lanczos, CG).
* many workers: :func:`store_kernel` (chunked zarr store, one chunk per block, any number of
  writers), :func:`open_kernel` (lazy reads), :func:`distribute_kernel` (submitit jobs).

The reproduction of the pNTK study (models, data, training, report) is the separate package
``ntk_repro``, which imports this library; the library never imports it.
"""

from ntk import implicit  # noqa: E402  (entk_matvec, extreme_eigenvalues, cg_kernel_regression)
from ntk.adapters import from_equinox, from_linen, from_nnx, from_train_state
from ntk.kernels import (
    IMPLEMENTATIONS,
    KINDS,
    choose_implementation,
    diagonal_ntk,
    entk,
    kernel,
    kernel_fn,
    pntk,
    random_projection_ntk,
    single_logit_ntk,
    trace_ntk,
)
from ntk.metrics import as_matrix, compare_spectra, kron_identity, relative_frobenius_error
from ntk.regression import accuracy, kernel_regression, linearized_prediction
from ntk.sharding import sharded_kernel
from ntk.store import StoredKernel, open_kernel, store_kernel
from ntk.stream import stream_kernel
from ntk.workers import distribute_kernel

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATIONS",
    "KINDS",
    "accuracy",
    "as_matrix",
    "choose_implementation",
    "compare_spectra",
    "diagonal_ntk",
    "entk",
    "from_equinox",
    "from_linen",
    "from_nnx",
    "from_train_state",
    "kernel",
    "kernel_fn",
    "kernel_regression",
    "kron_identity",
    "linearized_prediction",
    "pntk",
    "random_projection_ntk",
    "relative_frobenius_error",
    "sharded_kernel",
    "stream_kernel",
    "implicit",
    "single_logit_ntk",
    "trace_ntk",
    "StoredKernel",
    "distribute_kernel",
    "open_kernel",
    "store_kernel",
]
