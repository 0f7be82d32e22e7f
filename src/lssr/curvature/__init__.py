"""Curvature primitives of the full training loss L(θ) = (1/n) Σ_i ℓ_i(θ), built on ``torch.func``.

Notation (the paper's): θ ∈ R^m the parameters, g_i = ∇ℓ_i(θ) the per-sample gradients,
∇L = (1/n) Σ_i g_i, H = ∇²L the Hessian of the *full* training loss, ‖H‖ its largest eigenvalue.

Design
------
- Pure functions of ``(params, buffers, x, y)`` made from a module with
  :func:`torch.func.functional_call` (:func:`loss_sum_fn`, :func:`hvp_fn`, :func:`per_sample_grads_fn`,
  :func:`per_sample_jvp_fn`), and one thin wrapper, :class:`LossOperator`, that binds a model, a loss
  and a training set and works on flat parameter vectors (length m).
- Device and dtype come from the parameters (a float64 model gives float64 results; inputs are cast
  to the parameter dtype). Nothing here calls ``.cuda()``.
- Memory chunking is separate from any SGD batch size: a full-loss quantity is accumulated as
  Σ_chunks Σ_{i∈chunk} (...) and divided by n once.
- Hessian-vector products are forward-over-reverse (``jvp`` of ``grad``); several vectors at once go
  through ``vmap`` over the tangents (the primal forward/backward is then shared). Models with an operation
  that lacks a forward-mode derivative use reverse-over-reverse, and those without any second derivative a
  central difference of gradients (``LossOperator(hvp_mode=...)``).
- The parameters are never modified and batch-norm running statistics are never updated: the
  functional calls use detached parameter tensors and refuse a model whose batch-norm layers are in
  train mode (:class:`BatchNormModeError`; the fix for a run is ``bn_mode: eval``), except a
  ``LossOperator(batch_stats=True)``, whose chunks are batches normalised with their own statistics (the loss
  of ``lssr.diagnose(..., bn="batch")``, which keeps the running statistics from updating).

Modules: :mod:`.functions` (the pure functions and the batch-norm guard), :mod:`.operator` (flat vectors and
:class:`LossOperator`), :mod:`.linalg` (Gram–Schmidt with H-images, Rayleigh–Ritz), :mod:`.eigen` (‖H‖) and
:mod:`.modes` (the HVP mode a model supports, the finite-difference step, the memory budget of what is kept).
"""

from .eigen import TopEig, lobpcg_top, random_unit, top_eigenvalue, top_eigenvalue_op
from .functions import (
    BN_FIX,
    BatchNormModeError,
    ForwardAdapter,
    Params,
    batch_norm_in_train_mode,
    check_functional_mode,
    hvp_fn,
    hvp_many_fn,
    hvp_rev_fn,
    loss_sum_fn,
    per_sample_grads_fn,
    per_sample_jvp_fn,
    per_sample_loss_of,
    per_sample_losses_fn,
    split_state,
)
from .linalg import drop_tolerance, orth_against, orthonormal_pairs, orthonormalize, rayleigh_ritz
from .modes import STORE_FRACTION, choose_hvp_mode, default_store_mb, fd_tune, memory_budget, store_limit_mb
from .operator import HVP_MODES, GraphTooLarge, LossOperator, ParamSpace

__all__ = [
    "BN_FIX",
    "BatchNormModeError",
    "ForwardAdapter",
    "HVP_MODES",
    "LossOperator",
    "ParamSpace",
    "Params",
    "TopEig",
    "STORE_FRACTION",
    "batch_norm_in_train_mode",
    "choose_hvp_mode",
    "default_store_mb",
    "fd_tune",
    "memory_budget",
    "store_limit_mb",
    "check_functional_mode",
    "drop_tolerance",
    "hvp_fn",
    "hvp_many_fn",
    "hvp_rev_fn",
    "lobpcg_top",
    "GraphTooLarge",
    "loss_sum_fn",
    "orth_against",
    "orthonormal_pairs",
    "orthonormalize",
    "per_sample_grads_fn",
    "per_sample_jvp_fn",
    "per_sample_loss_of",
    "per_sample_losses_fn",
    "random_unit",
    "rayleigh_ritz",
    "split_state",
    "top_eigenvalue",
    "top_eigenvalue_op",
]
