"""``ntk.approximation_report``: is the pNTK (or another cheap kernel) good enough for *this*
model on *these* points?

Every approximation kind is compared with the full eNTK Θ on the user's points:

* **relative Frobenius error** ``‖Θ − Ã‖_F / ‖Θ‖_F``, where Ã is the approximation as an
  ``NO × NO`` matrix: ``A ⊗ I_O`` for the ``[N, N]`` kinds (pnTK, trace, single logit,
  random projection) and, for ``diagonal`` ``[N, N, O]``, the block-diagonal matrix with
  ``Ã[n, m, o, o'] = D[n, m, o]·δ_oo'`` (Θ with its cross-output entries dropped: the
  kernel of O independent outputs, each with its own N × N kernel ``D[..., o]``);
* **spectra**: λ_max, λ_min and condition numbers of Θ and of Ã (``A``'s eigenvalues each O
  times; for ``diagonal`` the union of the eigenvalues of the O kernels ``D[..., o]``);
* with labels, **kernel regression** ``K*(K + ridge·mean(diag K)·I)⁻¹ Y`` on the test points,
  ridgeless and with a ridge (relative to each kernel's own mean diagonal, as
  :func:`ntk.kernel_regression`): Θ solves one NO × NO system; an ``[N, N]`` kind one N × N
  system for all outputs; ``diagonal`` one N × N system per output;
* **cost**: warm time and XLA's compiled memory of each kind and of the eNTK, and the
  implementation ``auto`` chose;
* **model facts**: O, the parameter count, the readout layer's width (the contraction size
  of the last ``dot_general`` between a parameter and the data, found on the jaxpr by walking
  back from the output through bias adds, scalings, reshapes and slices; None when the path
  meets anything else) and the readout's share of Θ, ``tr Θ_readout / tr Θ`` over the N
  points (``Θ_readout``: the eNTK of the readout's parameter leaves alone; with tied
  embeddings that leaf's input use counts too).

Two ways to compute, same definitions:

* **in memory** (``path=None``): the kernels of ``Z = X ∪ X*`` in one call per kind, exact
  eigenvalues, direct solves (one ``eigh`` per kernel serves its spectrum and every ridge).
  If that would exceed the memory budget, a ``ValueError`` asks for ``path``.
* **stored** (``path=DIR``): every kernel is computed block by block into a chunked store
  (:func:`ntk.store_kernel`) under ``DIR/kernels/``; the NO × NO eNTK is never in memory.
  Frobenius terms accumulate over blocks (``‖Θ − Ã‖²_F = Σ_blocks``, off-diagonal blocks of
  the symmetric kernels counted twice). λ_max comes from Lanczos on the stored operator. For
  λ_min and the eNTK's regressions, ``Θ (+ ridge)`` is factored by an out-of-core Cholesky
  (:mod:`ntk.scale.cholesky`: panels on disk under ``DIR/factors/``, two in memory, ``D³/3``
  FLOPs for ``D = N·O``): λ_min is the reciprocal of the largest eigenvalue of
  ``Θ⁻¹`` (Lanczos on the factor's solves; clustered small eigenvalues of Θ are well
  separated there), and each regression is one exact solve. ``N × N`` kinds (and
  ``diagonal``'s O kernels) that fit the memory budget four times over are read whole and
  decomposed exactly as in memory; larger ones use the operator (Lanczos, conjugate
  gradients). Each finished phase is saved under ``DIR/phases/`` (atomically; the factor
  panel by panel), so a killed call repeated with the same arguments resumes where it
  stopped; ``DIR/report_meta.json`` refuses a resume with other inputs. The factors are
  deleted when the report is done.

**Rank.** Each kernel is a sum of Gram matrices ``J Jᵀ`` of Jacobians with P columns (P the
parameter count), so where ``P`` (times the number of Gram matrices) is below its
dimension, its smallest eigenvalues are 0 exactly: both modes report λ_min = 0 (cond = ∞)
with a note, and in memory those eigenvalues are cut off in the ridgeless solve. A stored
rank-deficient eNTK has no ridgeless regression (the note says so); its ridge regression is
exact. A stored eNTK that is not positive definite in float64 (a Cholesky pivot fails) is
reported the same way: λ_min = 0 with the factor's message. Every eigenvalue is that of the
kernel as computed in the model's dtype: for a float32 model, λ_min of a kernel whose
condition number nears ``1/ε₃₂ ≈ 10⁷`` and beyond carries that kernel's round-off
(recompute in float64 to tell).

**Layout.** One module per part: :mod:`~ntk.approximation.report` (the entry point),
:mod:`~ntk.approximation.inputs` (checks, targets, the checked inputs),
:mod:`~ntk.approximation.cost` (timing, compiled memory), :mod:`~ntk.approximation.model_facts`
(readout width and share), :mod:`~ntk.approximation.compare` (a kind's embedding, rank, exact
spectra and solves), :mod:`~ntk.approximation.in_memory`, the stored mode in
:mod:`~ntk.approximation.stored` (its phases in order), :mod:`~ntk.approximation.stores`,
:mod:`~ntk.approximation.stored_solve` and :mod:`~ntk.approximation.resume`,
:mod:`~ntk.approximation.assemble` (the report from either mode's numbers) and
:mod:`~ntk.approximation.result` (the report, its table, JSON and figure).
"""

from ntk.approximation.inputs import DEFAULT_KINDS
from ntk.approximation.report import approximation_report
from ntk.approximation.result import ApproximationReport, KindReport

__all__ = ["DEFAULT_KINDS", "ApproximationReport", "KindReport", "approximation_report"]
