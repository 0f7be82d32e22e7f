"""What every claim row shares: the columns, the verdict rule and the minimum amounts of data.

A row is ``value <comparison> threshold`` -> ``pass`` / ``fail``; ``not-enough-data`` when fewer than
the claim's minimum points were available or the value is undefined; ``inconclusive`` when the claim
decides it. A claim decided with an interval (``ci_lo``, ``ci_hi``: C1, C5, C6) passes only when the whole
interval satisfies the comparison, fails when none of it does and is ``inconclusive`` otherwise
(:func:`interval_verdict`). ``kind`` is ``claim`` (a
statement of the paper) or ``check`` (a self-check of the pipeline, e.g. eq. (12) against Monte Carlo);
``source`` names the section, figure or equation the statement comes from.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CLAIM_COLUMNS = [
    "claim",
    "kind",
    "source",
    "subject",
    "description",
    "statistic",
    "estimate",
    "target",
    "value",
    "comparison",
    "threshold",
    "verdict",
    "n_points",
    "window",
    "notes",
    "ci_lo",
    "ci_hi",
]
VERDICTS = ("pass", "fail", "inconclusive", "not-enough-data")

#: A median or a fitted line over fewer probed steps follows one oscillation of the edge, not a trend.
MIN_POINTS = 5
#: A rank correlation over batch sizes needs at least three of them to say "rises with b".
MIN_B_SPEARMAN = 3
#: Leave-one-out over batch sizes of a 2-parameter fit (LSSR) needs at least four of them.
MIN_B_FIT = 4

#: Intervals: their level, the resamples of a bootstrap and the NumPy generator's seed (fixed: same input, same row).
CI_LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 20230501
#: A line fitted through x values that carry noise: the share of var(x) that is not noise (the reliability
#: λ = 1 − mean(se_x²)/var(x)) must be at least this, else noise and slope cannot be told apart (inconclusive).
MIN_RELIABILITY = 0.5

_CMP = {"<=": np.less_equal, "<": np.less, ">": np.greater, ">=": np.greater_equal}

#: claim -> (source in the paper, what the paper states); the ``description`` and ``source`` columns.
STATEMENTS: dict[str, tuple[str, str]] = {}


def statement(claim: str, source: str, description: str) -> str:
    """Register what claim ``claim`` states and where the paper states it; returns the claim id."""
    STATEMENTS[claim] = (source, description)
    return claim


def row(
    claim: str,
    subject: str,
    statistic: str,
    value,
    comparison: str,
    threshold,
    n_points: int,
    min_points: int,
    *,
    kind: str = "claim",
    estimate=np.nan,
    target=np.nan,
    window: str = "",
    notes: str = "",
    verdict: str | None = None,
    ci: tuple[float, float] = (np.nan, np.nan),
) -> dict:
    """One claim row; the verdict is ``value <comparison> threshold`` unless given; ``ci`` the value's interval.
    Below ``min_points`` points it is ``not-enough-data`` whatever was given."""
    value = float(value) if value is not None else np.nan
    threshold = float(threshold) if threshold is not None else np.nan
    if n_points < min_points:
        verdict = "not-enough-data"
        notes = (notes + "; " if notes else "") + f"{n_points} points (need {min_points})"
    elif verdict is None and (math.isnan(value) or math.isnan(threshold)):
        verdict = "not-enough-data"
        notes = (notes + "; " if notes else "") + "the statistic is undefined on these points"
    elif verdict is None:
        verdict = "pass" if bool(_CMP[comparison](value, threshold)) else "fail"
    source, description = STATEMENTS[claim]
    return {
        "claim": claim,
        "kind": kind,
        "source": source,
        "subject": subject,
        "description": description,
        "statistic": statistic,
        "estimate": estimate,
        "target": target,
        "value": value,
        "comparison": comparison,
        "threshold": threshold,
        "verdict": verdict,
        "n_points": int(n_points),
        "window": window,
        "notes": notes,
        "ci_lo": float(ci[0]),
        "ci_hi": float(ci[1]),
    }


def interval_verdict(lo: float, hi: float, comparison: str, threshold: float) -> str:
    """``pass`` when every value of [lo, hi] satisfies ``value <comparison> threshold``, ``fail`` when none
    does, else ``inconclusive`` (``not-enough-data`` for an undefined interval)."""
    if np.isnan(lo) or np.isnan(hi):
        return "not-enough-data"
    ok = _CMP[comparison]
    if ok(lo, threshold) and ok(hi, threshold):
        return "pass"
    if not ok(lo, threshold) and not ok(hi, threshold):
        return "fail"
    return "inconclusive"


def line_fit(x, y, x_se=None, seed: int = BOOT_SEED) -> dict:
    """The line y = a + β x through the finite pairs, corrected for noise in x (errors in variables).

    β = s_xy / (s_xx − mean(se_x²)) is the method-of-moments estimator (Fuller, *Measurement Error Models*,
    §1.1): least squares divides by s_xx, which noise in x inflates, so its slope is flattened by the
    reliability λ = 1 − mean(se_x²)/s_xx; this one is not. ``x_se`` are the standard errors of x (0 or NaN:
    exact). Returns slope, intercept, x_intercept (−a/β), reliability, n, and the :data:`CI_LEVEL` percentile
    intervals of slope and x-intercept from :data:`N_BOOT` pairs-bootstrap resamples (generator seed ``seed``,
    :data:`BOOT_SEED` by default), with the resampled slopes (``slope_boot``, ±inf where a resample has no slope);
    all NaN below 2 distinct x. The intervals are (−inf, inf) when λ < :data:`MIN_RELIABILITY`.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    se = np.zeros_like(x) if x_se is None else np.nan_to_num(np.asarray(x_se, dtype=float), nan=0.0)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, se = x[ok], y[ok], se[ok]
    nan = float("nan")
    out = {"slope": nan, "intercept": nan, "x_intercept": nan, "reliability": nan, "n": int(ok.sum()),
           "slope_ci": (nan, nan), "x_intercept_ci": (nan, nan), "slope_boot": np.full(N_BOOT, nan)}  # fmt: skip
    if len(np.unique(x)) < 2:
        return out

    def fit(xs, ys, ses):
        xm, ym = xs.mean(axis=-1, keepdims=True), ys.mean(axis=-1, keepdims=True)
        k = xs.shape[-1] - 1
        sxx = ((xs - xm) ** 2).sum(axis=-1) / k
        sxy = ((xs - xm) * (ys - ym)).sum(axis=-1) / k
        den = sxx - (ses**2).mean(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = sxy / np.where(den > 0, den, np.nan)
            icpt = ym[..., 0] - beta * xm[..., 0]
            return beta, icpt, -icpt / beta, 1.0 - (ses**2).mean(axis=-1) / sxx

    beta, icpt, xint, lam = (float(v) for v in fit(x, y, se))
    out.update(slope=beta, intercept=icpt, x_intercept=xint, reliability=lam)
    if not lam >= MIN_RELIABILITY:
        out.update(slope_ci=(-np.inf, np.inf), x_intercept_ci=(-np.inf, np.inf))
        return out
    idx = np.random.default_rng(seed).integers(0, len(x), (N_BOOT, len(x)))
    b_beta, _, b_xint, _ = fit(x[idx], y[idx], se[idx])
    q = [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2]
    # a resample whose x has no spread beyond its noise has no slope: it widens the interval to ±inf
    b_beta, b_xint = np.where(np.isnan(b_beta), np.inf, b_beta), np.where(np.isnan(b_xint), np.inf, b_xint)
    out["slope_boot"] = b_beta
    out["slope_ci"] = tuple(float(v) for v in np.quantile(b_beta, q, method="inverted_cdf"))
    out["x_intercept_ci"] = tuple(float(v) for v in np.quantile(b_xint, q, method="inverted_cdf"))
    return out


def missing(claim: str, why: str, kind: str = "claim") -> dict:
    """The one not-enough-data row of a claim whose table is absent or has no usable rows."""
    r = row(claim, "(all)", "-", np.nan, "<=", np.nan, 0, 1, kind=kind)
    r["notes"] = why
    return r


def subject(r: pd.Series | dict, with_b: bool = False) -> str:
    """``SGD b=32 CE η=0.1 <run>``: which run a row is about."""
    loss = str(r["loss"]).upper()
    b = f" b={int(r['b'])}" if with_b else ""
    return f"{r['optimizer']}{b} {loss} η={float(r['lr']):g} {r['run']}"


def finite(x) -> np.ndarray:
    """The finite entries of ``x`` as floats."""
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def median(x) -> float:
    """Median of the finite entries (NaN when none)."""
    a = finite(x)
    return float(np.median(a)) if len(a) else np.nan
