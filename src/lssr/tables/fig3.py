"""Figure 3 table: asymmetric valleys along −∇L (GD).

Panel ``ratio``: ‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L against α, per probed step, with the step's regime
(‖H‖_{S_n} below or above 2/η). Panel ``valley``: the valley curves normalised so that every curve has
the same zeros and minimum: with ΔL(s) = L(θ − sη∇L) − L(θ), ΔL(0) = 0 and s_z the first zero crossing
after the minimum, x = 2 s / s_z and y = ΔL / |min ΔL|. The minimum (s*, min ΔL) and s_z come from one
polynomial fitted to every probed s up to the first grid point past the zero (:func:`locate_valley`), so that
every grid point inside the valley counts and a quadratic, cubic or quartic ΔL is located exactly whatever the s
grid (a grid argmin, or a parabola through the three lowest points, is biased by up to half a grid step in a
narrow valley). ``x_min`` = 2 s*/s_z is the curve's minimum and ``x_min_se`` its uncertainty (delta method, from the
fit's residuals; inf when the valley holds fewer than :data:`VALLEY_MIN_POINTS` grid points);
``x_min_quad`` the same for the step's quadratic model ΔL_quad (``dL_quad``) on the same grid (1 up to rounding).
A locally quadratic loss then gives exactly the baseline y = x² − 2x (zeros 0 and 2, minimum −1 at x = 1; panel
``quadratic``); a minimum right of x = 1 means the far side of the valley is sharper, left of it that it is
flatter. A probed step without a valley (no descent, or no second zero inside the probed s grid) is one row of
panel ``valley_excluded`` whose ``excluded`` says why, so that the claims count it.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd

from ..columns import valley_quad, valley_values
from .runs import Run, RunLike, diag_runs, ias_n

COLUMNS = [
    "panel",
    "run",
    "dataset",
    "loss",
    "lr",
    "step",
    "curve",
    "ias_n",
    "two_over_eta",
    "regime",
    "alpha",
    "s",
    "dL",
    "dL_quad",
    "x",
    "y",
    "x_min",
    "x_min_se",
    "x_min_quad",
    "x_min_quad_se",
    "excluded",
]


class Valley(NamedTuple):
    """A normalised loss profile: x = 2 s / s_z and y = ΔL / |min ΔL| at the probed s, its minimum x_min and the
    uncertainty ``x_min_se`` of x_min (inf when the valley holds too few grid points to tell)."""

    x: np.ndarray
    y: np.ndarray
    x_min: float
    x_min_se: float = 0.0


#: The valley's polynomial: ΔL(s) = Σ_{k=1..d} c_k s^k (ΔL(0) = 0 exactly), least squares over every probed s up to
#: the first grid point past the valley's zero, of degree d = min(VALLEY_MAX_DEGREE, points − 1) (one spare point).
VALLEY_MAX_DEGREE = 4
#: A parabola through ΔL(0) = 0 is symmetric about its vertex (x_min = 1 whatever the data), so a shift needs a
#: cubic at least and one spare point for its uncertainty: the valley and its neighbours (probed s ≠ 0 up to the
#: first point past the zero) must hold this many grid points, else the profile's shift cannot be resolved.
VALLEY_MIN_POINTS = 4


def _polish(p, dp, r: np.ndarray) -> np.ndarray:
    """Roots r of p refined by two Newton steps (companion-matrix roots are good to about 1e-8 only)."""
    for _ in range(2):
        d = dp(r)
        r = np.where(d != 0, r - p(r) / np.where(d != 0, d, 1.0), r)
    return r


def _poly_valley(c: np.ndarray, s_hi: float) -> tuple[float, float, float] | None:
    """(s*, ΔL(s*), s_z) of the polynomial Σ_k c_k s^k (k = 1..len(c)): s* its lowest point in (0, s_hi], s_z its
    first zero after s* (up to s_hi plus a tenth of it); None when it has neither."""
    p = np.polynomial.Polynomial(np.concatenate([[0.0], c]))
    dp, d2p = p.deriv(), p.deriv(2)
    crit = dp.roots()
    crit = _polish(dp, d2p, crit[np.abs(crit.imag) < 1e-9].real)
    cand = np.concatenate([crit[(crit > 0) & (crit < s_hi)], [s_hi]])
    s_star = float(cand[np.argmin(p(cand))])
    f_star = float(p(s_star))
    if not f_star < 0:
        return None
    roots = p.roots()
    roots = _polish(p, dp, roots[np.abs(roots.imag) < 1e-9].real)
    after = np.sort(roots[(roots > s_star) & (roots <= s_hi * 1.1)])
    return (s_star, f_star, float(after[0])) if len(after) else None


def _x_min_se(c: np.ndarray, cov: np.ndarray, s_hi: float, x_min: float) -> float:
    """The delta-method standard error of x_min = 2 s*/s_z of the fitted polynomial (coefficients c, covariance cov):
    the gradient of x_min in c by central differences; inf where a perturbed polynomial has no valley."""
    grad = np.zeros(len(c))
    for k in range(len(c)):
        h = 1e-6 * max(abs(c[k]), 1e-3)
        xs = []
        for sign in (1.0, -1.0):
            e = c.copy()
            e[k] += sign * h
            v = _poly_valley(e, s_hi)
            if v is None:
                return np.inf
            xs.append(2.0 * v[0] / v[2])
        grad[k] = (xs[0] - xs[1]) / (2 * h)
    var = float(grad @ cov @ grad)
    return float(np.sqrt(max(var, 0.0))) if np.isfinite(x_min) else np.inf


def locate_valley(s: np.ndarray, f: np.ndarray) -> tuple[Valley | None, str]:
    """The normalised profile of ΔL(s) and "", or None and why there is none.

    The valley runs from s = 0 to the first probed s past its zero (ΔL ≥ 0 after the grid minimum). Its minimum s*
    and zero s_z come from the least-squares polynomial ΔL(s) = Σ_{k=1..d} c_k s^k (ΔL(0) = 0 exactly) fitted to
    every probed s ≠ 0 up to there (those below 0 too), of degree d = min(:data:`VALLEY_MAX_DEGREE`, points − 1),
    so every grid point inside the valley counts and a quadratic, cubic or quartic ΔL is located exactly on any
    grid. ``x_min_se`` is the delta-method standard error of x_min from the fit's residuals (one spare point at
    least); inf below :data:`VALLEY_MIN_POINTS` points, where the fit is a parabola, symmetric by construction."""
    ok = np.isfinite(s) & np.isfinite(f)
    s_out, f_out = s[ok], f[ok]
    if (s_out > 0).sum() < 2:
        return None, "fewer than 2 probed s > 0"
    order = np.argsort(s_out)
    s, f = s_out[order], f_out[order]
    sp, fp = np.concatenate([[0.0], s[s > 0]]), np.concatenate([[0.0], f[s > 0]])
    i_min = 1 + int(np.argmin(fp[1:]))
    if not fp[i_min] < 0:
        return None, "no descent along −∇L on the s grid (ΔL ≥ 0 at every probed s > 0)"
    after = np.flatnonzero(fp[i_min:] >= 0)
    if not len(after):
        return None, f"valley not closed within s ≤ {sp[-1]:g} (ΔL < 0 at the largest probed s)"
    s_hi = float(sp[i_min + int(after[0])])
    use = (s != 0) & (s <= s_hi)
    su, fu = s[use], f[use]
    deg = min(VALLEY_MAX_DEGREE, len(su) - 1)
    X = su[:, None] ** np.arange(1, deg + 1)
    c, *_ = np.linalg.lstsq(X, fu, rcond=None)
    fit = _poly_valley(c, s_hi)
    if fit is None:
        return None, f"the valley's polynomial (degree {deg}) has no minimum and zero within s ≤ {s_hi:g}"
    s_star, f_star, s_z = fit
    x_min = 2.0 * s_star / s_z
    se = np.inf
    if len(su) >= VALLEY_MIN_POINTS:
        resid = fu - X @ c
        sigma2 = float(resid @ resid) / (len(su) - deg)
        se = _x_min_se(c, sigma2 * np.linalg.pinv(X.T @ X), s_hi, x_min)
    return Valley(2.0 * s_out / s_z, f_out / abs(f_star), x_min, float(se)), ""


def normalise_valley(s: np.ndarray, f: np.ndarray) -> Valley | None:
    """The normalised profile of ΔL(s) (see :func:`locate_valley`); None without a descent or a second zero."""
    return locate_valley(np.asarray(s, dtype=float), np.asarray(f, dtype=float))[0]


def _ratio_rows(d: pd.DataFrame, i: int, common: dict, alphas: list[tuple[float, str]]) -> pd.DataFrame | None:
    """Panel ``ratio`` at probed step i: ‖H_α‖_{S_n}/‖H‖_{S_n} against α."""
    a = np.array([a for a, _ in alphas])
    v = np.array([d.at[i, c] for _, c in alphas], dtype=float)
    m = np.isfinite(v)
    if not m.any():
        return None
    return pd.DataFrame({**common, "panel": "ratio", "alpha": a[m], "x": a[m], "y": v[m]})


def _valley_rows(d: pd.DataFrame, i: int, common: dict, s_cols: list[tuple[float, str]]) -> pd.DataFrame:
    """Panel ``valley`` at probed step i: ΔL(s), its quadratic model and the normalised curve; a profile without a
    valley is one row of panel ``valley_excluded`` saying why (``excluded``), so that it is counted, not lost."""
    s = np.array([s for s, _ in s_cols])
    f = np.array([d.at[i, c] for _, c in s_cols], dtype=float)
    qcols = [valley_quad(v) for v, _ in s_cols]
    fq = np.array([d.at[i, c] if c in d.columns else np.nan for c in qcols], dtype=float)
    norm, why = locate_valley(s, f)
    if norm is None:
        return pd.DataFrame({**common, "panel": "valley_excluded", "excluded": why}, index=[0])
    quad = normalise_valley(s, fq)
    ok = np.isfinite(s) & np.isfinite(f)
    return pd.DataFrame(
        {**common, "panel": "valley", "s": s[ok], "dL": f[ok], "dL_quad": fq[ok], "x": norm.x, "y": norm.y,
         "x_min": norm.x_min, "x_min_se": norm.x_min_se, "x_min_quad": quad.x_min if quad is not None else np.nan,
         "x_min_quad_se": quad.x_min_se if quad is not None else np.nan, "excluded": ""}
    )  # fmt: skip


def _run_rows(run: Run) -> list[pd.DataFrame]:
    d = run.diag
    two = 2.0 / run.lr
    ias = ias_n(run).to_numpy(float)
    regime = np.where(ias < two, "below", "above")
    base = {"run": run.name, "dataset": run.dataset, "loss": run.loss, "lr": run.lr, "two_over_eta": two}
    alphas = sorted(valley_values(d.columns, "ratio"))
    s_cols = sorted(valley_values(d.columns, "dL"))
    rows = []
    for i, step in enumerate(d["step"].to_numpy(int)):
        if not np.isfinite(ias[i]):
            continue
        common = {**base, "step": step, "curve": f"{run.name}#{step}", "ias_n": ias[i], "regime": regime[i]}
        if alphas:
            rows.append(_ratio_rows(d, i, common, alphas))
        if s_cols:
            rows.append(_valley_rows(d, i, common, s_cols))
    return [r for r in rows if r is not None]


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure 3: ‖H_α‖_{S_n}/‖H‖_{S_n} vs α per step (panel ``ratio``), normalised valley curves
    (panel ``valley``) and the normalised quadratic baseline (panel ``quadratic``)."""
    rows = [frame for run in diag_runs(runs) for frame in _run_rows(run)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(rows, ignore_index=True)
    valley = out[out["panel"] == "valley"]
    if len(valley):
        xs = np.linspace(max(valley["x"].min(), -1.0), min(valley["x"].max(), 4.0), 121)
        out = pd.concat(
            [out, pd.DataFrame({"panel": "quadratic", "curve": "quadratic", "x": xs, "y": xs**2 - 2 * xs})],
            ignore_index=True,
        )
    return out.reindex(columns=COLUMNS)
