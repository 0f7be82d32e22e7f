"""The standard error that :func:`lssr.diagnose` reports for tr(H S_1) when its Hessian-vector products are
central differences (``hvp_mode='fd'``, the fallback for models without second derivatives).

Each difference D_ε(v) = (∇L(θ + εv) − ∇L(θ − εv))/(2ε) carries a truncation and rounding error. The call
measures two bounds of it:

- ``Cost.fd_rel_error`` = ‖D_2ε(v) − D_ε(v)‖/‖D_ε(v)‖ on a random direction and ∇L, the relative error of one
  product, which gives fd_rel_error · |tr(H S_1)| for the estimate;
- :func:`fd_trace_error`: the same Richardson difference taken on the quantity itself, the quadratic forms
  g_iᵀ D(g_i) of the first samples' gradients, whose mean of |g_iᵀ (D_2ε(g_i) − D_ε(g_i))| bounds the error of
  tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i also where the forms cancel (an indefinite H: gᵀHg ≪ ‖g‖‖Hg‖), which the
  relative bound of one product does not.

The larger of the two is added in quadrature to the estimator's own standard error (the sketch's jackknife se,
0 for the exact estimator): :func:`with_fd_error`.
"""

from __future__ import annotations

import math

from ..curvature import LossOperator

#: The samples whose quadratic forms :func:`fd_trace_error` differences (two central differences each).
TRACE_SAMPLES = 4


def fd_trace_error(op: LossOperator, k: int = TRACE_SAMPLES) -> float:
    """(1/k) Σ_{i<k} |g_iᵀ (D_2ε(g_i) − D_ε(g_i))| over the first k samples' gradients g_i, with the operator's
    step (``op.fd_step``, as tuned): an estimate of the bound on the finite-difference error of tr(H S_1) (three
    times the Richardson estimate of D_ε's O(ε²) error, and the rounding of both). Costs 2k HVPs, counted."""
    k = min(k, op.n)
    G = op._per_sample_chunk(*op.take(slice(0, k))).to(op.dtype)
    total = 0.0
    for g in G:
        eps = op.fd_epsilon(g)
        total += abs(float(g @ (op.hvp_fd(g, 2 * eps) - op.hvp_fd(g, eps))))
    op.counts["hvp"] += 2 * k
    return total / k


def with_fd_error(se: float, estimate: float, fd_rel_error: float, trace_error: float = 0.0) -> float:
    """sqrt(se² + max(fd_rel_error · |estimate|, trace_error)²): the standard error ``se`` of an estimate of
    tr(H S_1) made of central-difference HVPs, with the larger of their two measured error bounds counted as one
    more standard error; ``se`` as it is when the HVPs are exact (``fd_rel_error`` NaN)."""
    if not math.isfinite(fd_rel_error) or not math.isfinite(estimate):
        return se
    return math.hypot(se, max(fd_rel_error * abs(estimate), trace_error))
