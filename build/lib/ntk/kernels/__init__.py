"""Empirical NTK kernels: implementations (registry) and approximations (kinds)."""

from ntk.kernels import structured  # noqa: F401  (registers 'structured')
from ntk.kernels.api import (
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
from ntk.kernels.diagnose import diagnose
from ntk.kernels.implementations import IMPLEMENTATIONS

__all__ = [
    "IMPLEMENTATIONS",
    "KINDS",
    "choose_implementation",
    "diagnose",
    "diagonal_ntk",
    "entk",
    "kernel",
    "kernel_fn",
    "pntk",
    "random_projection_ntk",
    "single_logit_ntk",
    "trace_ntk",
]
