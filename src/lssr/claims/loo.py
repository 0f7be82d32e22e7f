"""C5's leave-one-out fits (log2 η units): each b's best η predicted by a rule fitted to the other uncensored
b's, for LSSR with a given shape (the measured ρ: only the constant c free) or a fitted ρ, LSR, SRSR, a constant η
and a free power law c·b^α; vectorised over bootstrap draws. A censored value (the optimum is at least / at most it)
counts an error only on the side its bound rules out.
"""

from __future__ import annotations

import math

import numpy as np

from .. import scaling

#: The fitted ρ's search range and grid: :func:`lssr.scaling.fit_lssr`'s (10^-3/n to 1), 241 points in log ρ.
RHO_GRID = 241


def rho_bounds(n: int) -> tuple[float, float]:
    """The search range of the fitted ρ, :func:`lssr.scaling.fit_lssr`'s default."""
    return 1e-3 / n, 1.0


# --- leave-one-out over batch sizes, vectorised over resamples ------------------------------------------------
def _one_sided(e: np.ndarray, cens: np.ndarray) -> np.ndarray:
    """A censored ``high`` value (the optimum is at least it) counts only a prediction below it, ``low`` above."""
    return np.where(cens > 0, np.minimum(e, 0.0), np.where(cens < 0, np.maximum(e, 0.0), e))


def _rmse(e: np.ndarray, has: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(has, e * e, 0.0).sum(axis=-1) / has.sum(axis=-1))


def loo_shape(y, has, free, cens, shape) -> np.ndarray:
    """LOO RMSE of log2 η = log2 c + shape(b) (c fitted: the mean residual of the other uncensored b's) per
    resample; y, has, free, cens of shape (…, B), shape (…, B) or (B,). NaN where some b has no other point."""
    shape = np.broadcast_to(shape, y.shape)
    r = np.where(free, y - shape, 0.0)
    cnt = free.sum(axis=-1, keepdims=True) - free
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (r.sum(axis=-1, keepdims=True) - r) / cnt
    e = _one_sided(shape + c - y, cens)
    out = _rmse(e, has)
    return np.where(np.all(~has | (cnt >= 1), axis=-1), out, np.nan)


def loo_power(y, has, free, cens, x) -> np.ndarray:
    """LOO RMSE of the free power law log2 η = a + α log2 b (least squares on the other uncensored b's)."""
    x = np.broadcast_to(x, y.shape)
    f = free.astype(float)
    yy, xx = np.where(free, y, 0.0), np.where(free, x, 0.0)
    sums = [np.sum(v, axis=-1, keepdims=True) - v for v in (f, xx, yy, xx * xx, xx * yy)]
    n, sx, sy, sxx, sxy = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        den = n * sxx - sx * sx
        alpha = (n * sxy - sx * sy) / den
        a = (sy - alpha * sx) / n
        e = _one_sided(a + alpha * x - y, cens)
    ok = np.all(~has | ((n >= 2) & (den > 1e-12)), axis=-1)
    return np.where(ok, _rmse(e, has), np.nan)


def loo_fitted_lssr(y, has, free, cens, b, n: int, repl: bool) -> np.ndarray:
    """LOO RMSE of log2 η = log2 c + log2 ρ_b(ρ) with c and ρ fitted to the other uncensored b's (ρ on a grid of
    :data:`RHO_GRID` points in log ρ over :func:`rho_bounds`)."""
    lo, hi = rho_bounds(n)
    rho = np.exp(np.linspace(math.log(lo), math.log(hi), RHO_GRID))
    S = np.log2(scaling.rho_b(rho[:, None], n, np.asarray(b, float)[None, :], repl))  # (G, B)
    D = np.nan_to_num(y[..., None, :] - S)  # (…, G, B); entries of b without a best η are masked out below
    D2 = D * D
    e = np.full(y.shape, np.nan)
    ok = np.ones(y.shape[:-1], bool)
    for i in range(y.shape[-1]):
        m = free.copy()
        m[..., i] = False
        cnt = m.sum(axis=-1)
        ok &= ~has[..., i] | (cnt >= 2)
        mf = m[..., :, None].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = (D @ mf)[..., 0] / cnt[..., None]  # (…, G): the fitted log2 c at each grid ρ
            rss = (D2 @ mf)[..., 0] - cnt[..., None] * c * c
        g = np.argmin(np.where(np.isfinite(rss), rss, np.inf), axis=-1)
        pred = S[g, i] + np.take_along_axis(c, g[..., None], axis=-1)[..., 0]
        e[..., i] = pred - y[..., i]
    return np.where(ok, _rmse(_one_sided(e, cens), has), np.nan)


def loo_all(y, has, free, cens, b, n: int, repl: bool, predicted_shape=None) -> dict[str, np.ndarray]:
    """LOO RMSE of every rule: the baselines, ``LSSR`` (fitted ρ) and, given the shape log2 ρ_b of the measured ρ,
    ``LSSR predicted``."""
    xb = np.log2(np.asarray(b, float))
    out = {
        "LSR": loo_shape(y, has, free, cens, xb),
        "SRSR": loo_shape(y, has, free, cens, 0.5 * xb),
        "constant": loo_shape(y, has, free, cens, np.zeros_like(xb)),
        "power law": loo_power(y, has, free, cens, xb),
        "LSSR": loo_fitted_lssr(y, has, free, cens, b, n, repl),
    }
    if predicted_shape is not None:
        out["LSSR predicted"] = loo_shape(y, has, free, cens, predicted_shape)
    return out


# --- the regimes, from the data ----------------------------------------------------------------------------------
