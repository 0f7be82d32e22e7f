"""The standard error that :func:`lssr.diagnose` reports for tr(H S_1) when its Hessian-vector products are
central differences (``hvp_mode='fd'``, the fallback for models without second derivatives).

Each difference D(ε) = (∇L(θ + εv) − ∇L(θ − εv))/(2ε) carries a truncation and rounding error whose relative size
the call measures on its first chunk, ``Cost.fd_rel_error`` = ‖D(2ε) − D(ε)‖/‖D(ε)‖ (three times the Richardson
estimate of D(ε)'s O(ε²) error, plus the rounding noise of both). tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i is a sum of
quadratic forms in such products, so its error is taken as ``fd_rel_error · |tr(H S_1)|``, and added in quadrature
to the estimator's own standard error (the sketch's jackknife se, 0 for the exact estimator).
"""

from __future__ import annotations

import math


def with_fd_error(se: float, estimate: float, fd_rel_error: float) -> float:
    """sqrt(se² + (fd_rel_error · |estimate|)²): the standard error ``se`` of an estimate of tr(H S_1) made of
    central-difference HVPs, with their measured relative error bound ``fd_rel_error`` counted as one more
    standard error; ``se`` as it is when the HVPs are exact (``fd_rel_error`` NaN)."""
    if not math.isfinite(fd_rel_error) or not math.isfinite(estimate):
        return se
    return math.hypot(se, fd_rel_error * abs(estimate))
