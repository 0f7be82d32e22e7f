"""Learning-rate scaling rules in the paper's symbols, and fits of best-η-per-b to them.

Symbols: n training samples, b the batch size, η the learning rate,
γ_{n,b} = (n − b)/(n − 1) for batches drawn without replacement and γ_{n,b} = 1 with replacement,
ρ = ρ_1 = tr(S_n)/tr(S_1) and, by eq. (12),

    ρ_b = tr(S_n)/tr(S_b) = 1 / ( (γ_{n,b}/b)/ρ + 1 − γ_{n,b}/b ),

which is ≈ bρ/γ_{n,b} ≈ bρ for small b (linear regime) and saturates to 1 for large b.

Rules (η as a function of b, up to a constant c):
- LSR  (linear scaling rule):            η = c·b
- SRSR (square-root scaling rule):       η = c·√b
- LSSR (linear and saturation rule):     η = c·ρ_b(ρ)
- constant η (the baseline C5 adds):      η = c

and the stability threshold of ``torch.optim.SGD`` (:func:`sgd_threshold`: 2/η without momentum).

The fits are least squares in log space (log2 η), the natural scale of a learning-rate grid of
powers of two; RMSE is reported in log2 units (1.0 = off by a factor of 2 on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import LssrError

ArrayLike = "float | int | np.ndarray | list"


def gamma(n: int, b, replacement: bool = False) -> np.ndarray | float:
    """γ_{n,b}: (n − b)/(n − 1) without replacement (γ_{n,1} = 1, γ_{n,n} = 0), 1 with replacement.

    For n = 1 (only b = 1 possible) γ is 0 without replacement: the single batch is the full set.
    """
    b_arr = np.asarray(b, dtype=float)
    if np.any(b_arr < 1):
        raise LssrError(f"gamma: batch sizes must be >= 1, got {b!r}")
    if replacement:
        out = np.ones_like(b_arr)
    else:
        if np.any(b_arr > n):
            raise LssrError(f"gamma: without replacement the batch size must satisfy b <= n = {n}, got {b!r}")
        out = np.zeros_like(b_arr) if n == 1 else (n - b_arr) / (n - 1)
    return float(out) if out.ndim == 0 else out


def batch_weight(n: int, b, replacement: bool = False):
    """γ_{n,b}/b, the weight of S_1 in S_b = (γ/b) S_1 + (1 − γ/b) S_n."""
    return gamma(n, b, replacement) / np.asarray(b, dtype=float) if np.ndim(b) else gamma(n, b, replacement) / float(b)


def trace_b(trace_1, trace_n, n: int, b, replacement: bool = False):
    """Identity (1) on a trace: tr(A S_b) = (γ_{n,b}/b) tr(A S_1) + (1 − γ_{n,b}/b) tr(A S_n).

    With A = I it gives tr(S_b) from tr S_1 and tr S_n; with A = H, tr(H S_b) from tr(H S_1) and
    tr(H S_n). Works on floats and on pandas / numpy columns alike.
    """
    w = batch_weight(n, b, replacement)
    return w * trace_1 + (1.0 - w) * trace_n


def _ratio(num, den):
    """num / den; a scalar 0 denominator gives NaN (array and column inputs divide elementwise)."""
    if np.ndim(num) == 0 and np.ndim(den) == 0 and not hasattr(den, "index"):
        return num / den if den != 0 else math.nan
    return num / den


def concentration(tr_S_n, tr_S_b):
    """ρ_b = tr(S_n)/tr(S_b) (eq. 12's definition): how concentrated the batch gradients are."""
    return _ratio(tr_S_n, tr_S_b)


def interaction_aware_sharpness(tr_HS_b, tr_S_b):
    """‖H‖_{S_b} = tr(H S_b)/tr(S_b), the sharpness seen by the batch-gradient distribution."""
    return _ratio(tr_HS_b, tr_S_b)


def instability_ratio(tr_HS_b, tr_S_n):
    """tr(H S_b)/tr(S_n): one SGD step increases the loss in expectation when this exceeds 2/η."""
    return _ratio(tr_HS_b, tr_S_n)


def sgd_threshold(lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False) -> float:
    """The largest curvature λ for which ``torch.optim.SGD`` is stable on the quadratic ½λθ²: 2/η without
    momentum; (2 + 2β)/(η(1 − τ)) with heavy-ball momentum β and dampening τ; (2 + 2β)/(η(1 + 2β)) with
    Nesterov momentum (torch's form; it allows no dampening). NaN when η ≤ 0 or τ = 1. A step raises the loss
    in expectation when the instability ratio tr(H S_b)/tr S_n exceeds it."""
    if not lr > 0 or dampening >= 1:
        return math.nan
    if momentum == 0:
        return 2.0 / lr
    if nesterov:
        return (2.0 + 2.0 * momentum) / (lr * (1.0 + 2.0 * momentum))
    return (2.0 + 2.0 * momentum) / (lr * (1.0 - dampening))


def rho_b(rho, n: int, b, replacement: bool = False):
    """ρ_b by eq. (12): 1/((γ_{n,b}/b)/ρ + 1 − γ_{n,b}/b), with ρ = ρ_1 = tr(S_n)/tr(S_1) ∈ (0, 1].

    Limits: ρ_1 = ρ; ρ_n = 1 without replacement (γ_{n,n} = 0); ρ_b → 1 as b → ∞ with replacement.
    """
    rho = np.asarray(rho, dtype=float)
    if np.any(rho <= 0):
        raise LssrError(f"rho_b: ρ must be > 0, got {rho!r}")
    w = np.asarray(batch_weight(n, b, replacement), dtype=float)
    out = 1.0 / (w / rho + 1.0 - w)
    return float(out) if out.ndim == 0 else out


def lsr(b, c: float = 1.0) -> np.ndarray:
    """LSR: η = c·b."""
    return c * np.asarray(b, dtype=float)


def srsr(b, c: float = 1.0) -> np.ndarray:
    """SRSR: η = c·√b."""
    return c * np.sqrt(np.asarray(b, dtype=float))


def lssr(b, c: float = 1.0, rho: float = 0.01, n: int = 1024, replacement: bool = False) -> np.ndarray:
    """LSSR: η = c·ρ_b(ρ) (eq. 12): linear in b while (γ/b)/ρ dominates, flat once ρ_b ≈ 1."""
    return c * np.asarray(rho_b(rho, n, np.asarray(b, dtype=float), replacement), dtype=float)


@dataclass
class Fit:
    """A fitted scaling rule: ``params`` (c, and ρ for LSSR), RMSE of log2 η, and ``predict(b)``."""

    rule: str
    params: dict
    rmse_log2: float
    n_points: int
    predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)


def _prepare(b, eta) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(b, dtype=float).reshape(-1)
    eta = np.asarray(eta, dtype=float).reshape(-1)
    if b.shape != eta.shape or b.size == 0:
        raise LssrError(f"scaling fit: need as many best learning rates as batch sizes, got {b.size} and {eta.size}")
    keep = np.isfinite(b) & np.isfinite(eta) & (eta > 0) & (b >= 1)
    if not keep.any():
        raise LssrError("scaling fit: no finite positive (b, η) pairs to fit")
    return b[keep], eta[keep]


def _fit_constant(shape_log2: np.ndarray, eta_log2: np.ndarray) -> tuple[float, float]:
    """log2 c minimising Σ (log2 η − log2 c − shape)²: the mean residual; returns (log2 c, rmse)."""
    log_c = float(np.mean(eta_log2 - shape_log2))
    rmse = float(np.sqrt(np.mean((eta_log2 - shape_log2 - log_c) ** 2)))
    return log_c, rmse


def fit_lsr(b, eta) -> Fit:
    """Fit η = c·b in log2 space."""
    b, eta = _prepare(b, eta)
    log_c, rmse = _fit_constant(np.log2(b), np.log2(eta))
    c = 2.0**log_c
    return Fit("LSR", {"c": c}, rmse, b.size, lambda bb: lsr(bb, c))


def fit_srsr(b, eta) -> Fit:
    """Fit η = c·√b in log2 space."""
    b, eta = _prepare(b, eta)
    log_c, rmse = _fit_constant(0.5 * np.log2(b), np.log2(eta))
    c = 2.0**log_c
    return Fit("SRSR", {"c": c}, rmse, b.size, lambda bb: srsr(bb, c))


def fit_lssr(b, eta, n: int, replacement: bool = False, rho_bounds: tuple[float, float] | None = None) -> Fit:
    """Fit η = c·ρ_b(ρ) in log2 space: c in closed form for each ρ, ρ by a bounded 1-D search over
    log ρ (a fine grid, then golden-section refinement). ``rho_bounds`` defaults to (1e-3/n, 1)."""
    from scipy.optimize import minimize_scalar

    b, eta = _prepare(b, eta)
    y = np.log2(eta)
    lo, hi = rho_bounds or (1e-3 / n, 1.0)

    def loss(log_rho: float) -> float:
        shape = np.log2(rho_b(math.exp(log_rho), n, b, replacement))
        return _fit_constant(shape, y)[1]

    grid = np.linspace(math.log(lo), math.log(hi), 241)
    shapes = np.log2(rho_b(np.exp(grid)[:, None], n, b[None, :], replacement))  # every grid ρ at once
    resid = y[None, :] - shapes
    vals = np.sqrt(np.mean((resid - resid.mean(axis=1, keepdims=True)) ** 2, axis=1))
    k = int(np.argmin(vals))
    a, c_ = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    if c_ > a:
        res = minimize_scalar(loss, bounds=(a, c_), method="bounded", options={"xatol": 1e-10})
        best = float(res.x) if res.fun <= vals[k] else float(grid[k])
    else:
        best = float(grid[k])
    rho = math.exp(best)
    log_c, rmse = _fit_constant(np.log2(rho_b(rho, n, b, replacement)), y)
    c = 2.0**log_c
    return Fit("LSSR", {"c": c, "rho": rho}, rmse, b.size, lambda bb: lssr(bb, c, rho, n, replacement))


def fit_rules(b, eta, n: int, replacement: bool = False):
    """All three fits as a DataFrame: rule, c, rho (LSSR only), rmse_log2, n_points."""
    import pandas as pd

    fits = [fit_lsr(b, eta), fit_srsr(b, eta), fit_lssr(b, eta, n, replacement)]
    return pd.DataFrame(
        [
            {
                "rule": f.rule,
                "c": f.params["c"],
                "rho": f.params.get("rho", math.nan),
                "rmse_log2": f.rmse_log2,
                "n_points": f.n_points,
            }
            for f in fits
        ]
    )
