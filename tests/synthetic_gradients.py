"""Per-sample gradients with a known simple noise scale, for tests of B_simple and of LSSR's prediction."""

import math

import numpy as np


def gradients_with(n, d, b_simple, seed=0):
    """n per-sample gradients g_i = μ + e_i with ‖μ‖² = 1 and Σ e_i = 0, (1/n) Σ‖e_i‖² = B_simple: then
    tr S_N = ‖ḡ‖² = 1 and tr S_1 = 1 + B_simple exactly."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, d))
    e -= e.mean(0)
    e *= math.sqrt(b_simple / np.mean((e * e).sum(1)))
    mu = np.zeros(d)
    mu[0] = 1.0
    return mu + e
