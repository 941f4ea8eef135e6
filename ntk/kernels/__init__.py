"""Empirical NTK kernels: implementations (registry) and approximations (kinds)."""

from ntk.kernels.api import (
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
from ntk.kernels.estimates import choose_implementation
from ntk.kernels.implementations import IMPLEMENTATIONS
from ntk.kernels.kinds import KINDS
from ntk.kernels.structured import kernel as _structured  # noqa: F401  (registers "structured")

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
